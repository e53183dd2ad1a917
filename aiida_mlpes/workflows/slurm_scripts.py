"""What ``workflows/orca_slurm.py`` and ``workflows/gaussian_slurm.py`` share: scheduler options per stage, the
builders of ConstructPESWorkChain and ReferenceWorkChain, the command line and the submission. Each script keeps
only its set-up values and how its program takes cores and memory (``reference_inputs``)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiida import orm
from aiida.engine import run_get_node, submit
from ase.build import molecule

from aiida_mlpes.data.dataset import PESDataset
from aiida_mlpes.workflows.construct_pes import ConstructPESWorkChain
from aiida_mlpes.workflows.reference import ReferenceWorkChain

#: A program's protocol overrides and its jobs' scheduler options, from the parsed command line.
ReferenceInputs = Callable[[argparse.Namespace], tuple[dict[str, Any], dict[str, Any]]]


@dataclass(frozen=True)
class SetUp:
    """A script's defaults: the program's name and code flag, and the user's cluster values."""

    program: str  #: e.g. "ORCA"
    flag: str  #: command-line option of the code label, e.g. "orca"
    code: str
    runner: str
    queue: str
    account: str
    cores: int
    memory_mb: int
    walltime_hours: float
    molecule: str
    protocol: str


def slurm_options(
    cores: int, memory_mb: int, hours: float, queue: str, account: str, mpi: bool
) -> dict[str, Any]:
    """``metadata.options`` of one job: ``cores`` as SLURM tasks (``mpi``, for programs that start their own
    MPI ranks such as ORCA) or as CPUs of one task (threads), ``memory_mb`` for the job, ``hours`` of walltime."""
    resources = {"num_machines": 1, "num_mpiprocs_per_machine": 1}
    if mpi:
        resources["num_mpiprocs_per_machine"] = cores  # the program's mpirun starts `cores` ranks
    else:
        resources["num_cores_per_mpiproc"] = cores  # one process with `cores` threads (--cpus-per-task)
    options: dict[str, Any] = {
        "resources": resources,
        "max_wallclock_seconds": int(hours * 3600),
        "max_memory_kb": int(memory_mb * 1024),
        "withmpi": False,  # the program launches mpirun itself (if at all); aiida-mlpes-run is one process
    }
    if queue:
        options["queue_name"] = queue
    if account:
        options["account"] = account
    return options


def labelling_builder(
    code: orm.AbstractCode, dataset: PESDataset, args: argparse.Namespace, reference_inputs: ReferenceInputs
):
    """A ReferenceWorkChain labelling every conformation of ``dataset`` with ``code`` on the cluster."""
    overrides, options = reference_inputs(args)
    return ReferenceWorkChain.get_builder_from_protocol(
        code, dataset, protocol=args.reference_protocol, overrides=overrides, options=options
    )


def construct_pes_builder(
    code: orm.AbstractCode,
    runner: orm.AbstractCode,
    structure: orm.StructureData,
    args: argparse.Namespace,
    reference_inputs: ReferenceInputs,
):
    """The loop for ``structure`` labelled by ``code``, each stage with its own scheduler options."""
    overrides, reference_options = reference_inputs(args)
    builder = ConstructPESWorkChain.get_builder_from_protocol(
        {"reference": code, "runner": runner},
        structure,
        protocol=args.protocol,
        overrides={"reference": overrides},
        options=reference_options,
        reference_protocol=args.reference_protocol,
    )
    hours = min(args.walltime, 2.0)
    stage = {
        "sample": slurm_options(1, 2000, hours, args.queue, args.account, mpi=False),
        "train": slurm_options(args.train_cores, 8000, 12.0, args.queue, args.account, mpi=False),
        "characterize": slurm_options(1, 2000, hours, args.queue, args.account, mpi=False),
    }
    if args.gpu:  # training on a GPU node: ask SLURM for one GPU and let torch use it
        stage["train"]["custom_scheduler_commands"] = "#SBATCH --gres=gpu:1"
        stage["train"]["queue_name"] = args.gpu
        settings = builder.train.settings.get_dict()
        settings["training"] = {**settings.get("training", {}), "device": "cuda"}
        builder.train.settings = orm.Dict(settings)
    for name, options in stage.items():
        builder[name].metadata.options = options
    return builder


def parse_arguments(setup: SetUp, doc: str | None, argv: list[str] | None = None) -> argparse.Namespace:
    """The scripts' command line, with ``setup`` as defaults."""
    s = setup
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--label", type=int, metavar="PK", help="label PESDataset PK instead of building a PES"
    )
    parser.add_argument(f"--{s.flag}", dest="code", default=s.code, help=f"{s.program} code label ({s.code})")
    parser.add_argument("--runner", default=s.runner, help=f"aiida-mlpes-run code label ({s.runner})")
    parser.add_argument("--queue", default=s.queue, help=f"SLURM partition ({s.queue})")
    parser.add_argument("--account", default=s.account, help="SLURM account")
    parser.add_argument("--cores", type=int, default=s.cores, help=f"cores per {s.program} job ({s.cores})")
    parser.add_argument(
        "--memory-mb", type=int, default=s.memory_mb, help=f"MB per {s.program} core ({s.memory_mb})"
    )
    parser.add_argument("--walltime", type=float, default=s.walltime_hours, help="hours per labelling job")
    parser.add_argument("--batch-size", type=int, default=20, help="structures per labelling job (20)")
    parser.add_argument("--train-cores", type=int, default=4, help="cores of a training job (4)")
    parser.add_argument("--gpu", metavar="PARTITION", help="train on one GPU of this partition")
    parser.add_argument("--molecule", default=s.molecule, help=f"ase.build.molecule name ({s.molecule})")
    parser.add_argument("--protocol", default=s.protocol, help=f"the loop's protocol ({s.protocol})")
    parser.add_argument("--reference-protocol", default=None, help=f"{s.program}'s protocol (moderate)")
    parser.add_argument("--run", action="store_true", help="run in the foreground instead of submitting")
    args, _ = parser.parse_known_args(argv)
    return args


def main(args: argparse.Namespace, reference_inputs: ReferenceInputs) -> orm.ProcessNode:
    """Build (labelling with ``--label PK``, else the loop of ``--molecule``), then submit or run it."""
    code = orm.load_code(args.code)
    if args.label is not None:
        builder = labelling_builder(code, orm.load_node(args.label), args, reference_inputs)
    else:
        structure = orm.StructureData(ase=molecule(args.molecule))
        builder = construct_pes_builder(code, orm.load_code(args.runner), structure, args, reference_inputs)
    if args.run:
        _, node = run_get_node(builder)
        print(f"{node.process_label}<{node.pk}> finished: exit {node.exit_status} {node.exit_message or ''}")
    else:
        node = submit(builder)
        print(f"submitted {node.process_label}<{node.pk}>; follow it with `verdi process status {node.pk}`")
    return node
