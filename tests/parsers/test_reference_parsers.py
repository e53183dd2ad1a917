"""Reference parsers on real outputs: a CalcJobNode whose ``retrieved`` folder holds files from shared/realdata,
parsed with ``ParserFactory(...).parse_from_node`` (no job is run)."""

from __future__ import annotations

import numpy as np
import pytest
from aiida import orm
from aiida.common.links import LinkType
from aiida.plugins import ParserFactory

from aiida_mlpes.core.ragged import RaggedArrays
from aiida_mlpes.core.reference import common
from aiida_mlpes.core.reference.gaussian import parse_gaussian_output
from aiida_mlpes.core.reference.xtb import parse_gradient_file
from aiida_mlpes.core.units import BOHR, HARTREE
from aiida_mlpes.data.dataset import PESDataset


@pytest.fixture
def calc_node(aiida_localhost, tmp_path):
    """A stored CalcJobNode of ``entry_point`` with the given inputs and a retrieved folder of ``files``."""

    def factory(
        entry_point: str,
        structures: RaggedArrays,
        files: dict[str, str | bytes],
        parameters=None,
        charge: int = 0,
        exit_status: int | None = None,
    ):
        node = orm.CalcJobNode(computer=aiida_localhost, process_type=f"aiida.calculations:{entry_point}")
        node.set_option("resources", {"num_machines": 1, "num_mpiprocs_per_machine": 1})
        node.set_option("parser_name", entry_point)
        inputs = {
            "structures": PESDataset.from_arrays(structures).store(),
            "parameters": orm.Dict(parameters or {}).store(),
            "charge": orm.Int(charge).store(),
            "multiplicity": orm.Int(1).store(),
        }
        for label, data in inputs.items():
            node.base.links.add_incoming(data, link_type=LinkType.INPUT_CALC, link_label=label)
        node.store()
        if exit_status is not None:
            node.set_exit_status(exit_status)
        folder = tmp_path / "retrieved"
        folder.mkdir()
        for name, content in files.items():
            (folder / name).write_bytes(content if isinstance(content, bytes) else content.encode())
        retrieved = orm.FolderData(tree=folder)
        retrieved.base.links.add_incoming(node, link_type=LinkType.CREATE, link_label="retrieved")
        retrieved.store()
        return node

    return factory


def molecule_arrays(numbers, positions) -> RaggedArrays:
    return RaggedArrays(
        n_atoms=[len(numbers)], atomic_numbers=numbers, positions=np.asarray(positions, float)
    )


def test_xtb_parser_on_real_files(calc_node, realdata):
    """The real xtb 6.6.1 divinylbenzene files (stdout, gradient) as one structure of a job."""
    folder = realdata / "xtb/cclib_xtb6.6.1/dvb_opt"
    _, _forces, numbers, positions = parse_gradient_file((folder / "gradient").read_text())
    files = {
        "s00000.out": (folder / "dvb_opt.out").read_text(),
        "s00000.gradient": (folder / "gradient").read_text(),
        "s00000.err": "normal termination of xtb\n",
    }
    node = calc_node("mlpes.xtb", molecule_arrays(numbers, positions), files)
    results, calcfunction = ParserFactory("mlpes.xtb").parse_from_node(node, store_provenance=False)
    assert calcfunction.is_finished_ok, calcfunction.exit_message
    labelled = results["dataset"].get_arrays()
    assert labelled.energy[0] / HARTREE == pytest.approx(-26.43824246835, abs=1e-11)
    assert np.linalg.norm(labelled.forces * BOHR / HARTREE) == pytest.approx(0.00059679, abs=5e-9)
    assert labelled.source[0] == node.uuid and labelled.dipole.shape == (1, 3)


def test_orca_parser_on_real_files_and_not_run(calc_node, realdata):
    """H2 EnGrad output for structure 0; structure 1 has no file after it: 'not_run', exit 400."""
    h2 = molecule_arrays([1, 1], [[0, 0, 0], [1, 0, 0]])
    files = {"s00000.out": (realdata / "orca/autode_orca4/h2_grad_orca.out").read_text()}
    node = calc_node("mlpes.orca", RaggedArrays.concatenate([h2, h2]), files)
    results, calcfunction = ParserFactory("mlpes.orca").parse_from_node(node, store_provenance=False)
    assert calcfunction.exit_status == 400
    assert results["failures"].get_dict() == {
        "1": {"category": common.NOT_RUN, "message": "never started (the job stopped before)"}
    }
    assert results["dataset"].get_arrays().energy[0] / HARTREE == pytest.approx(-1.139851613272, abs=1e-9)


def test_scheduler_walltime_is_kept(calc_node, realdata):
    """If the scheduler reported walltime (120), the job is 400 even if every started structure finished."""
    h2 = molecule_arrays([1, 1], [[0, 0, 0], [1, 0, 0]])
    files = {"s00000.out": (realdata / "orca/autode_orca4/h2_grad_orca.out").read_text()}
    node = calc_node("mlpes.orca", h2, files, exit_status=120)
    _, calcfunction = ParserFactory("mlpes.orca").parse_from_node(node, store_provenance=False)
    assert calcfunction.exit_status == 400


@pytest.mark.parametrize(
    ("rel", "exit_status", "category"),
    [
        ("gaussian/arc_g16/l9999_ub3lyp_opt_error.out", 310, common.ERROR),
        ("gaussian/arc_g09/inaccurate_quadrature_convergence_failure.out", 410, common.SCF_NOT_CONVERGED),
        ("gaussian/cclib_g16/water_mp2.log", 302, common.MISSING_OUTPUT),
    ],
)
def test_gaussian_failures_map_to_exit_codes(calc_node, realdata, rel, exit_status, category):
    r = parse_gaussian_output((realdata / "gaussian/cclib_g16/dvb_ir.out").read_text())
    node = calc_node(
        "mlpes.gaussian",
        molecule_arrays(r.numbers, r.positions),
        {"s00000.log": (realdata / rel).read_text(errors="replace")},
    )
    results, calcfunction = ParserFactory("mlpes.gaussian").parse_from_node(node, store_provenance=False)
    assert calcfunction.exit_status == exit_status
    assert results["failures"]["0"]["category"] == category
    assert "dataset" not in results


def test_orca_unphysical_energy_exit_code(calc_node, realdata):
    """The SCF blow-up (-2e7 Eh) of ARC's C28H30 run is rejected: exit 320."""
    from aiida_mlpes.core.reference.orca import parse_orca_output

    text = (realdata / "orca/arc_orca/orca_scf_blow_up_error.log").read_text()
    r = parse_orca_output(text)
    node = calc_node("mlpes.orca", molecule_arrays(r.numbers, r.positions), {"s00000.out": text})
    results, calcfunction = ParserFactory("mlpes.orca").parse_from_node(node, store_provenance=False)
    assert calcfunction.exit_status == 320
    assert "physical bound" in results["failures"]["0"]["message"]
