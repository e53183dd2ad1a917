"""aiida_mlpes.core.models"""
