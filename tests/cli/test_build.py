"""``aiida-mlpes build`` through click's CliRunner on the test profile: bad inputs are one line, exit 1 and no
process; the reference mapping; the report; and one real run of the loop on H2 (slow)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from aiida import orm
from ase import Atoms
from ase.build import molecule
from ase.io import write
from click.testing import CliRunner

from aiida_mlpes.build_report import eta, iteration_line, record_lines
from aiida_mlpes.cli import cli
from aiida_mlpes.cli_build import make_builder, pyscf_parameters
from tests.cli.test_commands import assert_one_line_error

#: The loop on H2 in a few minutes (as tests/workflows/test_construct_pes.py::planted_hole_builder).
TINY = {
    "settings": {
        "max_iterations": 2,
        "min_iterations": 1,
        "committee_size": 2,
        "n_candidates": 6,
        "max_holes_labelled": 12,
    },
    "sample": {
        "parameters": {"n_samples": 20, "temperature": 30.0, "optimize": True, "low_temperature_samples": 0},
        "seed": 3,
    },
    "train": {
        "model": {"n_features": 16, "n_rbf": 16, "n_blocks": 1, "cutoff": 4.0, "predict_charges": False},
        "training": {"max_epochs": 150, "batch_size": 8, "threads": 1, "early_stopping_patience": None},
        "split": {"fractions": [0.6, 0.2, 0.2], "seed": 0},  # a fixed test set of a few structures
    },
    "characterize": {
        "tasks": {
            "optimize": {"fmax": 0.005},
            "frequencies": {},
            "dmc": {"nwalkers": 200, "nsteps": 300, "eqsteps": 100, "seed": 0, "uncertainty_threshold": 0.1},
            "explore": {"md_steps": 60},
        }
    },
}


@pytest.fixture
def codes(aiida_code_installed, require_xtb):
    """The codes `aiida-mlpes setup` makes, under their default labels on the test profile's localhost."""
    runner = str(Path(shutil.which("aiida-mlpes-run")).resolve())
    return {
        "runner": aiida_code_installed(label="aiida-mlpes-run", filepath_executable=runner),
        "xtb": aiida_code_installed(
            label="xtb",
            filepath_executable=str(Path(require_xtb).resolve()),
            default_calc_job_plugin="mlpes.xtb",
        ),
    }


def n_processes() -> int:
    return orm.QueryBuilder().append(orm.ProcessNode).count()


def xyz(path: Path, atoms: Atoms) -> str:
    write(path, atoms)
    return str(path)


def text(path: Path, content: str) -> str:
    path.write_text(content)
    return str(path)


def build(*args: str):
    return CliRunner().invoke(cli, ["build", *args], catch_exceptions=True)


