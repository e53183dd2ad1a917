"""aiida_mlpes.parsers"""
