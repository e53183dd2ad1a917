"""aiida_mlpes.calculations"""
