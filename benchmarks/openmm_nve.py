"""NVE molecular dynamics of NH3 in OpenMM on a TorchScript-exported model: energy drift in meV/ps.

1. Data: a Langevin run of NH3 on GFN2-xTB (tblite through ASE) at 600 K, every 15th frame labelled
   (energy, forces, dipole, charges): 200 structures (cached in ``--data``).
2. Model: PhysNet in float64 (32 features, 16 radial functions, 2 blocks), trained for ``--budget`` seconds
   (``--model FILE``: a model file used if it exists, else where the trained one is saved).
3. Export (``units="openmm"``) and check: OpenMM's forces against MLPESCalculator's at 20 frames of the data
   (target: max difference < 1e-4 eV/Angstrom).
4. NVE: ``--ps`` ps (default 10) with OpenMM's VerletIntegrator on the Reference platform (double precision)
   from the xTB minimum with 300 K Maxwell-Boltzmann velocities, at each ``--dt`` (default 0.25 and 0.5 fs).
   Prints the drift (slope of a straight-line fit of the total energy, meV/ps; target |drift| < 1 meV/ps),
   the total-energy fluctuation about the fit (meV) and the cost per step.

    .venv/bin/python benchmarks/openmm_nve.py [--budget 120] [--ps 10] [--dt 0.25 0.5] [--repeats 1]

Needs the optional packages OpenMM (``pip install 'aiida-mlpes[openmm]'``) and tblite (``[xtb]``).
Timings are noisy on a shared machine; the load average is printed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def nh3_md_data(path: Path, n: int = 200, every: int = 15, seed: int = 0):
    """``n`` NH3 frames from a 600 K GFN2-xTB Langevin run (0.5 fs steps), labelled; cached in ``path``."""
    from aiida_mlpes.core.dataset import read_arrays, write_dataset

    if path.exists():
        return read_arrays(path)
    from ase import units
    from ase.build import molecule
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.md.langevin import Langevin
    from ase.optimize import BFGS
    from tblite.ase import TBLite

    from aiida_mlpes.core.ragged import RaggedArrays

    atoms = molecule("NH3")
    atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
    BFGS(atoms, logfile=None).run(fmax=1e-4)
    rng = np.random.default_rng(seed)
    masses = atoms.get_masses()[:, None]
    atoms.set_momenta(rng.normal(size=(len(atoms), 3)) * np.sqrt(masses * units.kB * 600.0))
    dyn = Langevin(atoms, 0.5 * units.fs, temperature_K=600, friction=0.02, fixcm=False, rng=rng)
    images = []
    for _ in range(n):
        dyn.run(every)
        frame = atoms.copy()
        results = atoms.calc.results
        frame.calc = SinglePointCalculator(
            frame, **{k: np.copy(results[k]) for k in ("energy", "forces", "dipole", "charges")}
        )
        images.append(frame)
    arrays = RaggedArrays.from_atoms(images, source="import:benchmark-nh3-md600")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_dataset(path, arrays, level_of_theory="GFN2-xTB (tblite)")
    return read_arrays(path)


def xtb_minimum() -> np.ndarray:
    """NH3 positions (Angstrom) at the GFN2-xTB minimum."""
    from ase.build import molecule
    from ase.optimize import BFGS
    from tblite.ase import TBLite

    atoms = molecule("NH3")
    atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
    BFGS(atoms, logfile=None).run(fmax=1e-4)
    return atoms.positions.copy()


def train(arrays, budget: float, workdir: Path) -> Path:
    """Train a float64 PhysNet for ``budget`` seconds; returns the best model file."""
    from aiida_mlpes.core.dataset import split_indices
    from aiida_mlpes.core.models import ModelConfig
    from aiida_mlpes.core.training import Trainer, TrainingConfig

    split = split_indices(arrays.hash, seed=0)
    config = ModelConfig(elements=[1, 7], dtype="float64", n_features=32, n_rbf=16, n_blocks=2, cutoff=5.0)
    settings = TrainingConfig(
        max_epochs=100000, wall_time_limit=budget, progress_bar=False, device="cpu", threads=1
    )
    result = Trainer(config, settings, workdir).fit(arrays, split["train"], split["valid"])
    print(f"trained {result.epochs} epochs in {result.wall_time:.0f} s; valid metrics: ", end="")
    print({k: round(v.get("mae", float("nan")), 4) for k, v in result.valid_metrics.items()})
    return result.best_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "mlpes-nh3-md600.h5")
    parser.add_argument(
        "--model", type=Path, default=None, help="model file: used if it exists, else trained and saved"
    )
    parser.add_argument("--budget", type=float, default=120.0, help="training wall time, s")
    parser.add_argument("--ps", type=float, default=10.0, help="length of each NVE run, ps")
    parser.add_argument("--dt", type=float, nargs="+", default=[0.25, 0.5], help="time steps, fs")
    parser.add_argument("--temperature", type=float, default=300.0, help="initial temperature, K")
    parser.add_argument("--repeats", type=int, default=1, help="runs per time step (seeds 0, 1, ...)")
    args = parser.parse_args()

    import torch

    from aiida_mlpes.core.calculator import MLPESCalculator
    from aiida_mlpes.core.models import load_model
    from aiida_mlpes.core.models.export import export_torchscript
    from aiida_mlpes.core.openmm_md import create_context, run_nve
    from aiida_mlpes.core.units import KB, KJ_PER_MOL

    torch.set_num_threads(1)
    print(
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (a shared machine: timings are noisy)"
    )
    arrays = nh3_md_data(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        if args.model is not None and args.model.exists():
            model_file = args.model
        else:
            model_file = train(arrays, args.budget, Path(tmp))
            if args.model is not None:
                args.model.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(model_file, args.model)
        model = load_model(model_file)
        module = export_torchscript(model, [7, 1, 1, 1], Path(tmp) / "nh3_openmm.pt", units="openmm")
        calc = MLPESCalculator(model)
        worst = 0.0
        for index in range(0, len(arrays), max(1, len(arrays) // 20)):
            atoms = arrays.to_atoms(index)
            context, _ = create_context(module, atoms.positions)
            forces = context.getState(getForces=True).getForces(asNumpy=True)._value * KJ_PER_MOL / 10.0
            atoms.calc = calc
            worst = max(worst, float(np.abs(forces - atoms.get_forces()).max()))
        print(f"OpenMM vs MLPESCalculator forces: max difference {worst:.2e} eV/Angstrom (target < 1e-4)")

        start = xtb_minimum()
        print(
            f"{'dt/fs':>6} {'seed':>4} {'steps':>6} {'drift meV/ps':>13} {'fluct. meV':>10} {'<T>/K':>6} "
            f"{'ms/step':>8}  (target |drift| < 1 meV/ps)"
        )
        for dt in args.dt:
            for seed in range(args.repeats):
                n_steps = round(args.ps * 1000.0 / dt)
                begin = time.perf_counter()
                traj = run_nve(
                    module,
                    start,
                    n_steps,
                    timestep_fs=dt,
                    temperature=args.temperature,
                    report_every=max(1, round(5.0 / dt)),
                    seed=seed,
                )
                wall = time.perf_counter() - begin
                temperature = 2.0 * traj.kinetic.mean() / (3 * 4 * KB)  # 3N degrees of freedom
                print(
                    f"{dt:6.2f} {seed:4d} {n_steps:6d} {traj.drift():13.4f} {traj.fluctuation():10.3f} "
                    f"{temperature:6.0f} {1000 * wall / n_steps:8.2f}"
                )


if __name__ == "__main__":
    main()
