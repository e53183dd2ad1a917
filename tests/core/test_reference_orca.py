"""ORCA writer and parsers, checked on every ORCA file in shared/realdata against the numbers in its MANIFEST."""

from __future__ import annotations

import numpy as np
import pytest

from aiida_mlpes.core.reference import common
from aiida_mlpes.core.reference.orca import parse_engrad, parse_orca_output, read_orca, write_orca_input
from aiida_mlpes.core.units import BOHR, HARTREE

GRAD = HARTREE / BOHR


@pytest.fixture
def parse(realdata):
    """``parse_orca_output`` of a file under realdata/orca (skipped without the real data)."""

    def parse_file(rel: str, **kwargs):
        return parse_orca_output((realdata / "orca" / rel).read_text(errors="replace"), **kwargs)

    return parse_file


def gradient(forces: np.ndarray) -> np.ndarray:
    """Back to the printed unit: Eh/bohr, gradient = -forces."""
    return -np.asarray(forces) / GRAD


# (file, version, final energy Eh, number of energies, gradient blocks, first-block row 0, first-block norm,
#  last-block norm)
SUCCESSFUL = [
    (
        "schnetpack_orca4.0/test_orca.log",
        "4.0.1.2",
        -151.102023737985,
        1,
        1,
        [0.123759454, 0.020942186, 0.007322938],
        1.5401440846,
        1.5401440846,
    ),
    ("autode_orca4/H2_sp_orca.out", "4.1.1", -1.138965730007, 1, 0, None, None, None),
    (
        "autode_orca4/h2_grad_orca.out",
        "4.2.1",
        -1.139851613272,
        1,
        1,
        [-0.085347768, 0.0, 0.0],
        0.1206999711,
        0.1206999711,
    ),
    (
        "autode_orca4/tmp_orca.out",
        "4.2.1",
        -959.267806731993,
        1,
        1,
        [-0.00971201, -0.00773534, -0.02473580],
        0.0636368,
        0.0636368,
    ),
    ("autode_orca5/h2o_orca_v5_charges.out", "5.0.3", -76.377662808556, 1, 0, None, None, None),
    (
        "iodata_orca5.0/orca_gradient.out",
        "5.0.3",
        -742.985592886484,
        1,
        1,
        [-0.075712381, -0.005158513, 0.005897839],
        0.3604002039,
        0.3604002039,
    ),
    ("cclib_orca5.0/water_mp2.out", "5.0.0", -74.999373814715, 1, 0, None, None, None),
    (
        "cclib_orca5.0/dvb_gopt.out",
        "5.0.1",
        -382.055133372796,
        4,
        3,
        [0.000743452, 0.000204807, 0.0],
        0.0033856359,
        0.0004812110,
    ),
    ("cclib_orca6.0/water_mp2.out", "6.0.1", -74.999374598107, 1, 0, None, None, None),
    (
        "cclib_orca6.0/dvb_gopt.out",
        "6.0.0",
        -382.055133399486,
        4,
        3,
        [0.000763548, 0.000179736, 0.000000092],
        0.0033254869,
        0.0004701819,
    ),
    ("cclib_orca4.2/dvb_sp.out", "4.2.0", -382.050758039646, 1, 0, None, None, None),
    ("cclib_orca5.0_cpcm/water_hf_solvent_cpcm.log", "5.0.3", -74.967669815550, 1, 0, None, None, None),
    (
        "aiida_orca5.0_uks/aiida_unrestricted.out",
        "5.0.3",
        -39.497696442138,
        2,
        2,
        [-0.000001946, 0.000006384, 0.000002518],
        0.1541371082,
        0.0685131398,
    ),
    (
        "nomad_orca3.0/CHO_geomopt_orca3.2985006.out",
        "3.0.3",
        -114.419471868631,
        6,
        5,
        [-0.065871364, 0.0, 0.000000001],
        0.086829903,
        0.000212513,
    ),
    ("nomad_orca3.0/BO_spinpol_orca3.2984863.out", "3.0.3", -99.132361561630, 1, 0, None, None, None),
]


