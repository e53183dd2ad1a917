"""aiida_mlpes.data"""
