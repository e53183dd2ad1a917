"""Sampler throughput on NH3 with GFN2-xTB (tblite): samples per second and the share of time in the driver.

For every sampler the wall time is split into time inside the driver (tblite's singlepoint and its ASE
wrapper, measured by the samplers' driver monitor) and everything else (ASE's Langevin step, Metropolis
bookkeeping, collective variables and bias, result assembly): the "overhead". Target (issue 6): overhead
outside the driver under 10% of the wall time. tblite runs single-threaded (OMP_NUM_THREADS=1).

Usage: ``.venv/bin/python benchmarks/sampling.py [--scale 1.0] [--repeat 3]``; the best of ``repeat`` runs
is reported (the machine is shared, so single runs are noisy). Nothing here is asserted.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import time

from ase.build import molecule

from aiida_mlpes.core.sampling import (
    high_friction_md,
    langevin_md,
    make_driver,
    metadynamics,
    metropolis_mc,
    normal_mode_sampling,
    normal_mode_scan,
)


def cases(scale: float) -> dict:
    n = max(int(2000 * scale), 20)
    walls = [{"cv": i, "upper": 2.5} for i in range(3)]
    return {
        "md (Listing 1, 500 K)": (langevin_md, {"temperature": 500.0, "steps": n, "save_interval": 10}),
        "high_friction_md": (high_friction_md, {"temperature": 500.0, "steps": n, "save_interval": 10}),
        "mc (500 K)": (metropolis_mc, {"temperature": 500.0, "steps": n, "save_interval": 10}),
        "normal_mode_sampling": (normal_mode_sampling, {"temperature": 500.0, "n_samples": n // 4}),
        "normal_mode_scan (Listing 3)": (
            normal_mode_scan,
            {"energy_step": 0.05, "energy_limit": 1.0, "nmax": 2, "frequency_range": (100, None)},
        ),
        "metadynamics (Listing 2)": (
            metadynamics,
            {
                "temperature": 500.0,
                "steps": n,
                "save_interval": 10,
                "collective_variables": [[0, 1], [0, 2], [0, 3]],
                "height": 0.05,
                "widths": 0.1,
                "walls": walls,
            },
        ),
    }


def ase_langevin_floor(steps: int = 3000) -> float:
    """Microseconds per step of ASE's Langevin (with FixCom) on NH3 with a calculator that costs nothing:
    the part of the MD and metadynamics overhead that belongs to the propagator itself."""
    import numpy as np
    from ase import units
    from ase.calculators.calculator import Calculator
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin

    class Free(Calculator):
        implemented_properties = ("energy", "forces")

        def get_property(self, name, atoms=None, allow_calculation=True):
            return 0.0 if name == "energy" else np.zeros((4, 3))

    atoms = molecule("NH3")
    atoms.calc = Free()
    atoms.set_constraint(FixCom())
    dyn = Langevin(
        atoms,
        units.fs,
        temperature_K=500,
        friction=0.01 / units.fs,
        fixcm=False,
        rng=np.random.default_rng(0),
    )
    start = time.perf_counter()
    for _ in range(steps):
        dyn.step()
    return (time.perf_counter() - start) / steps * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply run lengths (default 2000 steps)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per sampler; the fastest is reported")
    args = parser.parse_args()
    atoms = molecule("NH3")
    driver = make_driver("tblite", method="GFN2-xTB")
    atoms.calc = driver
    atoms.get_potential_energy()  # load tblite once
    header = f"{'sampler':30s} {'samples':>8s} {'calls':>7s} {'wall s':>8s} {'samples/s':>10s} {'calls/s':>8s} {'in driver':>10s} {'overhead':>9s}"
    print(f"NH3, GFN2-xTB (tblite), OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}")
    print(header)
    print("-" * len(header))
    for name, (sampler, kwargs) in cases(args.scale).items():
        best = None
        for _ in range(args.repeat):
            start = time.perf_counter()
            result = sampler(atoms, driver, seed=1, **kwargs)
            wall = time.perf_counter() - start
            if best is None or wall < best[0]:
                best = (wall, result)
        wall, result = best
        driver_time, calls = result.info["driver_time_s"], result.info["driver_calls"]
        share = driver_time / wall
        print(
            f"{name:30s} {len(result):8d} {calls:7d} {wall:8.2f} {len(result) / wall:10.1f} "
            f"{calls / wall:8.0f} {100 * share:9.1f}% {100 * (1 - share):8.1f}%"
        )
    print("overhead = share of wall time outside the driver (target < 10%); figures from a shared machine")
    print(f"ASE Langevin.step alone (FixCom, free calculator): {ase_langevin_floor():.0f} us per step")


if __name__ == "__main__":
    main()