@pytest.mark.parametrize(
    ("rel", "version", "energy", "n_energies", "n_grad", "row0", "norm0", "norm_last"),
    SUCCESSFUL,
    ids=[s[0] for s in SUCCESSFUL],
)
def test_successful_outputs(parse, rel, version, energy, n_energies, n_grad, row0, norm0, norm_last):
    r = parse(rel)
    assert r.status == common.OK, r.message
    assert r.version == version
    assert r.energy / HARTREE == pytest.approx(energy, abs=1e-9)
    assert len(r.energies) == n_energies
    assert len(r.forces_history) == n_grad
    if n_grad:
        first, last = gradient(r.forces_history[0]), gradient(r.forces_history[-1])
        np.testing.assert_allclose(first[0], row0, atol=1e-9)
        # printed norms have 6-10 decimals; the recomputed norm agrees to the printed precision
        assert np.linalg.norm(first) == pytest.approx(norm0, abs=2e-7)
        assert np.linalg.norm(last) == pytest.approx(norm_last, abs=2e-7)
        np.testing.assert_allclose(r.forces, r.forces_history[-1])
        assert r.forces.shape == (len(r.numbers), 3) or rel.startswith("autode_orca4/tmp")


def test_first_and_intermediate_energies_of_optimisation(parse):
    r = parse("cclib_orca5.0/dvb_gopt.out")
    np.testing.assert_allclose(
        np.array(r.energies) / HARTREE,
        [-382.055108639488, -382.055126334294, -382.055133003097, -382.055133372796],
        atol=1e-9,
    )
    r6 = parse("cclib_orca6.0/dvb_gopt.out")
    np.testing.assert_allclose(
        np.array(r6.energies) / HARTREE,
        [-382.055108617704, -382.055126570567, -382.055133025246, -382.055133399486],
        atol=1e-9,
    )
    assert r.numbers.tolist().count(6) == 10 and len(r.numbers) == 20


def test_gradient_statistics_h2o2(parse):
    """RMS and MAX printed by ORCA 4.0 agree with the parsed rows."""
    g = gradient(parse("schnetpack_orca4.0/test_orca.log").forces)
    assert np.sqrt(np.mean(g**2)) == pytest.approx(0.4446013009, abs=1e-9)
    assert np.abs(g).max() == pytest.approx(1.0706708911, abs=1e-9)
    np.testing.assert_allclose(g[1], [1.070670891, 0.101811161, 0.116251988], atol=1e-12)


def test_matches_schnetpack_reference_values(parse, realdata):
    """schnetpack's own parse of the same log (npz) agrees: forces (Eh/bohr) and dipole (a.u.)."""
    ref = np.load(realdata / "orca/schnetpack_orca4.0/test_orca_main_targets.npz")
    r = parse("schnetpack_orca4.0/test_orca.log")
    assert r.energy / HARTREE == pytest.approx(float(np.ravel(ref["energy"])[0]), abs=1e-9)
    np.testing.assert_allclose(r.forces / GRAD, np.asarray(ref["forces"]).reshape(4, 3), atol=1e-9)
    np.testing.assert_allclose(r.dipole / BOHR, np.ravel(ref["dipole_moment"]), atol=1e-9)
    # positions: schnetpack stores bohr
    np.testing.assert_allclose(r.positions / BOHR, np.asarray(ref["_positions"]).reshape(4, 3), atol=1e-6)
    assert r.numbers.tolist() == [1, 8, 8, 1]


