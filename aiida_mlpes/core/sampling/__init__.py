"""Samplers of molecular conformations (Asparagus paper, section 3.1), driven by any ASE calculator.

Each sampler takes one or several ASE Atoms, a driver (an ASE calculator, e.g. ``make_driver("tblite")``)
and a seed, and returns a :class:`SampleResult` with the sampled conformations (RaggedArrays, with the
driver's energies and forces) and the driver energies along the trajectory. A failing driver raises
:class:`SamplingError`, whose ``result`` keeps the samples collected until then.
"""

from aiida_mlpes.core.sampling.collective_variables import CollectiveVariable, parse_cv, parse_cvs
from aiida_mlpes.core.sampling.drivers import MonitoredCalculator, make_driver
from aiida_mlpes.core.sampling.mc import metropolis_mc
from aiida_mlpes.core.sampling.md import high_friction_md, langevin_md
from aiida_mlpes.core.sampling.metadynamics import MetadynamicsBias, MetadynamicsCalculator, metadynamics
from aiida_mlpes.core.sampling.normal_modes import normal_mode_sampling
from aiida_mlpes.core.sampling.results import DriverError, SampleResult, SamplingError
from aiida_mlpes.core.sampling.scan import normal_mode_scan

__all__ = [
    "CollectiveVariable",
    "DriverError",
    "MetadynamicsBias",
    "MetadynamicsCalculator",
    "MonitoredCalculator",
    "SampleResult",
    "SamplingError",
    "high_friction_md",
    "langevin_md",
    "make_driver",
    "metadynamics",
    "metropolis_mc",
    "normal_mode_sampling",
    "normal_mode_scan",
    "parse_cv",
    "parse_cvs",
]