@pytest.mark.parametrize(
    ("make", "args", "fragments"),
    [
        (lambda d: str(d / "missing.xyz"), [], ["missing.xyz: no such file"]),
        (
            lambda d: text(d / "bad.xyz", "3\nwater\nO 0 0\n"),
            [],
            ["ASE cannot read"],
        ),
        (
            lambda d: xyz(d / "h2o.xyz", molecule("H2O")),
            ["--protocol", "quick"],
            ["protocol 'quick' unknown"],
        ),
        (
            lambda d: xyz(d / "h2o.xyz", molecule("H2O")),
            ["--reference", "vasp"],
            ["--reference 'vasp' unknown"],
        ),
        (
            lambda d: xyz(d / "h2o.xyz", molecule("H2O")),
            ["--multiplicity", "2"],
            ["h2o.xyz", "10 electrons (even)", "multiplicity 2"],
        ),
        (lambda d: xyz(d / "h2o.xyz", molecule("H2O")), ["--charge", "1"], ["9 electrons (odd)"]),
        (
            lambda d: xyz(d / "uo.xyz", Atoms("UO", positions=[(0, 0, 0), (0, 0, 1.8)])),
            [],
            ["uo.xyz", "atomic number 92", "Z <= 86"],
        ),
        (lambda d: xyz(d / "h2o.xyz", molecule("H2O")), ["--reference", "orca"], ["needs --code-reference"]),
        (
            lambda d: xyz(d / "h2o.xyz", molecule("H2O")),
            ["--reference", "gaussian", "--code-reference", "xtb@localhost"],
            ["default plugin 'mlpes.xtb', not 'mlpes.gaussian'"],
        ),
        (lambda d: xyz(d / "h2o.xyz", molecule("H2O")), ["--method", "GFN9-xTB"], ["reference: parameters"]),
        (
            lambda d: xyz(d / "h2o.xyz", molecule("H2O")),
            ["--ts", "TS"],  # replaced below by an NH3 file
            ["same atoms in the same order"],
        ),
    ],
)
def test_bad_input_is_one_line_and_runs_nothing(codes, tmp_path, make, args, fragments):
    args = [str(tmp_path / "ts.xyz") if a == "TS" else a for a in args]
    if "--ts" in args:
        xyz(tmp_path / "ts.xyz", molecule("NH3"))
    before = n_processes()
    assert_one_line_error(build(make(tmp_path), *args), *fragments)
    assert n_processes() == before


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"setings": {}}, "overrides: unknown keys ['setings']"),
        ({"settings": {"max_iteration": 3}}, "settings.max_iteration: Extra inputs are not permitted"),
        ({"train": {"training": {"max_epoch": 5}}}, "unknown training settings ['max_epoch']"),
        ({"reference": {"paramters": {}}}, "overrides.reference: unknown keys ['paramters']"),
        ({"settings": {"committee_size": 1}}, "settings.committee_size"),
    ],
)
@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_unknown_or_bad_override_is_named(codes, tmp_path, overrides, fragment, suffix):
    import json

    path = tmp_path / f"overrides{suffix}"
    path.write_text(json.dumps(overrides) if suffix == ".json" else yaml.safe_dump(overrides))
    before = n_processes()
    result = build(xyz(tmp_path / "h2o.xyz", molecule("H2O")), "--overrides", str(path))
    assert_one_line_error(result, fragment)
    assert n_processes() == before


def test_unparsable_overrides_file(codes, tmp_path):
    (tmp_path / "o.yaml").write_text("settings: [unclosed\n")
    result = build(xyz(tmp_path / "h2o.xyz", molecule("H2O")), "--overrides", str(tmp_path / "o.yaml"))
    assert_one_line_error(result, "o.yaml: cannot parse it")


def test_reference_mapping(codes):
    h2o = molecule("H2O")
    args = {
        "ts_atoms": None,
        "protocol": "fast",
        "charge": 0,
        "multiplicity": 1,
        "overrides": {},
        "code_reference": None,
        "code_runner": "aiida-mlpes-run@localhost",
        "paths": ("h2o.xyz", None),
    }
    xtb = make_builder(h2o, name="xtb", method=None, **args)
    assert xtb.reference.code.pk == codes["xtb"].pk and xtb.reference.parameters["method"] == "GFN2-xTB"
    assert xtb.reference.driver_code.pk == codes["runner"].pk  # one process runs all xtb calls of a job
    gfn1 = make_builder(h2o, name="xtb", method="GFN1-xTB", **args)
    assert gfn1.reference.parameters["method"] == "GFN1-xTB"
    pyscf = make_builder(h2o, name="pyscf", method=None, **args)
    assert pyscf.reference.code.full_label == "aiida-mlpes-ase@localhost"  # made on the fly from the runner
    assert pyscf.reference.code.default_calc_job_plugin == "mlpes.ase"
    parameters = pyscf.reference.parameters.get_dict()
    assert (parameters["calculator"], parameters["dispersion"], parameters["level_of_theory"]) == (
        "pyscf",
        "d3bj",
        "PBE-D3BJ/def2-SVP",
    )
    tblite = make_builder(h2o, name="tblite", method=None, **args)
    assert tblite.reference.parameters["calculator"] == "tblite"
    assert tblite.reference.code.pk == pyscf.reference.code.pk  # reused, not duplicated
    assert (
        make_builder(h2o, name="tblite", method="GFN1-xTB", **args).reference.parameters["method"]
        == "GFN1-xTB"
    )