def test_dipoles_and_charges(parse):
    r = parse("cclib_orca5.0_cpcm/water_hf_solvent_cpcm.log")
    np.testing.assert_allclose(r.dipole / BOHR, [0.0, 0.67938, 0.0], atol=1e-9)
    r = parse("nomad_orca3.0/CHO_geomopt_orca3.2985006.out")
    np.testing.assert_allclose(r.dipole / BOHR, [-0.78654, 0.0, 0.0], atol=1e-9)
    # MP2 EnGrad prints SCF, unrelaxed and relaxed dipoles; the last (relaxed MP2) one is taken
    r = parse("autode_orca4/tmp_orca.out")
    np.testing.assert_allclose(r.dipole / BOHR, [-0.18195, 0.20114, 0.10483], atol=1e-9)
    # Mulliken (default), Loewdin, Hirshfeld; charges sum to the total charge
    r = parse("schnetpack_orca4.0/test_orca.log")
    np.testing.assert_allclose(r.atomic_charges, [0.255336, -0.255336, -0.255337, 0.255336])
    np.testing.assert_allclose(r.charges_by_scheme["loewdin"], [0.149070, -0.149070, -0.149070, 0.149070])
    r = parse("autode_orca5/h2o_orca_v5_charges.out", charge_scheme="hirshfeld")
    np.testing.assert_allclose(r.atomic_charges, [-0.313189, 0.156594, 0.156594])
    assert r.charge_scheme == "hirshfeld"
    # unrestricted: "MULLIKEN ATOMIC CHARGES AND SPIN POPULATIONS"
    r = parse("nomad_orca3.0/BO_spinpol_orca3.2984863.out")
    np.testing.assert_allclose(r.atomic_charges, [-0.011430, 0.011430])
    r = parse("autode_orca4/tmp_orca.out")
    assert r.atomic_charges.sum() == pytest.approx(-1.0, abs=1e-5)


FAILED = [
    ("arc_failed/orca_GTOInt_error.log", common.ERROR, "GTOInt"),
    ("arc_failed/orca_mdci_error_3.log", common.ERROR, "MDCI"),
    ("arc_failed/orca_wavefunction_not_converge_error.log", common.SCF_NOT_CONVERGED, "not fully converged"),
    ("nomad_orca3.0/FeMgO_ci_orca3.2713636.out", common.SCF_NOT_CONVERGED, "SCF NOT CONVERGED AFTER 125"),
    ("arc_orca/orca_scf_blow_up_error.log", common.UNPHYSICAL, "below the physical bound"),
    ("arc_orca/orca6_example_truncated.out", common.WALLTIME, "TERMINATED NORMALLY"),
]


@pytest.mark.parametrize(("rel", "category", "text"), FAILED, ids=[f[0] for f in FAILED])
def test_failures_are_categorised(parse, rel, category, text):
    r = parse(rel)
    assert r.status == category
    assert text in r.message


def test_flagged_energies_are_still_read(parse):
    """The not-converged CC energy and the blown-up SCF energy are parsed, but the result is not ok."""
    r = parse("arc_failed/orca_wavefunction_not_converge_error.log")
    assert r.energy / HARTREE == pytest.approx(-609.155669143400, abs=1e-9)
    r = parse("arc_orca/orca_scf_blow_up_error.log")
    assert r.energy / HARTREE == pytest.approx(-20006124.303127218038, abs=1e-6)
    assert len(r.numbers) == 58
    r = parse("nomad_orca3.0/FeMgO_ci_orca3.2713636.out")
    assert r.energy / HARTREE == pytest.approx(-3921.207756836048, abs=1e-9)


def test_empty_and_missing_output(tmp_path):
    assert parse_orca_output("").status == common.MISSING_OUTPUT
    assert read_orca(tmp_path).status == common.MISSING_OUTPUT


