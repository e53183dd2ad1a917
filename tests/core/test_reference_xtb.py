"""xTB arguments and parsers: every xtb file in shared/realdata, and the real ``xtb`` executable on NH3."""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest
from ase.io import read

from aiida_mlpes.core.reference import common
from aiida_mlpes.core.reference.orca import parse_engrad
from aiida_mlpes.core.reference.xtb import (
    parse_charges_file,
    parse_energy_file,
    parse_gradient_file,
    parse_xtb_output,
    parse_xtbout_json,
    read_xtb,
    run_xtb,
    write_xyz,
    xtb_arguments,
)
from aiida_mlpes.core.units import BOHR, HARTREE

XTB = shutil.which("xtb")
needs_xtb = pytest.mark.usefixtures("require_xtb")  # fails loudly if xtb is missing
GRAD = HARTREE / BOHR


@pytest.fixture
def text(realdata):
    """The text of a file under realdata/xtb (skipped without the real data)."""

    def read_text(rel: str) -> str:
        return (realdata / "xtb" / rel).read_text(errors="replace")

    return read_text


# file, version, final TOTAL ENERGY (Eh), dipole "full:" x y z (a.u.)
STDOUT = [
    ("cclib_xtb6.6.1/dvb_opt/dvb_opt.out", "6.6.1", -26.438242468348, [0.0, 0.0, 0.0]),
    ("cclib_xtb6.6.1/dvb_sp/dvb_sp.out", "6.6.1", -26.425939358406, [0.0, 0.0, 0.0]),
    ("cclib_xtb6.6.0_dvb_sp/dvb_sp.out", "6.6.0", -26.425939358406, [0.0, 0.0, 0.0]),
    ("autode_xtb6.2.3/h2_grad_xtb.out", "6.2.3", -0.966523050218, [0.0, 0.0, 0.0]),
    ("autode_xtb6.2.3/xtb_6_3_2_opt.out", "6.3.2", -8.212671558235, [-0.868, -0.034, 0.034]),
    ("arc_xtb6.5.1/NCC_xTB.out", "6.5.1", -10.752192838993, [0.166, -0.066, 0.538]),
    ("autode_xtb/xtb_6_1_opt.out", "6.1", -4.1752185, [0.0, 0.0, 0.0]),
    ("autode_xtb/opt_point_charge_xtb.out", "6.2.3", -4.175274864023, [-0.019, -0.001, -0.001]),
    ("arc_xtb/xtb_opt_2.out", "6.3.3", -10.500828065933, [0.002, 0.008, -0.001]),
    ("arc_xtb/TS_0_hess_uhf1.out", "6.3.3", -9.837658362271, [0.054, -0.113, -0.261]),
    ("cclib_xtb6.4.1/water_gopt.out", "6.4.1", -5.070544323637, [0.504, 0.358, -0.616]),
]


@pytest.mark.parametrize(("rel", "version", "energy", "dipole"), STDOUT, ids=[s[0] for s in STDOUT])
def test_stdout(text, rel, version, energy, dipole):
    r = parse_xtb_output(text(rel))
    assert r.status == common.OK, r.message
    assert r.version == version
    assert r.energy / HARTREE == pytest.approx(energy, abs=1e-9)
    np.testing.assert_allclose(r.dipole / BOHR, dipole, atol=1e-12)


def test_optimisation_step_energies(text):
    r = parse_xtb_output(text("autode_xtb/xtb_6_1_opt.out"))  # old format: 'total E :' lines
    assert r.energies[0] / HARTREE == pytest.approx(-4.1740478, abs=1e-9)
    r = parse_xtb_output(text("arc_xtb/CO2_ohess.out"))  # ':: total energy' per optimisation step
    assert r.energies[0] / HARTREE == pytest.approx(-10.135996710859, abs=1e-9)
    assert r.energies[-1] / HARTREE == pytest.approx(-10.308452243026, abs=1e-9)


@pytest.mark.parametrize(
    ("rel", "category"),
    [
        ("arc_xtb/CO2_ohess.out", common.WALLTIME),
        ("autode_xtb6.2.3/h2_sp_xtb_no_energy.out", common.MISSING_OUTPUT),
    ],
)
def test_incomplete_outputs(text, rel, category):
    r = parse_xtb_output(text(rel))
    assert r.status == category and r.energy is None


