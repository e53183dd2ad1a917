"""Every ``aiida-mlpes dataset`` and ``aiida-mlpes model`` command through click's CliRunner on the test
profile: success, a PK that does not exist, and a node of the wrong type (one line, exit 1, no traceback).

The provenance graph is made by real processes: two xtb CalcJobs label distorted NH3, ``merge_datasets``
joins their outputs, and a tiny TrainCalculation trains a model on the merged data.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from aiida import orm
from aiida.engine import run_get_node
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write
from click.testing import CliRunner

from aiida_mlpes.calculations.merge import merge_datasets
from aiida_mlpes.calculations.train import TrainCalculation
from aiida_mlpes.calculations.xtb import XtbCalculation
from aiida_mlpes.cli import cli
from aiida_mlpes.core.models import ModelConfig, build_model, load_model
from aiida_mlpes.core.ragged import RaggedArrays
from aiida_mlpes.data.dataset import PESDataset
from aiida_mlpes.data.model import PESModel

TINY = {"n_features": 8, "n_rbf": 8, "n_blocks": 1, "cutoff": 4.0}
FAST = {"batch_size": 8, "progress_bar": False, "device": "cpu", "threads": 1, "max_epochs": 2}
MISSING_PK = "987654321"
#: The graph is built once per test session (the test profile keeps it); later tests reuse its PKs.
_GRAPH: dict[str, int] = {}


def distorted(name: str, n: int, seed: int) -> RaggedArrays:
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        atoms = molecule(name)
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        images.append(atoms)
    return RaggedArrays.from_atoms(images)


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=True)


def assert_ok(result) -> str:
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def assert_one_line_error(result, *fragments: str) -> None:
    """Exit 1 with one ``Error: ...`` line naming the problem, and no traceback."""
    assert result.exit_code == 1, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def graph(aiida_code_installed, require_xtb) -> dict[str, int]:
    if _GRAPH:
        return _GRAPH
    xtb = aiida_code_installed(
        filepath_executable=str(Path(require_xtb).resolve()), default_calc_job_plugin="mlpes.xtb"
    )
    runner = shutil.which("aiida-mlpes-run")
    assert runner, "aiida-mlpes-run is not on PATH: install the package (pip install -e .)"
    code = aiida_code_installed(filepath_executable=runner, default_calc_job_plugin="mlpes.train")
    options = {"environment_variables": {"OMP_NUM_THREADS": "1"}, "withmpi": False}
    labelled = []  # 2 x 10 structures: a validation set of 1 gives a NaN r2 that AiiDA cannot store
    for seed, keep in ((0, True), (1, False)):  # raw outputs kept for one job only: its version is known
        structures = PESDataset.from_arrays(distorted("NH3", 10, seed)).store()
        results, node = run_get_node(
            XtbCalculation,
            code=xtb,
            structures=structures,
            keep_raw_outputs=orm.Bool(keep),
            metadata={"options": options},
        )
        assert node.is_finished_ok, node.exit_message
        labelled.append(results["dataset"])
    merged = merge_datasets(dataset_0=labelled[0], dataset_1=labelled[1])["dataset"]
    settings = {"model": TINY, "training": FAST}
    results, train = run_get_node(TrainCalculation, code=code, dataset=merged, settings=orm.Dict(settings))
    assert train.is_finished_ok, train.exit_message
    torch_model = build_model(ModelConfig(elements=[1, 8], **TINY))
    imported = PESModel.from_model(torch_model).store()
    _GRAPH.update(
        model=results["model"].pk,
        train=train.pk,
        merged=merged.pk,
        labelled_0=labelled[0].pk,
        labelled_1=labelled[1].pk,
        imported_model=imported.pk,
    )
    return _GRAPH


def test_model_list_and_show(graph):
    listing = assert_ok(invoke("model", "list"))
    rows = {line.split()[0]: line for line in listing.splitlines()[1:]}
    assert f"TrainCalculation<{graph['train']}>" in rows[str(graph["model"])]
    assert "import" in rows[str(graph["imported_model"])] and "H,O" in rows[str(graph["imported_model"])]
    shown = assert_ok(invoke("model", "show", str(graph["model"])))
    assert "physnet" in shown and "H,N" in shown.replace("'", "").replace(" ", "").replace("[", "")
    assert f"PESDataset<{graph['merged']}> (20 conformations)" in shown
    assert "torch" in shown and "valid MAE" in shown
    assert "created by       import" in assert_ok(invoke("model", "show", str(graph["imported_model"])))


def test_model_export(graph, tmp_path):
    target = tmp_path / "model.pt"
    out = assert_ok(invoke("model", "export", str(graph["model"]), str(target)))
    assert str(target) in out
    model = load_model(target)
    assert model.config.elements == [1, 7] and model.config.n_features == 8
    assert_one_line_error(invoke("model", "export", str(graph["model"]), str(target)), "exists")
    assert_ok(invoke("model", "export", str(graph["model"]), str(target), "--force"))


def test_model_export_torchscript(graph, tmp_path):
    """--torchscript: the molecule from the training data by default, or from --molecule; OpenMM units."""
    import torch

    from aiida_mlpes.core.calculator import MLPESCalculator
    from aiida_mlpes.core.models.export import load_exported

    model_file = tmp_path / "model.pt"
    assert_ok(invoke("model", "export", str(graph["model"]), str(model_file)))
    target = tmp_path / "nh3.pt"
    out = assert_ok(invoke("model", "export", str(graph["model"]), str(target), "--torchscript"))
    assert "TorchScript for H3N" in out and "eV/Angstrom" in out
    atoms = molecule("NH3")
    atoms.positions[0] += 0.05
    atoms.calc = MLPESCalculator(model_file)
    energy, forces = load_exported(target)(torch.as_tensor(atoms.positions))
    assert float(energy) == pytest.approx(atoms.get_potential_energy(), abs=1e-4)  # float32 model
    assert np.abs(forces.numpy() - atoms.get_forces()).max() < 1e-3

    xyz = tmp_path / "nh3.xyz"
    write(xyz, molecule("NH3"))
    openmm_file = tmp_path / "nh3_openmm.pt"
    args = ["--torchscript", "--molecule", str(xyz), "--units", "openmm"]
    out = assert_ok(invoke("model", "export", str(graph["model"]), str(openmm_file), *args))
    assert "kJ/mol" in out and load_exported(openmm_file).units == "openmm"

    water = tmp_path / "water.xyz"
    write(water, molecule("H2O"))
    bad = invoke(
        "model",
        "export",
        str(graph["model"]),
        str(tmp_path / "w.pt"),
        "--torchscript",
        "--molecule",
        str(water),
    )
    assert_one_line_error(bad, "O (Z=8)", "training elements")
    imported = invoke(
        "model", "export", str(graph["imported_model"]), str(tmp_path / "i.pt"), "--torchscript"
    )
    assert_one_line_error(imported, "no training dataset", "--molecule")


def test_model_lineage_from_the_provenance_graph(graph):
    out = assert_ok(invoke("model", "lineage", str(graph["model"])))
    assert f"trained by: TrainCalculation<{graph['train']}>" in out and "(finished ok)" in out
    assert "packages:" in out and "torch" in out and "aiida-mlpes" in out
    merged_line = next(line for line in out.splitlines() if f"PESDataset<{graph['merged']}>" in line)
    assert (
        "20 conformations" in merged_line
        and "merge_datasets<" in merged_line
        and "of 2 datasets" in merged_line
    )
    assert "reference calculations: 2" in out
    xtb_lines = [line for line in out.splitlines() if " x xtb " in line]
    assert len(xtb_lines) == 2 and all("GFN2-xTB" in line and "10 structures" in line for line in xtb_lines)
    versions = sorted(line.split("version ")[1].split()[0] for line in xtb_lines)
    assert versions[1] == "unknown" and versions[0][0].isdigit()  # e.g. 6.6.1 from the kept output
    imported = assert_ok(invoke("model", "lineage", str(graph["imported_model"])))
    assert "not a mlpes.train run: imported" in imported


def test_model_retrain_from_stored_inputs(graph):
    out = assert_ok(invoke("model", "retrain", str(graph["model"]), "--epochs", "3"))
    new_pk = int(out.split("new PESModel<")[1].split(">")[0])
    new = orm.load_node(new_pk)
    assert isinstance(new, PESModel) and new_pk != graph["model"]
    calc = new.creator
    assert calc.pk != graph["train"] and calc.inputs.dataset.pk == graph["merged"]
    assert calc.outputs.result["epochs"] == 3
    assert calc.inputs.settings["model"] == TINY
    assert_one_line_error(
        invoke("model", "retrain", str(graph["imported_model"])), "not made by a mlpes.train run"
    )
    usage = invoke("model", "retrain", str(graph["model"]), "--epochs", "0")
    assert usage.exit_code == 2 and "Invalid value for '--epochs'" in usage.output


def test_model_retrain_submit_hands_the_builder_to_the_daemon(graph, monkeypatch):
    """--submit goes through aiida.engine.submit (captured here: the test profile runs no daemon)."""
    import aiida.engine

    submitted = []

    def fake_submit(builder, **kwargs):
        submitted.append(builder)
        return orm.load_node(graph["train"])  # any process node: the command prints its PK

    monkeypatch.setattr(aiida.engine, "submit", fake_submit)
    out = assert_ok(invoke("model", "retrain", str(graph["model"]), "--epochs", "4", "--submit"))
    assert f"Submitted TrainCalculation<{graph['train']}>" in out
    (builder,) = submitted
    assert builder.settings["training"]["max_epochs"] == 4 and builder.dataset.pk == graph["merged"]
    assert builder.code.pk == orm.load_node(graph["train"]).inputs.code.pk


@pytest.mark.parametrize(
    "command",
    [
        ("model", "show"),
        ("model", "lineage"),
        ("model", "retrain"),
        ("model", "export", "{pk}", "{tmp}/out.pt"),
        ("dataset", "show"),
        ("dataset", "export", "{pk}", "{tmp}/out.xyz"),
        ("dataset", "merge"),
    ],
)
def test_bad_pk_and_wrong_node_type(graph, tmp_path, command):
    def args(pk):
        if len(command) == 2:
            return [*command, pk]
        return [part.format(pk=pk, tmp=tmp_path) for part in command]

    assert_one_line_error(invoke(*args(MISSING_PK)), f"no node with PK, UUID or label '{MISSING_PK}'")
    if command[0] == "model":
        wrong, expected = graph["merged"], "is a PESDataset, not a PESModel"
    else:
        wrong, expected = graph["model"], "is a PESModel, not a PESDataset"
    assert_one_line_error(invoke(*args(str(wrong))), expected)
    assert_one_line_error(invoke(*args(str(graph["train"]))), "is a CalcJobNode, not a")
    assert not any(
        p.is_file() for p in tmp_path.iterdir()
    )  # nothing exported (job scratch folders may live here)


def test_dataset_commands(graph, tmp_path):
    source = tmp_path / "water.xyz"
    arrays = distorted("H2O", 3, 5)
    images = [arrays.to_atoms(k) for k in range(len(arrays))]
    for k, atoms in enumerate(images):
        atoms.calc = SinglePointCalculator(atoms, energy=-10.0 - k, forces=np.zeros((3, 3)))
    write(source, images, format="extxyz")
    out = assert_ok(invoke("dataset", "import", str(source), "--level-of-theory", "toy", "--label", "water"))
    pk = out.split("PESDataset<")[1].split(">")[0]
    assert "3 conformations" in out
    shown = assert_ok(invoke("dataset", "show", pk))
    assert "toy" in shown and "created by       import" in shown
    listing = assert_ok(invoke("dataset", "list"))
    assert any(line.split()[0] == pk and "water" in line for line in listing.splitlines()[1:])
    exported = tmp_path / "back.xyz"
    assert_ok(invoke("dataset", "export", pk, str(exported)))
    from ase.io import read

    back = read(exported, index=":")
    assert [a.get_potential_energy() for a in back] == pytest.approx([-10.0, -11.0, -12.0])
    merged = assert_ok(invoke("dataset", "merge", str(graph["labelled_0"]), str(graph["labelled_1"])))
    assert "Merged into PESDataset<" in merged
    assert_one_line_error(invoke("dataset", "merge", pk, str(graph["labelled_0"])), "level")
    missing = invoke("dataset", "import", str(tmp_path / "none.xyz"))
    assert missing.exit_code == 2 and "does not exist" in missing.output and "Traceback" not in missing.output
