"""aiida_mlpes.core.sampling"""
