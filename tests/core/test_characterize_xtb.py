"""NH3 on GFN2-xTB: our frequencies against `xtb --ohess`, and the inversion TS, MEP and minimum check."""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest
import tblite.ase as tblite_ase
from ase.io import read

from aiida_mlpes.core.characterize.dmc import run_dmc
from aiida_mlpes.core.characterize.frequencies import harmonic_frequencies, modes_from_hessian
from aiida_mlpes.core.characterize.mep import minimum_energy_path
from aiida_mlpes.core.characterize.optimize import optimize_minimum, optimize_ts
from aiida_mlpes.core.potential import ASEPotential
from aiida_mlpes.core.units import BOHR, HARTREE

XTB = shutil.which("xtb")
pytestmark = pytest.mark.usefixtures("require_xtb")  # fails loudly if xtb is missing

NUMBERS = [7, 1, 1, 1]
GUESS = """4

N 0.0 0.0 0.1
H 0.94 0.0 -0.27
H -0.47 0.814 -0.27
H -0.47 -0.814 -0.27
"""
#: xtb 6.5.1's atomic masses for N and H (from its molecular mass 17.0305 printed for NH3)
XTB_MASSES = [14.0067, 1.00794, 1.00794, 1.00794]


@pytest.fixture(scope="module")
def xtb_ohess(tmp_path_factory) -> dict:
    """Run `xtb nh3.xyz --ohess` once: optimised geometry, its Hessian and frequencies."""
    work = tmp_path_factory.mktemp("xtb")
    (work / "nh3.xyz").write_text(GUESS)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_STACKSIZE": "200M"}
    subprocess.run(
        [XTB, "nh3.xyz", "--ohess", "--gfn", "2"], cwd=work, env=env, capture_output=True, check=True
    )
    frequencies = []
    for line in (work / "vibspectrum").read_text().splitlines():
        fields = line.split()
        if fields and fields[0].isdigit():
            frequencies.append(float(fields[2] if fields[1] == "a" else fields[1]))
    hessian = np.array((work / "hessian").read_text().split()[1:], dtype=float).reshape(12, 12)
    return {
        "positions": read(work / "xtbopt.xyz").positions,
        "frequencies": np.array(frequencies[6:]),
        "hessian": hessian * HARTREE / BOHR**2,
    }


@pytest.fixture(scope="module")
def gfn2() -> ASEPotential:
    return ASEPotential(tblite_ase.TBLite(method="GFN2-xTB", accuracy=0.001, verbosity=0), NUMBERS)


def test_projection_reproduces_xtb_from_its_own_hessian(xtb_ohess):
    modes = modes_from_hessian(xtb_ohess["hessian"], xtb_ohess["positions"], np.array(XTB_MASSES))
    np.testing.assert_allclose(modes.frequencies, xtb_ohess["frequencies"], atol=0.02)


def test_finite_difference_frequencies_agree_with_xtb_hess(xtb_ohess, gfn2):
    freqs = harmonic_frequencies(gfn2, NUMBERS, xtb_ohess["positions"], masses=XTB_MASSES)
    assert freqs.shape == (6,)
    np.testing.assert_allclose(freqs, xtb_ohess["frequencies"], atol=1.0)


def test_inversion_ts_and_mep_end_in_the_two_pyramids(xtb_ohess, gfn2):
    minimum = optimize_minimum(gfn2, NUMBERS, xtb_ohess["positions"], fmax=1e-3)
    planar = xtb_ohess["positions"].copy()
    planar[:, 2] = [0.02, 0.0, 0.0, 0.0]
    ts = optimize_ts(gfn2, NUMBERS, planar, fmax=1e-3)
    assert ts.converged
    imaginary = ts.modes.frequencies[ts.modes.imaginary(10.0)]
    assert len(imaginary) == 1 and -1100 < imaginary[0] < -800  # umbrella inversion, ~970i cm^-1
    barrier = ts.energy - minimum.energy
    assert 0.2 < barrier < 0.35  # GFN2-xTB: ~0.26 eV
    path = minimum_energy_path(gfn2, NUMBERS, ts.positions, fmax=5e-3)
    assert path.converged == (True, True)
    np.testing.assert_allclose(path.barriers, [barrier, barrier], atol=2e-3)
    for end in (path.positions[0], path.positions[-1]):
        bonds = np.sort(np.linalg.norm(end[1:] - end[0], axis=1))
        reference = np.sort(np.linalg.norm(minimum.positions[1:] - minimum.positions[0], axis=1))
        np.testing.assert_allclose(bonds, reference, atol=5e-3)
    # the two ends are the two pyramids: N on opposite sides of the H3 plane
    heights = [
        np.dot(end[0] - end[1:].mean(0), np.cross(end[2] - end[1], end[3] - end[1]))
        for end in (path.positions[0], path.positions[-1])
    ]
    assert heights[0] * heights[1] < 0
    # the TS is not a minimum: DMC refuses to start there
    with pytest.raises(ValueError, match="not a minimum: 1 imaginary"):
        run_dmc(gfn2, NUMBERS, ts.positions, nwalkers=10, nsteps=10, eqsteps=1)
