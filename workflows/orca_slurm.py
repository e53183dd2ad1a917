"""ORCA on a SLURM cluster: build a machine-learned PES of a molecule, or label a dataset.

    verdi run workflows/orca_slurm.py                      # ConstructPESWorkChain of MOLECULE, submitted
    verdi run workflows/orca_slurm.py --label PK           # ReferenceWorkChain: label PESDataset PK with ORCA
    verdi run workflows/orca_slurm.py --help               # every option (codes, queue, cores, walltime ...)

The work is submitted to the daemon (`verdi daemon start` first) and the script prints the PK to follow with
`verdi process status PK`; `--run` runs it in the foreground instead. Set-up of the computer and the codes:
docs/cluster.md. Change the values under "your set-up" (or pass them as options); every other value comes from
the protocols (aiida_mlpes/workflows/protocols/construct_pes.yaml, reference_orca.yaml).
"""

from __future__ import annotations

import argparse
import functools
from typing import Any

from aiida import orm

from aiida_mlpes.workflows import slurm_scripts
from aiida_mlpes.workflows.slurm_scripts import slurm_options

# --- your set-up: change these ----------------------------------------------------------------------------------
ORCA_CODE = "orca@mycluster"  # the ORCA code (verdi code create ... --default-calc-job-plugin mlpes.orca)
RUNNER_CODE = "aiida-mlpes-run@mycluster"  # aiida-mlpes-run on the same cluster (sampling, training, ...)
QUEUE = "normal"  # SLURM partition of every job (`sinfo` lists them)
ACCOUNT = ""  # SLURM account to charge, if your cluster wants one (--account)
CORES = 8  # cores of one ORCA job (ORCA's %pal nprocs)
MEMORY_MB = 2000  # memory per core for ORCA (%maxcore, MB); SLURM is asked for 25 % more
WALLTIME_HOURS = 24.0  # walltime of one labelling job; sampling/characterization take 2 h, training 12 h
MOLECULE = "H2O"  # an ase.build.molecule name (or build the StructureData yourself below)
PROTOCOL = (
    "moderate"  # fast / moderate / precise: the loop's protocol (the reference level is ORCA's moderate)
)


SETUP = slurm_scripts.SetUp(
    "ORCA",
    "orca",
    ORCA_CODE,
    RUNNER_CODE,
    QUEUE,
    ACCOUNT,
    CORES,
    MEMORY_MB,
    WALLTIME_HOURS,
    MOLECULE,
    PROTOCOL,
)


def reference_inputs(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """ORCA's protocol overrides (parallel ORCA, its memory, batch size) and its jobs' scheduler options."""
    overrides = {
        "parameters": {"nprocs": args.cores, "maxcore": args.memory_mb},
        "batch_size": args.batch_size,
    }
    options = slurm_options(
        args.cores, int(1.25 * args.cores * args.memory_mb), args.walltime, args.queue, args.account, mpi=True
    )
    return overrides, options


# the shared builders and command line (aiida_mlpes/workflows/slurm_scripts.py) with ORCA's inputs
labelling_builder = functools.partial(slurm_scripts.labelling_builder, reference_inputs=reference_inputs)
construct_pes_builder = functools.partial(
    slurm_scripts.construct_pes_builder, reference_inputs=reference_inputs
)
parse_arguments = functools.partial(slurm_scripts.parse_arguments, SETUP, __doc__)


def main(argv: list[str] | None = None) -> orm.ProcessNode:
    return slurm_scripts.main(parse_arguments(argv), reference_inputs)


if __name__ == "__main__":
    main()
