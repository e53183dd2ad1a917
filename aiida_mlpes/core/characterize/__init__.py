"""Characterization of a potential energy surface: harmonic frequencies, minimum energy and minimum
dynamic paths, diffusion Monte Carlo with hole detection, and geometry optimisation to reach the
stationary points first. Every function takes a Potential (``aiida_mlpes.core.potential``)."""

from aiida_mlpes.core.characterize.dmc import OUTCOMES, DMCResult, blocking_error, run_dmc
from aiida_mlpes.core.characterize.explore import ExploreResult, explore
from aiida_mlpes.core.characterize.frequencies import NormalModes, harmonic_frequencies, normal_modes
from aiida_mlpes.core.characterize.holes import select_diverse
from aiida_mlpes.core.characterize.mdp import minimum_dynamic_path
from aiida_mlpes.core.characterize.mep import PathResult, minimum_energy_path
from aiida_mlpes.core.characterize.optimize import (
    MinimumResult,
    OptimizationResult,
    PotentialCalculator,
    find_minimum,
    optimize_minimum,
    optimize_ts,
)

__all__ = [
    "OUTCOMES",
    "DMCResult",
    "ExploreResult",
    "MinimumResult",
    "NormalModes",
    "OptimizationResult",
    "PathResult",
    "PotentialCalculator",
    "blocking_error",
    "explore",
    "find_minimum",
    "harmonic_frequencies",
    "minimum_dynamic_path",
    "minimum_energy_path",
    "normal_modes",
    "optimize_minimum",
    "optimize_ts",
    "run_dmc",
    "select_diverse",
]
