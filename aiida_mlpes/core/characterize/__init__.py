"""aiida_mlpes.core.characterize"""