def test_pyscf_method_strings():
    assert pyscf_parameters("B3LYP-D3BJ/def2-TZVP") == {
        "calculator": "pyscf",
        "method": "B3LYP",
        "basis": "def2-tzvp",
        "dispersion": "d3bj",
        "level_of_theory": "B3LYP-D3BJ/def2-TZVP",
    }
    plain = pyscf_parameters("PBE0")
    assert (plain["basis"], plain["dispersion"], plain["level_of_theory"]) == (
        "def2-svp",
        None,
        "PBE0/def2-SVP",
    )


def record(k: int, converged: bool = False) -> dict:
    return {
        "iteration": k,
        "converged": converged,
        "holes": {"found": 7, "labelled": 5, "confirmed": 2},
        "new_labels": {"n": 20, "energy_mae": 0.0042, "forces_mae": 0.051},
        "test": {"energy": {"mae": 0.0015}, "forces": {"mae": 0.032}},
        "frequencies": [1600.0, 1000.0],
        "barrier": 0.25,
        "validation": {
            "model_frequencies": [1600.0, 1000.0],
            "reference_frequencies": [990.0, 1612.0],
            "frequency_rmse": 11.0,
            "reference_barrier": 0.245,
            "barrier_error": 0.005,
        },
        "criteria": {
            "dmc": {"passed": False},
            "new_labels": {"passed": True},
            "stability": {"passed": False, "reason": "no previous iteration to compare with"},
            "reference": {"passed": False, "tolerance": {"frequency_rmse": 10.0, "barrier_error": 0.01}},
        },
    }


def test_iteration_line_and_eta():
    assert eta([], 1, 4) is None and eta([100.0, 200.0], 2, 4) == 300.0
    line = iteration_line(record(2), 125.0, 4, eta([100.0, 150.0], 2, 4))
    assert "iteration 2/4 done in 2m05s" in line
    assert "criteria 1/4 passed (failing: dmc, stability, reference)" in line
    assert (
        "holes 7 found/5 labelled/2 confirmed" in line and "ETA <= 4m10s (2 more iterations at most)" in line
    )
    assert "ETA" not in iteration_line(record(2, converged=True), 1.0, 4, 10.0)


def test_record_lines_put_model_beside_reference():
    lines = record_lines(record(3))
    text = "\n".join(lines)
    assert "fixed test set MAE 1.50 meV, 0.0320 eV/Angstrom" in text
    assert "new labels before training (20) MAE 4.20 meV, 0.0510 eV/Angstrom" in text
    model = next(line for line in lines if line.strip().startswith("model"))
    reference = next(line for line in lines if line.strip().startswith("reference"))
    assert model.split()[1:] == ["1000.0", "1600.0"] and reference.split()[1:] == ["990.0", "1612.0"]
    assert "RMSE 11.0 cm^-1 (tolerance 10.0)" in text
    assert (
        "Barrier: model 0.2500 eV, reference 0.2450 eV at the model's geometries, difference +0.0050 eV"
        in text
    )
    assert "stability FAIL (no previous iteration to compare with)" in text
    no_reference = record(1)
    no_reference["validation"] = {"problems": ["frequencies: missing labels"]}
    assert "reference: not computed (frequencies: missing labels)" in "\n".join(record_lines(no_reference))


def test_report_of_a_missing_or_wrong_node():
    assert_one_line_error(CliRunner().invoke(cli, ["report", "987654321"]), "no node with PK")
    number = orm.Int(3).store()
    assert_one_line_error(
        CliRunner().invoke(cli, ["report", str(number.pk)]), "is a Int, not a ConstructPESWorkChain"
    )


