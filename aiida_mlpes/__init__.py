"""aiida-mlpes: machine-learned potential energy surfaces with AiiDA provenance."""

__version__ = "0.1.0"
