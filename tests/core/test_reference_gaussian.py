"""Gaussian writer and parser, checked on every Gaussian log in shared/realdata against its MANIFEST."""

from __future__ import annotations

import numpy as np
import pytest

from aiida_mlpes.core.reference import common
from aiida_mlpes.core.reference.gaussian import parse_gaussian_output, read_gaussian, write_gaussian_input
from aiida_mlpes.core.units import BOHR, DEBYE, HARTREE

FORCE = HARTREE / BOHR


@pytest.fixture
def parse(realdata):
    """``parse_gaussian_output`` of a file under realdata/gaussian (skipped without the real data)."""

    def parse_file(rel: str, **kwargs):
        return parse_gaussian_output((realdata / "gaussian" / rel).read_text(errors="replace"), **kwargs)

    return parse_file


def max_rms(forces: np.ndarray) -> tuple[float, float]:
    f = forces / FORCE
    return float(np.abs(f).max()), float(np.sqrt(np.mean(f**2)))


# file, version, energies (first, last), count, forces blocks, first row 0, first max/rms, last row 0, last max/rms
SUCCESSFUL = [
    ("cclib_g09/water_mp2.log", "09", -75.002282127785, -75.002282127785, 1, 0, None, None, None, None),
    ("cclib_g16/water_mp2.log", "16", -75.002282127454, -75.002282127454, 1, 0, None, None, None, None),
    ("autode_g09/pd_cl2_sp_g16.log", "16", -1046.71987413, -1046.71987413, 1, 0, None, None, None, None),
    (
        "cclib_g16/dvb_gopt.out",
        "16",
        -382.294279146,
        -382.308266602,
        5,
        5,
        [-0.050454775, 0.0, 0.000584594],
        (0.050454775, 0.015077523),
        [-0.000020958, 0.0, -0.000043839],
        (0.000045155, 0.000016087),
    ),
    (
        "cclib_g16/dvb_ir.out",
        "16",
        -382.308266602,
        -382.308266602,
        1,
        1,
        [-0.000020974, 0.0, -0.000043825],
        (0.000045163, 0.000016087),
        [-0.000020974, 0.0, -0.000043825],
        (0.000045163, 0.000016087),
    ),
    (
        "autode_g09/const_dist_opt_g09.log",
        "09",
        -40.4220143374,
        -40.4231640470,
        3,
        3,
        [-0.015141671, 0.032213662, -0.016041526],
        (0.044571706, 0.017277414),
        None,
        None,
    ),
    (
        "cclib_g03/dvb_gopt.out",
        "03",
        -382.294280336,
        -382.308266580,
        5,
        5,
        [-0.050449056, 0.0, 0.000600404],
        (0.050449056, 0.015082284),
        [-0.000019787, 0.0, -0.000045553],
        (0.000045553, 0.000016161),
    ),
    (
        "nomad_g03/Al_multistep_m61b5.out",
        "03",
        -484.272166228,
        -484.282281401,
        6,
        6,
        [0.0, 0.0, -0.026613983],
        (0.026613983, 0.015365590),
        [0.0, 0.0, -0.000001178],
        (0.000001178, 0.000000680),
    ),
    (
        "arc_g16/converged_uwb97xd_opt.out",
        "16",
        -75.7334201357,
        -75.7343712655,
        4,
        3,
        [-0.033665319, 0.0, 0.0],
        (0.033665319, 0.019436681),
        [0.000002234, 0.0, 0.0],
        (0.000002234, 0.000001290),
    ),
]


@pytest.mark.parametrize(
    ("rel", "version", "e_first", "e_last", "n_e", "n_f", "row0", "stats0", "row_last", "stats_last"),
    SUCCESSFUL,
    ids=[s[0] for s in SUCCESSFUL],
)
def test_successful_outputs(
    parse, rel, version, e_first, e_last, n_e, n_f, row0, stats0, row_last, stats_last
):
    r = parse(rel)
    assert r.status == common.OK, r.message
    assert r.version.startswith(version)
    assert len(r.energies) == n_e
    assert r.energies[0] / HARTREE == pytest.approx(e_first, abs=1e-9)
    assert r.energy / HARTREE == pytest.approx(e_last, abs=1e-9)
    assert len(r.forces_history) == n_f
    if n_f:
        first = r.forces_history[0]
        np.testing.assert_allclose(first[0] / FORCE, row0, atol=1e-12)
        np.testing.assert_allclose(max_rms(first), stats0, atol=1e-9)
        assert first.shape == (len(r.numbers), 3)
    if row_last is not None:
        np.testing.assert_allclose(r.forces[0] / FORCE, row_last, atol=1e-12)
        np.testing.assert_allclose(max_rms(r.forces), stats_last, atol=1e-9)