@pytest.mark.parametrize(
    ("rel", "n", "energy", "first", "norm"),
    [
        (
            "opan_engrad/test_orca_v3.0.2.engrad",
            5,
            -40.451584615385,
            [-0.000001478294, 0.000002188830, -0.000000000358],
            0.0130192,
        ),
        (
            "opan_engrad/test_orca_v3.0.3.engrad",
            29,
            -622.263206897403,
            [-0.000017866779, 0.000009419738, 0.000008305436],
            0.000144472,
        ),
    ],
)
def test_engrad_files(realdata, rel, n, energy, first, norm):
    e, forces, numbers, _ = parse_engrad((realdata / "orca" / rel).read_text())
    assert e / HARTREE == pytest.approx(energy, abs=1e-12)
    assert forces.shape == (n, 3) and numbers.shape == (n,)
    np.testing.assert_allclose(-forces[0] / GRAD, first, atol=1e-15)
    assert np.linalg.norm(forces / GRAD) == pytest.approx(norm, abs=1e-6)


def test_engrad_coordinates_in_bohr(realdata):
    _, _, numbers, positions = parse_engrad(
        (realdata / "orca/opan_engrad/test_orca_v3.0.2.engrad").read_text()
    )
    assert numbers.tolist() == [6, 1, 1, 1, 1]
    # C-H distance 2.0598015 bohr = 1.09 Angstrom
    assert np.linalg.norm(positions[1] - positions[0]) == pytest.approx(2.0598015 * BOHR, abs=1e-9)
    assert 1.08 < np.linalg.norm(positions[1] - positions[0]) < 1.10


def test_read_orca_prefers_engrad(realdata, tmp_path):
    """read_orca combines the output (status, dipole, charges) with the engrad file (gradient digits)."""
    (tmp_path / "aiida.out").write_text((realdata / "orca/autode_orca4/h2_grad_orca.out").read_text())
    r = read_orca(tmp_path)
    assert r.ok and r.forces.shape == (2, 3)
    # an SP output without gradient is a failure for labelling (EnGrad was asked for)
    (tmp_path / "aiida.out").write_text((realdata / "orca/autode_orca4/H2_sp_orca.out").read_text())
    assert read_orca(tmp_path).status == common.MISSING_OUTPUT


def test_write_input_matches_real_input_layout(realdata):
    """The generated input has the structure of the real h2_grad_orca.inp (! line, * xyz c m, atoms, *)."""
    real = (realdata / "orca/autode_orca4/h2_grad_orca.inp").read_text()
    text = write_orca_input(
        [1, 1],
        np.array([[0, 0, 0], [1.0, 0, 0]]),
        0,
        1,
        keywords="EnGrad PBE0 RIJCOSX D3BJ def2-SVP AutoAux",
        blocks={"scf": {"MaxIter": 250}},
        maxcore=4000,
    )
    lines = text.splitlines()
    assert lines[0] == "! EnGrad PBE0 RIJCOSX D3BJ def2-SVP AutoAux" == real.splitlines()[0]
    assert "%scf" in lines and "  MaxIter 250" in lines and "%maxcore 4000" in lines
    assert lines[-4].split() == ["*", "xyz", "0", "1"] and lines[-1] == "*"
    assert [float(x) for x in lines[-2].split()[1:]] == [1.0, 0.0, 0.0]
    # EnGrad is added when missing, multiplicity/charge are written
    text = write_orca_input(
        [7, 1, 1, 1], np.zeros((4, 3)) + np.arange(4)[:, None], 1, 2, keywords="RI PBE def2-SVP"
    )
    assert text.startswith("! RI PBE def2-SVP EnGrad\n") and "* xyz 1 2" in text


@pytest.mark.parametrize("bad", ["PBE\n* xyz 0 1", "PBE %scf", "PBE; rm -rf /", ""])
def test_write_input_rejects_free_text(bad):
    with pytest.raises(ValueError, match="ORCA keyword"):
        write_orca_input([1, 1], np.eye(2, 3), 0, 1, keywords=bad)


def test_write_input_rejects_bad_blocks():
    with pytest.raises(ValueError, match="block"):
        write_orca_input([1, 1], np.eye(2, 3), 0, 1, blocks={"scf": {"MaxIter": "5\nend\n%pal"}})