def test_energy_gradient_engrad_charges_files(text, realdata):
    folder = "cclib_xtb6.6.1/dvb_opt/"
    assert parse_energy_file(text(folder + "energy")) / HARTREE == pytest.approx(-26.43824246835, abs=1e-11)
    energy, forces, numbers, positions = parse_gradient_file(text(folder + "gradient"))
    assert energy / HARTREE == pytest.approx(-26.43824246835, abs=1e-11)
    assert forces.shape == (20, 3) and numbers.tolist().count(6) == 10
    np.testing.assert_allclose(
        -forces[0] / GRAD, [-1.2614228868547e-04, -7.9166575547760e-05, -4.4671991629303e-13], rtol=1e-12
    )
    assert np.linalg.norm(forces / GRAD) == pytest.approx(0.00059679, abs=5e-9)
    # the ORCA-format engrad written by xtb holds the same gradient (12 decimals) and geometry
    e2, f2, z2, p2 = parse_engrad(text(folder + "dvb_opt.engrad"))
    assert e2 / HARTREE == pytest.approx(-26.438242468348, abs=1e-12)
    np.testing.assert_allclose(f2, forces, atol=1e-11 * GRAD)
    assert z2.tolist() == numbers.tolist()
    np.testing.assert_allclose(p2, positions, atol=1e-6)
    # the gradient file geometry is xtbopt.xyz (Angstrom)
    np.testing.assert_allclose(positions, read(realdata / "xtb" / folder / "xtbopt.xyz").positions, atol=1e-6)
    charges = parse_charges_file(text(folder + "charges"))
    assert charges.shape == (20,) and charges.sum() == pytest.approx(0.0, abs=1e-6)


def test_xtbout_json(text):
    data = parse_xtbout_json(text("cclib_xtb6.6.0_dvb_sp/xtbout.json"))
    assert data["energy"] / HARTREE == pytest.approx(-26.42593936, abs=1e-9)
    assert data["method"] == "GFN2-xTB" and data["version"] == "6.6.0 (unknown)"
    assert data["gap"] == pytest.approx(3.33186258)
    np.testing.assert_allclose(data["dipole"], 0.0)
    assert data["charges"].shape == (20,)
    # the json energy (8 decimals) agrees with the stdout TOTAL ENERGY (12 decimals)
    r = parse_xtb_output(text("cclib_xtb6.6.0_dvb_sp/dvb_sp.out"))
    assert data["energy"] == pytest.approx(r.energy, abs=1e-8 * HARTREE)


def test_arguments():
    args = xtb_arguments(
        "s0.xyz", charge=1, multiplicity=2, iterations=500, accuracy=0.1, solvent="water", namespace="s0"
    )
    assert args[0] == "s0.xyz"
    assert args[args.index("--chrg") + 1] == "1" and args[args.index("--uhf") + 1] == "1"
    assert args[args.index("--gfn") + 1] == "2" and "--grad" in args and "--json" in args
    assert args[args.index("--iterations") + 1] == "500" and args[args.index("--alpb") + 1] == "water"
    assert xtb_arguments("a.xyz", 0, 1, method="GFN-FF")[1] == "--gfnff"
    with pytest.raises(ValueError, match="method"):
        xtb_arguments("a.xyz", 0, 1, method="GFN3")
    with pytest.raises(ValueError, match="solvent"):
        xtb_arguments("a.xyz", 0, 1, solvent="water; rm -rf")
    with pytest.raises(ValueError, match="file name"):
        xtb_arguments("a b.xyz", 0, 1)


@pytest.fixture(scope="module")
def nh3(realdata):
    return read(realdata / "geometries/NH3_SymmObl_opan.xyz")


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1"}