def test_mp2_energy_uses_fortran_d_exponent_and_replaces_scf(parse):
    r = parse("cclib_g09/water_mp2.log")
    # the SCF Done value -74.9643287913 is replaced by EUMP2 = -0.75002282127785D+02
    assert r.energy / HARTREE == pytest.approx(-75.002282127785, abs=1e-12)
    assert r.numbers.tolist() == [8, 1, 1]


def test_forces_are_not_negated(parse):
    """Gaussian prints forces (= -gradient): for the first C of divinylbenzene the printed X force is negative."""
    r = parse("cclib_g16/dvb_gopt.out")
    assert r.forces_history[0][0, 0] < 0


def test_dipoles(parse):
    # archive dipole (a.u., input orientation) has the printed Debye magnitude 1.5994
    r = parse("cclib_g09/water_mp2.log")
    assert np.linalg.norm(r.dipole) / DEBYE == pytest.approx(1.5994, abs=2e-4)
    np.testing.assert_allclose(r.dipole / BOHR, [0.5025539, 0.0, 0.3787015], atol=1e-12)
    r = parse("arc_g16/converged_uwb97xd_opt.out")
    assert np.linalg.norm(r.dipole) / DEBYE == pytest.approx(1.8474, abs=2e-4)
    # no archive (error run): the last Debye block
    r = parse("arc_g16/l9999_ub3lyp_opt_error.out")
    np.testing.assert_allclose(r.dipole / DEBYE, [3.7071, -4.6192, 0.2332], atol=1e-12)
    r = parse("cclib_g03/dvb_gopt.out")
    np.testing.assert_allclose(r.dipole, 0.0, atol=1e-12)


def test_mulliken_charges(parse):
    r = parse("cclib_g09/water_mp2.log")
    np.testing.assert_allclose(r.atomic_charges, [-0.319889, 0.159944, 0.159944])
    assert r.charge_scheme == "mulliken"
    # unrestricted: "Mulliken charges and spin densities"
    r = parse("arc_g16/converged_uwb97xd_opt.out")
    np.testing.assert_allclose(r.atomic_charges, [-0.242669, 0.242669], atol=1e-6)
    # Gaussian 03: "Mulliken atomic charges"; sums to the total charge (+1 for Al2+)
    r = parse("nomad_g03/Al_multistep_m61b5.out")
    assert r.atomic_charges.sum() == pytest.approx(1.0, abs=1e-6)
    r = parse("cclib_g03/dvb_gopt.out")
    assert len(r.atomic_charges) == 20 and r.atomic_charges.sum() == pytest.approx(0.0, abs=1e-5)


HIRSHFELD_BLOCK = """
 Hirshfeld charges, spin densities, dipoles, and CM5 charges using IRadAn=      4:
                Q-H        S-H        Dx         Dy         Dz        Q-CM5
     1  O   -0.324484   0.000000   0.000000   0.000000  -0.108546  -0.650213
     2  H    0.162242   0.000000   0.000000   0.106640  -0.051364   0.325106
     3  H    0.162242   0.000000   0.000000  -0.106640  -0.051364   0.325106
       Tot   0.000000   0.000000   0.000000   0.000000  -0.211274   0.000000
"""


def test_hirshfeld_charges(realdata):
    """No real log with Pop=Hirshfeld is in shared/realdata: a block in Gaussian 16's layout, appended to a
    real log, is parsed into the 'hirshfeld' scheme (Q-H column)."""
    text = (realdata / "gaussian/cclib_g16/water_mp2.log").read_text() + HIRSHFELD_BLOCK
    r = parse_gaussian_output(text, charge_scheme="hirshfeld")
    np.testing.assert_allclose(r.atomic_charges, [-0.324484, 0.162242, 0.162242])
    assert "mulliken" in r.charges_by_scheme


