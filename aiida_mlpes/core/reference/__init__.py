"""aiida_mlpes.core.reference"""
