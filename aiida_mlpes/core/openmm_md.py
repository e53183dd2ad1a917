"""Molecular dynamics in OpenMM driven by a TorchScript-exported model (:mod:`.models.export`).

OpenMM integrates the equations of motion; the exported model gives energy and forces. The model enters the
OpenMM ``System`` as :class:`ModelForce`: a ``CustomExternalForce`` whose energy is the first-order expansion

    E(r) = sum_i [ e_i - F_i . (r_i - r0_i) ]

with per-particle parameters set from the model at the current positions r0 (F_i the model forces, e_i = E/N
the model energy shared over the atoms). At r = r0 it gives the model's energy and forces exactly, so an
integrator that evaluates forces once per step at the step's starting positions (``VerletIntegrator``)
integrates the model exactly when :meth:`ModelForce.update` runs before every step (:func:`run_nve` does).
This costs one Python round trip per step; it is the path that works with any torch, whereas
``openmmtorch.TorchForce`` (which takes the same exported file, ``units="openmm"``) needs an openmmtorch
binary built against the installed torch (see docs/openmm.md for what was measured).

Units: OpenMM's nm, kJ/mol, ps and dalton inside OpenMM; the functions here take and return the package's
units (Angstrom, eV, fs, amu) unless a name says otherwise. OpenMM is an optional dependency
(``pip install aiida-mlpes[openmm]``); it is imported when a function here is called.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from ase.data import atomic_masses

from .models.export import UNITS, load_exported
from .threads import default_threads, threads_for, torch_threads
from .units import KJ_PER_MOL

#: the CustomExternalForce energy: model energy share plus the first-order change from the expansion point
EXPRESSION = "e - (fx*(x - x0) + fy*(y - y0) + fz*(z - z0))"
PARAMETERS = ("e", "fx", "fy", "fz", "x0", "y0", "z0")


def import_openmm() -> Any:
    """The ``openmm`` module, or an ImportError that says how to install it."""
    try:
        import openmm
    except ImportError as exc:
        raise ImportError(
            "OpenMM is not installed: pip install 'aiida-mlpes[openmm]' (or pip install openmm)"
        ) from exc
    return openmm


class ModelForce:
    """An exported model as an OpenMM force (module docstring); ``force`` goes into the ``System``.

    Args:
        module: exported module or its path (either ``units``; converted to OpenMM's nm and kJ/mol here).
    """

    def __init__(self, module: Any) -> None:
        openmm = import_openmm()
        self.module = load_exported(module)
        self.n_atoms = int(self.module.atomic_numbers.shape[0])
        length, energy = UNITS[str(self.module.units)]
        #: model length unit per nm, kJ/mol per model energy unit
        self._length = 10.0 / length
        self._energy = 1.0 / (KJ_PER_MOL * energy)
        self.force = openmm.CustomExternalForce(EXPRESSION)
        for name in PARAMETERS:
            self.force.addPerParticleParameter(name)
        for i in range(self.n_atoms):
            self.force.addParticle(i, [0.0] * len(PARAMETERS))

    def evaluate(self, positions_nm: np.ndarray) -> tuple[float, np.ndarray]:
        """Model energy (kJ/mol) and forces (N, 3) kJ/mol/nm at positions (N, 3) in nm."""
        positions = torch.as_tensor(np.asarray(positions_nm, dtype=np.float64) * self._length)
        energy, forces = self.module(positions)
        return float(energy) * self._energy, forces.numpy() * (self._energy * self._length)

    def update(self, context: Any) -> float:
        """Expand the force around the context's current positions; returns the model energy in kJ/mol."""
        state = context.getState(getPositions=True)
        positions = np.asarray(state.getPositions(asNumpy=True)._value, dtype=np.float64)
        energy, forces = self.evaluate(positions)
        share = energy / self.n_atoms
        for i in range(self.n_atoms):
            self.force.setParticleParameters(i, i, [share, *forces[i], *positions[i]])
        self.force.updateParametersInContext(context)
        return energy


def create_system(atomic_numbers: np.ndarray, masses: np.ndarray | None = None) -> Any:
    """An OpenMM ``System`` of free particles with the given masses (amu; default: ASE's atomic masses)."""
    openmm = import_openmm()
    numbers = np.asarray(atomic_numbers, dtype=np.int64).reshape(-1)
    if masses is None:
        masses = atomic_masses[numbers]
    masses = np.asarray(masses, dtype=np.float64).reshape(-1)
    if len(masses) != len(numbers) or not np.all(masses > 0):
        raise ValueError(f"masses must be {len(numbers)} positive values (amu), got {masses}")
    system = openmm.System()
    for mass in masses:
        system.addParticle(float(mass))
    return system


def create_context(
    module: Any,
    positions: np.ndarray,
    timestep_fs: float = 0.5,
    masses: np.ndarray | None = None,
    platform: str = "Reference",
) -> tuple[Any, ModelForce]:
    """An OpenMM ``Context`` (VerletIntegrator, ``platform``) with the model as its only force, at
    ``positions`` (N, 3) Angstrom, and its :class:`ModelForce` (already expanded at those positions).

    The ``Reference`` platform computes in double precision; OpenMM's ``CPU`` platform works in mixed
    precision.
    """
    openmm = import_openmm()
    model_force = ModelForce(module)
    numbers = model_force.module.atomic_numbers.numpy()
    positions = np.asarray(positions, dtype=np.float64)
    if positions.shape != (len(numbers), 3):
        raise ValueError(f"positions must have shape ({len(numbers)}, 3) Angstrom, got {positions.shape}")
    if not timestep_fs > 0:
        raise ValueError(f"timestep_fs must be positive, got {timestep_fs}")
    system = create_system(numbers, masses)
    system.addForce(model_force.force)
    integrator = openmm.VerletIntegrator(timestep_fs * 1e-3)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName(platform))
    context.setPositions(positions * 0.1)
    model_force.update(context)
    return context, model_force