FAILED = [
    ("arc_g16/l9999_ub3lyp_opt_error.out", common.ERROR, "link 9999"),
    ("autode_g09/angle_fail_g09_cartesian.log", common.ERROR, "link 9999"),
    (
        "arc_g09/inaccurate_quadrature_convergence_failure.out",
        common.SCF_NOT_CONVERGED,
        "Convergence failure",
    ),
]


@pytest.mark.parametrize(("rel", "category", "text"), FAILED, ids=[f[0] for f in FAILED])
def test_failures_are_categorised(parse, rel, category, text):
    r = parse(rel)
    assert r.status == category
    assert text in r.message


def test_failed_runs_keep_their_numbers(parse):
    r = parse("arc_g16/l9999_ub3lyp_opt_error.out")
    np.testing.assert_allclose(np.array(r.energies) / HARTREE, [-395.878980048, -395.923591389], atol=1e-9)
    assert r.forces is None
    r = parse("autode_g09/angle_fail_g09_cartesian.log")
    assert r.energies[0] / HARTREE == pytest.approx(-269.585752569, abs=1e-9)
    assert r.energy / HARTREE == pytest.approx(-269.611166917, abs=1e-9)
    np.testing.assert_allclose(r.forces_history[0][0] / FORCE, [0.068781171, -0.117884467, 0.566736472])
    r = parse("arc_g09/inaccurate_quadrature_convergence_failure.out")
    assert len(r.energies) == 17 and len(r.forces_history) == 16
    np.testing.assert_allclose(max_rms(r.forces_history[0]), (0.000376049, 0.000100712), atol=1e-9)


def test_truncated_and_missing(realdata, tmp_path):
    text = (realdata / "gaussian/cclib_g16/dvb_gopt.out").read_text()
    truncated = text[: len(text) // 2]
    r = parse_gaussian_output(truncated)
    assert r.status == common.WALLTIME and r.energy is not None
    assert parse_gaussian_output("  \n").status == common.MISSING_OUTPUT
    assert read_gaussian(tmp_path).status == common.MISSING_OUTPUT
    # a normal single point without Force: a labelling failure (missing forces)
    (tmp_path / "aiida.log").write_text((realdata / "gaussian/cclib_g16/water_mp2.log").read_text())
    assert read_gaussian(tmp_path).status == common.MISSING_OUTPUT


def test_write_input_layout_matches_real_input(realdata):
    """Same sections as the real water_mp2.com: Link0, route, blank, title, blank, 'charge mult', atoms, blank."""
    real = (realdata / "gaussian/cclib_g16/water_mp2.com").read_text().splitlines()
    text = write_gaussian_input(
        [8, 1, 1],
        np.array([[0, 0, 0], [0.99, 0, 0], [-0.27, 0.95, 0]]),
        0,
        1,
        route="MP2/STO-3G Density",
        nprocs=2,
        memory="1GB",
    )
    lines = text.split("\n")
    assert lines[0] == "%nprocshared=2" and lines[1] == "%mem=1GB"
    assert lines[2] == "#P MP2/STO-3G Density Force NoSymm"
    assert real[1].startswith("#P MP2/STO-3G Density")
    assert lines[3] == "" and lines[5] == "" and lines[6] == "0 1" == real[5]
    assert lines[7].split()[0] == "O" and len(lines[7].split()) == 4
    assert text.endswith("\n\n")  # Gaussian needs the blank line after the molecule
    # the '#P' prefix given by the user is not doubled; PBEPBE keeps its P
    text = write_gaussian_input([1, 1], np.eye(2, 3), 0, 3, route="#P PBEPBE/Def2SVP Force")
    assert "#P PBEPBE/Def2SVP Force NoSymm" in text and "0 3" in text


@pytest.mark.parametrize("route", ["B3LYP/6-31G*\n\n--Link1--", "B3LYP; rm", "B3LYP @file", "  "])
def test_write_input_rejects_free_text(route):
    with pytest.raises(ValueError):
        write_gaussian_input([1, 1], np.eye(2, 3), 0, 1, route=route)
