"""Langevin molecular dynamics sampling (Asparagus paper, Listing 1) and its high-friction variant.

Propagation is ASE's :class:`~ase.md.langevin.Langevin` (NVT), started from Maxwell-Boltzmann velocities;
the centre of mass is held fixed with :class:`~ase.constraints.FixCom`, so the kinetic temperature counts
3N - 3 degrees of freedom. Every ``save_interval``-th step of the production run is kept as a sample with
the driver's energy and forces; the driver energy of every step goes to ``trajectory["energy"]`` and the
kinetic temperature to ``trajectory["temperature"]``. Units: K, fs, 1/fs, eV, Angstrom.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator
from ase.constraints import FixCom
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

from aiida_mlpes.core.sampling._common import Progress, as_systems, check_int, check_real, random_streams
from aiida_mlpes.core.sampling.drivers import MonitoredCalculator
from aiida_mlpes.core.sampling.langevin import LeanLangevin
from aiida_mlpes.core.sampling.results import SampleCollector, SampleResult

#: Largest friction * timestep for which ASE's Langevin propagator stays stable and accurate.
MAX_FRICTION_TIMESTEP = 1.0


def check_md_settings(
    temperature: float,
    timestep: float,
    steps: int,
    save_interval: int,
    friction: float,
    equilibration_steps: int,
) -> dict[str, Any]:
    """Validated MD settings (ValueError names the bad one)."""
    settings = {
        "temperature": check_real("temperature", temperature, minimum=0.0, strict=False),
        "timestep": check_real("timestep", timestep),
        "steps": check_int("steps", steps),
        "save_interval": check_int("save_interval", save_interval),
        "friction": check_real("friction", friction),
        "equilibration_steps": check_int("equilibration_steps", equilibration_steps, minimum=0),
    }
    if settings["save_interval"] > settings["steps"]:
        raise ValueError(
            f"save_interval ({save_interval}) is longer than the run ({steps} steps): no samples"
        )
    if settings["friction"] * settings["timestep"] > MAX_FRICTION_TIMESTEP:
        raise ValueError(
            f"friction * timestep = {settings['friction'] * settings['timestep']:g} exceeds "
            f"{MAX_FRICTION_TIMESTEP}: the Langevin propagator becomes inaccurate; reduce the timestep"
        )
    return settings


def langevin_md(
    systems: Atoms | Sequence[Atoms],
    driver: Calculator,
    *,
    temperature: float,
    timestep: float = 1.0,
    steps: int = 1000,
    save_interval: int = 10,
    friction: float = 0.01,
    equilibration_steps: int = 0,
    seed: int | None = None,
) -> SampleResult:
    """Sample each system with Langevin MD at ``temperature`` (K).

    Args:
        systems: one or several ASE Atoms (each is run separately, from its own random stream).
        driver: any ASE calculator giving energy and forces.
        temperature: thermostat temperature in K (velocities start from Maxwell-Boltzmann at it).
        timestep: fs. steps: production steps per system. save_interval: keep every n-th step.
        friction: Langevin friction in 1/fs (0.01/fs = 10/ps equilibrates gently).
        equilibration_steps: steps run first and discarded.
        seed: makes the run reproducible; drawn and recorded in ``info["seed"]`` when None.

    Returns ``steps // save_interval`` samples per system. Raises SamplingError (with the samples so far)
    when the driver fails.
    """
    settings = check_md_settings(temperature, timestep, steps, save_interval, friction, equilibration_steps)
    return _run_md("md", systems, driver, settings, seed)


def high_friction_md(
    systems: Atoms | Sequence[Atoms],
    driver: Calculator,
    *,
    temperature: float,
    timestep: float = 1.0,
    steps: int = 1000,
    save_interval: int = 10,
    friction: float = 0.5,
    seed: int | None = None,
) -> SampleResult:
    """Explore around each structure with strongly damped Langevin dynamics, without equilibration.

    The high friction (default 0.5/fs: velocities forget themselves within ~2 fs) makes the motion
    Brownian: every atom is thermalised on its own at once, so the trajectory spreads out from the start
    structure at ``temperature`` without waiting for energy to flow between modes, and samples are kept
    from the first steps. Positions still follow the Boltzmann distribution at long times, but diffusion
    is slower than in gently thermostatted MD. Arguments as in :func:`langevin_md`.
    """
    settings = check_md_settings(temperature, timestep, steps, save_interval, friction, 0)
    return _run_md("high_friction_md", systems, driver, settings, seed)


def start_langevin(
    atoms: Atoms,
    rng: np.random.Generator,
    *,
    temperature: float,
    timestep: float,
    friction: float,
) -> LeanLangevin:
    """Langevin dynamics of ``atoms`` (calculator attached), ready to ``step()``.

    Velocities start from Maxwell-Boltzmann at ``temperature`` (K) with zero total momentum; the centre
    of mass is held fixed (FixCom). ``timestep`` in fs, ``friction`` in 1/fs. The propagator is ASE's
    Langevin with its step on plain arrays (:class:`~aiida_mlpes.core.sampling.langevin.LeanLangevin`:
    the same trajectory without ASE's per-step Atoms bookkeeping); the samplers call ``step()`` directly
    rather than ``run()``, whose per-step observers cost as much as a fast driver call.
    """
    if len(atoms) > 1:
        atoms.set_constraint([*atoms.constraints, FixCom()])
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
    Stationary(atoms)
    return LeanLangevin(
        atoms,
        timestep=timestep * units.fs,
        temperature_K=temperature,
        friction=friction / units.fs,
        fixcm=False,
        rng=rng,
    )


def _run_md(
    name: str,
    systems: Atoms | Sequence[Atoms],
    driver: Calculator,
    settings: dict[str, Any],
    seed: int | None,
) -> SampleResult:
    systems = as_systems(systems)
    seed, rngs = random_streams(seed, len(systems))
    monitor = MonitoredCalculator(driver)
    collector = SampleCollector(name, len(systems), seed, monitor, settings)
    with collector.guard():
        for index, (atoms, rng) in enumerate(zip(systems, rngs, strict=True)):
            _md_one(name, index, atoms, monitor, rng, collector, settings)
    return collector.result()


def _md_one(
    name: str,
    index: int,
    atoms: Atoms,
    monitor: MonitoredCalculator,
    rng: np.random.Generator,
    collector: SampleCollector,
    s: dict[str, Any],
) -> None:
    monitor.restart()
    atoms.calc = monitor
    equilibration, save_interval, total = s["equilibration_steps"], s["save_interval"], s["steps"]
    dof = max(3 * len(atoms) - (3 if len(atoms) > 1 else 0), 1)
    numbers = atoms.numbers.copy()
    progress = Progress(f"{name} system {index}", equilibration + total)
    collector.system, collector.step = index, 1
    kinetic_factor = 1.0 / (dof * units.kB)  # 2 E_kin / (dof kB) with E_kin = p.p/(2m)
    # (N, 3), not (N, 1): broadcasting costs more than the arithmetic on arrays this small
    inverse_masses = np.repeat(1.0 / atoms.get_masses()[:, None], 3, axis=1)
    # per-step records go to the collector in one piece at the end (also when the driver fails)
    energies, temperatures = np.empty(total), np.empty(total)
    done = 0
    arrays = atoms.arrays
    step = 0
    try:
        dyn = start_langevin(
            atoms, rng, temperature=s["temperature"], timestep=s["timestep"], friction=s["friction"]
        )
        for step in range(1, equilibration + total + 1):
            dyn.step()
            progress.update()
            if step <= equilibration:
                continue
            momenta = arrays["momenta"]
            temperatures[done] = kinetic_factor * float(np.vdot(momenta, momenta * inverse_masses))
            energies[done] = monitor.results["energy"]
            done += 1
            if done % save_interval == 0:
                collector.add_sample(
                    index, numbers, arrays["positions"], monitor.results, time_fs=done * s["timestep"]
                )
    finally:
        collector.step = step  # where a failure happened (step s computes the driver's call s + 1)
        progress.close()
        collector.add_steps(index, energies[:done], temperature=temperatures[:done])
        if done:
            collector.systems[index]["mean_temperature"] = float(np.mean(temperatures[:done]))
        collector.systems[index]["degrees_of_freedom"] = int(dof)
        atoms.calc = None
