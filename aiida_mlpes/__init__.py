"""aiida-mlpes: machine-learned potential energy surfaces with AiiDA provenance."""

import os as _os

# OpenMP threads that wait for a busy core sleep instead of spinning. With the spinning default a second
# torch thread on a shared machine made DMC ten times slower; the variable is read when torch loads its
# OpenMP library, so it is set here (before any torch import through this package). See core/threads.py.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
