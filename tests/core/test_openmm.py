"""OpenMM driven by the exported model (core/openmm_md.py): forces in the OpenMM context equal
MLPESCalculator's, and OpenMM's Verlet steps follow the model exactly (checked against a leapfrog written
here with MLPESCalculator forces)."""

from __future__ import annotations

import numpy as np
import pytest
from ase import units
from ase.build import molecule
from ase.data import atomic_masses

from aiida_mlpes.core.calculator import MLPESCalculator
from aiida_mlpes.core.models.export import export_torchscript
from aiida_mlpes.core.units import KJ_PER_MOL

from .test_export import distorted, make_model

pytest.importorskip("openmm", reason="OpenMM is an optional extra: pip install 'aiida-mlpes[openmm]'")

from aiida_mlpes.core.openmm_md import create_context, run_nve


@pytest.mark.parametrize(
    ("kind", "name", "units_name"),
    [("physnet", "NH3", "openmm"), ("painn", "CH3OH", "ase"), ("committee", "HCN", "openmm")],
)
def test_openmm_forces_match_calculator(kind, name, units_name):
    model = make_model(kind)
    images = distorted(name, 3, seed=7)
    module = export_torchscript(model, images[0].numbers, units=units_name)
    calc = MLPESCalculator(model)
    for atoms in images:
        context, _ = create_context(module, atoms.positions)
        state = context.getState(getEnergy=True, getForces=True)
        forces = state.getForces(asNumpy=True)._value * KJ_PER_MOL / 10.0  # kJ/mol/nm -> eV/Angstrom
        atoms.calc = calc
        reference = atoms.get_forces()
        assert np.abs(reference).max() > 0.05
        assert np.abs(forces - reference).max() < 1e-4  # eV/Angstrom (issue 13)
        energy = state.getPotentialEnergy()._value * KJ_PER_MOL
        assert energy == pytest.approx(atoms.get_potential_energy(), abs=1e-6)


def test_openmm_verlet_follows_the_model():
    """20 OpenMM steps equal a leapfrog with MLPESCalculator forces: positions and energies at every step."""
    model = make_model("physnet", seed=3)
    atoms = molecule("NH3")
    rng = np.random.default_rng(11)
    velocities = rng.normal(scale=0.005, size=(4, 3))  # Angstrom/fs, half a step before the start
    dt, n_steps = 0.5, 20
    module = export_torchscript(model, atoms.numbers, units="openmm")
    trajectory = run_nve(
        module, atoms.positions, n_steps, timestep_fs=dt, report_every=1, velocities=velocities
    )

    calc = MLPESCalculator(model)
    masses = atomic_masses[atoms.numbers][:, None]
    step = dt * units.fs  # ASE time unit: Angstrom sqrt(amu/eV)
    v = velocities / units.fs
    x = atoms.positions.copy()
    energies = []
    for _ in range(n_steps + 1):
        probe = atoms.copy()
        probe.positions = x
        probe.calc = calc
        energies.append(probe.get_potential_energy())
        v = v + step * probe.get_forces() / masses
        x = x + step * v
    x = x - step * v  # the loop ran one position update past step n_steps
    assert np.abs(trajectory.potential - np.array(energies)).max() < 1e-6
    assert np.abs(trajectory.positions - x).max() < 1e-8
    assert np.abs(x - atoms.positions).max() > 0.01  # the atoms moved
    assert trajectory.times[-1] == pytest.approx(n_steps * dt * 1e-3)


def test_openmm_bad_input():
    module = export_torchscript(make_model("physnet"), [7, 1, 1, 1])
    with pytest.raises(ValueError, match=r"shape \(4, 3\)"):
        create_context(module, np.zeros((3, 3)))
    with pytest.raises(ValueError, match="masses"):
        create_context(module, molecule("NH3").positions, masses=np.array([14.0, 1.0, 1.0, -1.0]))
    with pytest.raises(ValueError, match="timestep_fs"):
        create_context(module, molecule("NH3").positions, timestep_fs=0.0)
    with pytest.raises(ValueError, match="n_steps"):
        run_nve(module, molecule("NH3").positions, 0)