@needs_xtb
def test_real_xtb_nh3_parsed_from_all_files_agree(nh3, tmp_path):
    """Run xtb directly (argument list) and check every source of each number agrees, plus physics."""
    (tmp_path / "nh3.xyz").write_text(write_xyz(nh3.numbers, nh3.positions))
    with (tmp_path / "out").open("w") as out, (tmp_path / "err").open("w") as err:
        subprocess.run(
            [XTB, *xtb_arguments("nh3.xyz", 0, 1)],
            cwd=tmp_path,
            stdout=out,
            stderr=err,
            env=_env(),
            check=True,
        )
    assert "normal termination" in (tmp_path / "err").read_text()
    r = read_xtb(tmp_path)
    assert r.ok, r.message
    assert r.version.startswith("6.")
    stdout = parse_xtb_output((tmp_path / "out").read_text())
    js = parse_xtbout_json((tmp_path / "xtbout.json").read_text())
    assert r.energy == pytest.approx(stdout.energy, abs=1e-10 * HARTREE)
    assert r.energy == pytest.approx(js["energy"], abs=1e-8 * HARTREE)
    # GFN2 NH3 is about -4.42 Eh
    assert -4.5 < r.energy / HARTREE < -4.3
    np.testing.assert_allclose(r.positions, nh3.positions, atol=1e-9)
    assert r.numbers.tolist() == [7, 1, 1, 1]
    # forces sum to zero (translation invariance); the printed |dE/dxyz| equals the gradient norm
    np.testing.assert_allclose(r.forces.sum(axis=0), 0.0, atol=1e-6)
    grad_line = (tmp_path / "gradient").read_text().splitlines()[1]
    assert np.linalg.norm(r.forces / GRAD) == pytest.approx(float(grad_line.split()[-1]), abs=1e-6)
    # dipole: json (8 decimals) vs stdout (3 decimals) ; charges sum to 0
    np.testing.assert_allclose(r.dipole, stdout.dipole, atol=6e-4 * BOHR)
    assert r.atomic_charges.sum() == pytest.approx(0.0, abs=1e-6) and r.atomic_charges[0] < 0


@needs_xtb
def test_real_xtb_forces_match_finite_differences(nh3):
    """Analytic forces against central differences of the energy (xtb executable both times)."""
    base = run_xtb(nh3.numbers, nh3.positions, accuracy=0.01)
    h = 1e-3
    for atom, axis in [(0, 2), (1, 0)]:
        plus, minus = nh3.positions.copy(), nh3.positions.copy()
        plus[atom, axis] += h
        minus[atom, axis] -= h
        ep = run_xtb(nh3.numbers, plus, accuracy=0.01).energy
        em = run_xtb(nh3.numbers, minus, accuracy=0.01).energy
        assert base.forces[atom, axis] == pytest.approx(-(ep - em) / (2 * h), abs=2e-3)


@needs_xtb
def test_real_xtb_failures(nh3, tmp_path):
    """Real xtb failures map to categories: too few SCC iterations, overlapping atoms, missing output."""
    r = run_xtb(nh3.numbers, nh3.positions, iterations=2)
    assert r.status == common.SCF_NOT_CONVERGED and "did not converge" in r.message
    pos = nh3.positions.copy()
    pos[1] = pos[0]
    r = run_xtb(nh3.numbers, pos)
    assert r.status == common.UNPHYSICAL and "short distance" in r.message
    assert read_xtb(tmp_path).status == common.MISSING_OUTPUT


@needs_xtb
def test_real_xtb_namespace_and_open_shell(nh3, tmp_path):
    """--namespace prefixes every file (several structures share a folder); NH3+ doublet runs with --uhf 1."""
    (tmp_path / "s1.xyz").write_text(write_xyz(nh3.numbers, nh3.positions))
    with (tmp_path / "s1.out").open("w") as out, (tmp_path / "s1.err").open("w") as err:
        subprocess.run(
            [XTB, *xtb_arguments("s1.xyz", 1, 2, namespace="s1")],
            cwd=tmp_path,
            stdout=out,
            stderr=err,
            env=_env(),
            check=True,
        )
    r = read_xtb(tmp_path, namespace="s1")
    assert r.ok, r.message
    assert r.atomic_charges.sum() == pytest.approx(1.0, abs=1e-5)
    neutral = run_xtb(nh3.numbers, nh3.positions)
    # ionisation costs energy: roughly 10-16 eV for ammonia in GFN2
    assert 8 < r.energy - neutral.energy < 20
