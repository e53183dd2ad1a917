"""Gaussian on a SLURM cluster: build a machine-learned PES of a molecule, or label a dataset.

    verdi run workflows/gaussian_slurm.py                  # ConstructPESWorkChain of MOLECULE, submitted
    verdi run workflows/gaussian_slurm.py --label PK       # ReferenceWorkChain: label PESDataset PK with Gaussian
    verdi run workflows/gaussian_slurm.py --help               # every option (codes, queue, cores, walltime ...)

The work is submitted to the daemon (`verdi daemon start` first) and the script prints the PK to follow with
`verdi process status PK`; `--run` runs it in the foreground instead. Set-up of the computer and the codes:
docs/cluster.md. Change the values under "your set-up" (or pass them as options); every other value comes from
the protocols (aiida_mlpes/workflows/protocols/construct_pes.yaml, reference_gaussian.yaml).
"""

from __future__ import annotations

import argparse
from typing import Any

from aiida import orm
from aiida.engine import run_get_node, submit
from ase.build import molecule

from aiida_mlpes.data.dataset import PESDataset
from aiida_mlpes.workflows.construct_pes import ConstructPESWorkChain
from aiida_mlpes.workflows.reference import ReferenceWorkChain

# --- your set-up: change these ----------------------------------------------------------------------------------
GAUSSIAN_CODE = (
    "g16@mycluster"  # the Gaussian code (verdi code create ... --default-calc-job-plugin mlpes.gaussian)
)
RUNNER_CODE = "aiida-mlpes-run@mycluster"  # aiida-mlpes-run on the same cluster (sampling, training, ...)
QUEUE = "normal"  # SLURM partition of every job (`sinfo` lists them)
ACCOUNT = ""  # SLURM account to charge, if your cluster wants one (--account)
CORES = 8  # cores of one Gaussian job (%NProcShared: threads of one process)
MEMORY_MB = 2000  # memory per core for Gaussian (%Mem is cores x this, MB); SLURM is asked for 25 % more
WALLTIME_HOURS = 24.0  # walltime of one labelling job; sampling/characterization take 2 h, training 12 h
MOLECULE = "H2O"  # an ase.build.molecule name (or build the StructureData yourself below)
PROTOCOL = (
    "moderate"  # fast / moderate / precise: the loop's protocol (the reference level: Gaussian's moderate)
)


def slurm_options(
    cores: int, memory_mb: int, hours: float, queue: str, account: str, mpi: bool
) -> dict[str, Any]:
    """``metadata.options`` of one job: ``cores`` as SLURM tasks (``mpi``, for programs that start their own
    MPI ranks such as ORCA) or as CPUs of one task (threads, as Gaussian uses them), ``memory_mb`` for the job, ``hours`` of walltime."""
    resources = {"num_machines": 1, "num_mpiprocs_per_machine": 1}
    if mpi:
        resources["num_mpiprocs_per_machine"] = cores  # a program that starts its own MPI ranks
    else:
        resources["num_cores_per_mpiproc"] = cores  # one process with `cores` threads (--cpus-per-task)
    options: dict[str, Any] = {
        "resources": resources,
        "max_wallclock_seconds": int(hours * 3600),
        "max_memory_kb": int(memory_mb * 1024),
        "withmpi": False,  # Gaussian and aiida-mlpes-run are one process each
    }
    if queue:
        options["queue_name"] = queue
    if account:
        options["account"] = account
    return options


def reference_inputs(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """Gaussian's protocol overrides (shared-memory cores, memory, batch size) and its jobs' scheduler options."""
    memory = f"{args.cores * args.memory_mb}MB"
    overrides = {"parameters": {"nprocs": args.cores, "memory": memory}, "batch_size": args.batch_size}
    options = slurm_options(
        args.cores,
        int(1.25 * args.cores * args.memory_mb),
        args.walltime,
        args.queue,
        args.account,
        mpi=False,
    )
    return overrides, options


def labelling_builder(gaussian: orm.AbstractCode, dataset: PESDataset, args: argparse.Namespace):
    """A ReferenceWorkChain labelling every conformation of ``dataset`` with Gaussian on the cluster."""
    overrides, options = reference_inputs(args)
    return ReferenceWorkChain.get_builder_from_protocol(
        gaussian, dataset, protocol=args.reference_protocol, overrides=overrides, options=options
    )


def construct_pes_builder(
    gaussian: orm.AbstractCode,
    runner: orm.AbstractCode,
    structure: orm.StructureData,
    args: argparse.Namespace,
):
    """The loop for ``structure`` with Gaussian labels, each stage with its own scheduler options."""
    overrides, reference_options = reference_inputs(args)
    builder = ConstructPESWorkChain.get_builder_from_protocol(
        {"reference": gaussian, "runner": runner},
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


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--label", type=int, metavar="PK", help="label PESDataset PK instead of building a PES"
    )
    parser.add_argument("--gaussian", default=GAUSSIAN_CODE, help=f"Gaussian code label ({GAUSSIAN_CODE})")
    parser.add_argument("--runner", default=RUNNER_CODE, help=f"aiida-mlpes-run code label ({RUNNER_CODE})")
    parser.add_argument("--queue", default=QUEUE, help=f"SLURM partition ({QUEUE})")
    parser.add_argument("--account", default=ACCOUNT, help="SLURM account")
    parser.add_argument("--cores", type=int, default=CORES, help=f"cores per Gaussian job ({CORES})")
    parser.add_argument(
        "--memory-mb", type=int, default=MEMORY_MB, help=f"MB per Gaussian core ({MEMORY_MB})"
    )
    parser.add_argument("--walltime", type=float, default=WALLTIME_HOURS, help="hours per labelling job")
    parser.add_argument("--batch-size", type=int, default=20, help="structures per labelling job (20)")
    parser.add_argument("--train-cores", type=int, default=4, help="cores of a training job (4)")
    parser.add_argument("--gpu", metavar="PARTITION", help="train on one GPU of this partition")
    parser.add_argument("--molecule", default=MOLECULE, help=f"ase.build.molecule name ({MOLECULE})")
    parser.add_argument("--protocol", default=PROTOCOL, help=f"the loop's protocol ({PROTOCOL})")
    parser.add_argument("--reference-protocol", default=None, help="Gaussian's protocol (moderate)")
    parser.add_argument("--run", action="store_true", help="run in the foreground instead of submitting")
    args, _ = parser.parse_known_args(argv)
    return args


def main(argv: list[str] | None = None) -> orm.ProcessNode:
    args = parse_arguments(argv)
    gaussian = orm.load_code(args.gaussian)
    if args.label is not None:
        builder = labelling_builder(gaussian, orm.load_node(args.label), args)
    else:
        structure = orm.StructureData(ase=molecule(args.molecule))
        builder = construct_pes_builder(gaussian, orm.load_code(args.runner), structure, args)
    if args.run:
        _, node = run_get_node(builder)
        print(f"{node.process_label}<{node.pk}> finished: exit {node.exit_status} {node.exit_message or ''}")
    else:
        node = submit(builder)
        print(f"submitted {node.process_label}<{node.pk}>; follow it with `verdi process status {node.pk}`")
    return node


if __name__ == "__main__":
    main()