@pytest.mark.slow
def test_build_runs_the_loop_and_reports(codes, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "h2.xyz", Atoms("H2", positions=[(0, 0, 0), (0, 0, 0.74)]))
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    result = build("h2.xyz", "--reference", "xtb", "--protocol", "fast", "--overrides", "tiny.yaml")
    out = result.output
    print(out)  # shown when an assertion fails
    assert "Traceback" not in out, out
    # live progress: the work chain's reports with the iteration, then a line per finished iteration
    assert "| initial data] sampling structures around the molecule" in out
    assert "| iteration 1/2] iteration 1: training a committee of 2" in out
    assert "iteration 1/2 done in" in out and "criteria " in out and "ETA <= " in out
    # the report
    status = next(line for line in out.splitlines() if line.startswith("ConstructPESWorkChain<"))
    assert ("exit status 0" in status) == (result.exit_code == 0), out
    assert "exit status 0" in status or "exit status 410" in status, out
    assert "a committee of 2; export it: aiida-mlpes model export" in out
    assert "Errors: fixed test set MAE" in out and "new labels before training" in out
    model = next(line for line in out.splitlines() if line.startswith("  model "))
    reference = next(line for line in out.splitlines() if line.startswith("  reference "))
    assert len(model.split()) == len(reference.split()) == 2  # H2: one stretch, beside xtb's
    assert abs(float(model.split()[1]) - float(reference.split()[1])) < 500
    assert "Convergence plot: h2_convergence.png" in out
    assert (tmp_path / "h2_convergence.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the same report later, from the PK (what `build --submit` points to)
    pk = status.split("<", 1)[1].split(">", 1)[0]
    again = CliRunner().invoke(cli, ["report", pk])
    assert again.exit_code == 0, again.output
    assert status in again.output and "iteration 1/2 done in" in again.output
    assert next(line for line in again.output.splitlines() if line.startswith("  model ")) == model


@pytest.mark.slow
def test_build_runs_the_nh3_demo_on_the_fast_protocol(codes, tmp_path, monkeypatch):
    """The README demo through the CLI: NH3 with its planar TS guess, GFN2-xTB (tblite), protocol fast as it
    is except for one iteration (the demo's full run is CI's first command). Every stage runs for real:
    sampling around the minimum and the TS, labelling, a committee, characterization with TS and DMC,
    validation against the reference, the report."""
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "nh3.xyz", molecule("NH3"))
    planar = Atoms("NH3", positions=[(0, 0, 0), (1.0, 0, 0), (-0.5, 0.866, 0), (-0.5, -0.866, 0)])
    write(tmp_path / "planar.xyz", planar)
    (tmp_path / "one.yaml").write_text(
        yaml.safe_dump({"settings": {"max_iterations": 1, "min_iterations": 1}})
    )
    args = ["nh3.xyz", "--ts", "planar.xyz", "--reference", "tblite", "--protocol", "fast"]
    result = build(*args, "--overrides", "one.yaml")
    out = result.output
    print(out)  # shown when an assertion fails
    assert "Traceback" not in out, out
    assert "sampling structures around the molecule and the transition state" in out
    assert "| iteration 1/1] iteration 1: training a committee of 3" in out
    status = next(line for line in out.splitlines() if line.startswith("ConstructPESWorkChain<"))
    assert "exit status 0" in status or "exit status 410" in status, out
    model = next(line for line in out.splitlines() if line.startswith("  model ")).split()[1:]
    reference = next(line for line in out.splitlines() if line.startswith("  reference ")).split()[1:]
    assert len(model) == len(reference) == 6  # NH3: 3N - 6 modes, the model's beside GFN2-xTB's
    # one iteration of the fast protocol already puts each within 5% of the reference (umbrella ~1160 cm^-1)
    for ours, theirs in zip(model, reference, strict=True):
        assert abs(float(ours) / float(theirs) - 1) < 0.05, (model, reference)
    barrier = next(line for line in out.splitlines() if line.startswith("Barrier: model "))
    model_barrier = float(barrier.split()[2])
    assert 0.15 < model_barrier < 0.4, barrier  # GFN2-xTB's inversion barrier is 0.265 eV
    assert "Convergence plot: nh3_convergence.png" in out