@dataclass
class NVETrajectory:
    """Energies along an NVE run (eV), at ``times`` (ps), and the final positions (Angstrom)."""

    times: np.ndarray
    potential: np.ndarray
    kinetic: np.ndarray
    positions: np.ndarray

    @property
    def total(self) -> np.ndarray:
        """Total energy (eV) at each report."""
        return self.potential + self.kinetic

    def drift(self) -> float:
        """Energy drift in meV/ps: slope of a straight-line fit of the total energy against time."""
        return float(np.polyfit(self.times, self.total, 1)[0] * 1000.0)

    def fluctuation(self) -> float:
        """Standard deviation (meV) of the total energy about its straight-line fit."""
        fit = np.polyval(np.polyfit(self.times, self.total, 1), self.times)
        return float(np.std(self.total - fit) * 1000.0)


def run_nve(
    module: Any,
    positions: np.ndarray,
    n_steps: int,
    timestep_fs: float = 0.5,
    temperature: float = 300.0,
    report_every: int = 10,
    masses: np.ndarray | None = None,
    seed: int = 0,
    platform: str = "Reference",
    velocities: np.ndarray | None = None,
    threads: int | None = None,
) -> NVETrajectory:
    """NVE molecular dynamics in OpenMM (VerletIntegrator, a leapfrog) on the exported model.

    Starts at ``positions`` (N, 3) Angstrom with ``velocities`` (N, 3) Angstrom/fs, OpenMM's leapfrog
    velocities half a step before the start, or else Maxwell-Boltzmann velocities for ``temperature`` (K,
    OpenMM's ``setVelocitiesToTemperature`` with ``seed``); runs ``n_steps`` steps of ``timestep_fs`` fs and
    records the potential and kinetic energy (eV) every ``report_every`` steps. ``threads``: torch threads
    for the model (default: one per 512 atoms, core/threads.py; more only slow a small molecule down).
    """
    if n_steps < 1 or report_every < 1:
        raise ValueError(f"n_steps and report_every must be >= 1, got {n_steps}, {report_every}")
    context, model_force = create_context(module, positions, timestep_fs, masses, platform)
    if velocities is None:
        context.setVelocitiesToTemperature(float(temperature), int(seed))
    else:
        velocities = np.asarray(velocities, dtype=np.float64)
        if velocities.shape != (model_force.n_atoms, 3):
            raise ValueError(f"velocities must have shape ({model_force.n_atoms}, 3), got {velocities.shape}")
        context.setVelocities(velocities * 100.0)  # Angstrom/fs -> nm/ps
    integrator = context.getIntegrator()
    if threads is None:
        threads = threads_for(model_force.n_atoms, default_threads())
    times, potential, kinetic = [], [], []
    with torch_threads(threads):
        for step in range(n_steps + 1):
            if step:
                integrator.step(1)
                model_force.update(context)
            if step % report_every == 0:
                state = context.getState(getEnergy=True)
                times.append(step * timestep_fs * 1e-3)
                potential.append(state.getPotentialEnergy()._value * KJ_PER_MOL)
                kinetic.append(state.getKineticEnergy()._value * KJ_PER_MOL)
    final = context.getState(getPositions=True).getPositions(asNumpy=True)._value * 10.0
    return NVETrajectory(np.array(times), np.array(potential), np.array(kinetic), np.asarray(final))
