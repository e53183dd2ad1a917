"""aiida_mlpes.workflows"""
