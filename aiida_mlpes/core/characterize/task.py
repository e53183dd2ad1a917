"""Runner task ``characterize``: optimise, harmonic frequencies, MEP, MDP and DMC on one surface.

Settings (``input.json``; file names relative to the working directory):

- ``driver``: ``{"name": "mlpes", "parameters": {"model": "model.pt"}}`` (the ML model; a list of model files
  is a committee) or any driver of :func:`aiida_mlpes.core.sampling.drivers.make_driver` (``tblite`` ...);
- ``structure``: extxyz file with the minimum (or a guess when ``tasks.optimize`` is given);
  ``ts_structure``: optional extxyz file with the transition state (or a guess with ``tasks.optimize_ts``);
- ``charge`` (e), ``masses`` (amu, optional; e.g. isotopes), ``threads``, ``source`` (stored with holes);
- ``tasks``: a dict whose keys choose what runs, in this order, each mapping to the keyword options of its
  function: ``optimize`` (:func:`find_minimum`: optimise, then move off a saddle point if the optimiser stopped
  at one), ``optimize_ts`` (:func:`optimize_ts`; the result must have exactly one imaginary mode),
  ``frequencies`` (:func:`normal_modes`, applied to the minimum and the TS), ``mep`` (:func:`minimum_energy_path`),
  ``mdp`` (:func:`minimum_dynamic_path`), ``dmc`` (:func:`run_dmc`), ``explore`` (:func:`explore`: candidate
  geometries from the final DMC walkers, when DMC ran, and MD on the surface). MEP and MDP need a TS.

Outputs: ``minimum.xyz`` (and ``ts.xyz``), ``mep.extxyz``/``mep.png``, ``mdp.extxyz``/``mdp.png``,
``dmc.png``/``dmc.npz`` (traces, hole energies/steps/reasons, final walkers), ``holes.h5`` (unlabelled
dataset of the hole geometries, only when DMC found holes), ``candidates.h5`` (unlabelled dataset of the
explore candidates, when there are any); the returned dict goes into ``result.json``, with every
non-finite number replaced by ``None`` (JSON null). Units: eV, Angstrom, amu, cm^-1.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from aiida_mlpes.core.characterize.dmc import run_dmc
from aiida_mlpes.core.characterize.explore import explore
from aiida_mlpes.core.characterize.frequencies import normal_modes
from aiida_mlpes.core.characterize.mdp import minimum_dynamic_path
from aiida_mlpes.core.characterize.mep import minimum_energy_path
from aiida_mlpes.core.characterize.optimize import find_minimum, optimize_ts
from aiida_mlpes.core.characterize.stationary import IMAGINARY_TOLERANCE
from aiida_mlpes.core.units import INV_CM

#: Task name -> function whose keyword options it accepts (in the order the tasks run).
TASK_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "optimize": find_minimum,
    "optimize_ts": optimize_ts,
    "frequencies": normal_modes,
    "mep": minimum_energy_path,
    "mdp": minimum_dynamic_path,
    "dmc": run_dmc,
    "explore": explore,
}
#: Arguments the task fills in itself (never user options).
FIXED_ARGUMENTS = {"potential", "numbers", "positions", "ts_positions", "masses", "uncertainty", "walkers"}
SETTINGS_KEYS = {"driver", "structure", "ts_structure", "charge", "masses", "threads", "source", "tasks"}
FILES = {
    "minimum": "minimum.xyz",
    "ts": "ts.xyz",
    "mep": "mep.extxyz",
    "mep_plot": "mep.png",
    "mdp": "mdp.extxyz",
    "mdp_plot": "mdp.png",
    "dmc_plot": "dmc.png",
    "dmc": "dmc.npz",
    "holes": "holes.h5",
    "candidates": "candidates.h5",
}


def check_tasks(tasks: Any, has_ts: bool) -> None:
    """Raise ``ValueError`` for unknown tasks or options, and for MEP/MDP without a TS."""
    if not isinstance(tasks, dict) or not tasks:
        raise ValueError(
            f"tasks must be a non-empty dict of task -> options; known tasks: {', '.join(TASK_FUNCTIONS)}"
        )
    unknown = sorted(set(tasks) - set(TASK_FUNCTIONS))
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; known tasks: {', '.join(TASK_FUNCTIONS)}")
    for name, options in tasks.items():
        if options is None or options is True:
            continue
        if not isinstance(options, dict):
            raise ValueError(f"tasks.{name} must be a dict of options (or true), got {options!r}")
        allowed = set(inspect.signature(TASK_FUNCTIONS[name]).parameters) - FIXED_ARGUMENTS
        bad = sorted(set(options) - allowed)
        if bad:
            raise ValueError(f"tasks.{name}: unknown option(s) {bad}; allowed: {', '.join(sorted(allowed))}")
    if not has_ts and {"mep", "mdp", "optimize_ts"} & set(tasks):
        raise ValueError("tasks mep, mdp and optimize_ts need a transition-state structure (ts_structure)")


def check_settings(settings: dict[str, Any]) -> None:
    """Validate the task settings before anything runs (``ValueError`` naming the problem)."""
    unknown = sorted(set(settings) - SETTINGS_KEYS)
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown}; allowed: {', '.join(sorted(SETTINGS_KEYS))}")
    driver = settings.get("driver")
    if not isinstance(driver, dict) or not isinstance(driver.get("name"), str):
        raise ValueError("driver must be a dict like {'name': 'mlpes', 'parameters': {'model': 'model.pt'}}")
    if "structure" not in settings:
        raise ValueError("settings need 'structure' (the minimum or a guess of it)")
    check_tasks(settings.get("tasks"), "ts_structure" in settings)


def make_potential(
    driver: dict[str, Any], numbers: np.ndarray, charge: float, workdir: Path, with_std: bool
) -> Any:
    """A batched Potential for ``driver`` (the ML model's own batched one when it has ``as_potential``)."""
    from aiida_mlpes.core.potential import ASEPotential
    from aiida_mlpes.core.sampling.drivers import make_driver

    parameters = dict(driver.get("parameters", {}))
    if driver["name"] == "mlpes":
        model = parameters.get("model", "model.pt")
        parameters["model"] = (
            [str(workdir / m) for m in model] if isinstance(model, list) else str(workdir / model)
        )
        calculator: Any = make_driver("mlpes", **parameters)
        return calculator.as_potential(numbers, charge=charge, return_std=with_std)
    calculator = make_driver(driver["name"], **{"charge": round(charge), **parameters})
    return ASEPotential(calculator, [int(z) for z in numbers], charge=round(charge))


def run_characterize_task(settings: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Runner task ``characterize`` (see the module docstring)."""
    from ase.io import read

    from aiida_mlpes.core.runner import TaskError

    workdir = Path(workdir)
    try:
        check_settings(settings)
        atoms: Any = read(workdir / settings["structure"], index=0)
        ts_atoms: Any = (
            read(workdir / settings["ts_structure"], index=0) if "ts_structure" in settings else None
        )
        if ts_atoms is not None and list(ts_atoms.numbers) != list(atoms.numbers):
            raise ValueError("structure and ts_structure must have the same atoms in the same order")
    except (ValueError, OSError) as exc:
        raise TaskError(str(exc)) from None
    if settings.get("threads"):
        import torch

        torch.set_num_threads(int(settings["threads"]))
    tasks = {
        name: dict(options) if isinstance(options, dict) else {}
        for name, options in settings["tasks"].items()
    }
    numbers = atoms.numbers
    masses = settings.get("masses")
    charge = float(settings.get("charge", 0.0))
    with_std = tasks.get("dmc", {}).get("uncertainty_threshold") is not None
    try:
        potential = make_potential(settings["driver"], numbers, charge, workdir, with_std)
        result = _run(tasks, potential, numbers, atoms.positions, ts_atoms, masses, charge, settings, workdir)
    except ValueError as exc:
        raise TaskError(str(exc)) from None
    return result  # aiida-mlpes-run stores non-finite numbers as null (core.runner.finite_or_none)


def _run(
    tasks: dict[str, dict[str, Any]],
    potential: Any,
    numbers: np.ndarray,
    positions: np.ndarray,
    ts_atoms: Any,
    masses: Any,
    charge: float,
    settings: dict[str, Any],
    workdir: Path,
) -> dict[str, Any]:
    result: dict[str, Any] = {}
    if "optimize" in tasks:
        opt = find_minimum(potential, numbers, positions, masses, **tasks["optimize"])
        if not opt.converged:
            raise ValueError(
                f"the minimum optimisation did not converge in {opt.steps} steps (max force {opt.max_force:.3g} eV/A)"
            )
        positions = opt.positions
        result["optimize"] = {
            "energy": opt.energy,
            "max_force": opt.max_force,
            "steps": opt.steps,
            "saddle_escaped": opt.saddle_escaped,
            "saddle_frequencies": opt.saddle_frequencies,
            "saddle_energies": opt.saddle_energies,
            "imaginary_frequencies": opt.imaginary_frequencies,
        }
    energy, forces = (np.asarray(v)[0] for v in potential(positions[None])[:2])
    result["minimum"] = {"energy": float(energy), "max_force": float(np.linalg.norm(forces, axis=1).max())}
    _write(workdir / FILES["minimum"], numbers, positions, float(energy))

    ts_positions = None if ts_atoms is None else ts_atoms.positions
    if "optimize_ts" in tasks:
        assert ts_positions is not None  # check_tasks requires a TS structure
        ts = optimize_ts(potential, numbers, ts_positions, masses=masses, **tasks["optimize_ts"])
        if not ts.converged:
            raise ValueError(
                f"the TS optimisation did not converge in {ts.steps} steps (max force {ts.max_force:.3g} eV/A)"
            )
        assert ts.modes is not None  # optimize_ts always returns the final harmonic analysis
        imaginary = ts.modes.frequencies[ts.modes.imaginary(IMAGINARY_TOLERANCE)]
        if len(imaginary) != 1:
            listed = ", ".join(f"{-f:.1f}i" for f in imaginary) or "none"
            raise ValueError(
                f"the optimised transition state has {len(imaginary)} imaginary frequencies ({listed} cm^-1) "
                "on this surface; a transition state needs exactly one (check the TS guess)"
            )
        ts_positions = ts.positions
        result["optimize_ts"] = {
            "energy": ts.energy,
            "max_force": ts.max_force,
            "steps": ts.steps,
            "imaginary_frequency": float(imaginary[0]),
        }
    if ts_positions is not None:
        ts_energy = float(np.asarray(potential(ts_positions[None])[0])[0])
        result["ts"] = {"energy": ts_energy, "barrier": ts_energy - float(energy)}
        _write(workdir / FILES["ts"], numbers, ts_positions, ts_energy)

    if "frequencies" in tasks:
        options = {"project": "auto", **tasks["frequencies"]}
        modes = normal_modes(potential, numbers, positions, masses, **options)
        result["frequencies"] = {"minimum": modes.frequencies.tolist(), "units": "cm^-1"}
        result["harmonic_zpe"] = modes.zpe
        result["harmonic_zpe_cm"] = modes.zpe / INV_CM
        if ts_positions is not None:
            result["frequencies"]["ts"] = normal_modes(
                potential, numbers, ts_positions, masses, **options
            ).frequencies.tolist()

    for name, function in (("mep", minimum_energy_path), ("mdp", minimum_dynamic_path)):
        if name in tasks:
            assert ts_positions is not None  # check_tasks requires a TS structure
            path = function(potential, numbers, ts_positions, masses=masses, **tasks[name])
            path.write(workdir / FILES[name])
            path.plot(
                workdir / FILES[f"{name}_plot"],
                title="Minimum energy path" if name == "mep" else "Minimum dynamic path",
            )
            result[name] = {
                "n_frames": len(path),
                "barriers": list(path.barriers),
                "converged": list(path.converged),
                "end_energies": [float(path.energies[0]), float(path.energies[-1])],
            }

    if "dmc" in tasks:
        dmc = run_dmc(potential, numbers, positions, masses, **tasks["dmc"])
        dmc.plot(workdir / FILES["dmc_plot"])
        np.savez_compressed(
            workdir / FILES["dmc"],
            energy_trace=dmc.energy_trace,
            population_trace=dmc.population_trace,
            potential_trace=dmc.potential_trace,
            hole_energies=dmc.hole_energies,
            hole_steps=dmc.hole_steps,
            hole_reasons=dmc.hole_reasons.astype(str),
            walkers=dmc.walkers,
        )
        if len(dmc.holes):
            _write_unlabelled(
                workdir / FILES["holes"], numbers, dmc.holes, charge, str(settings.get("source", ""))
            )
        result["dmc"] = {
            "zpe": dmc.zpe,
            "zpe_error": dmc.zpe_error,
            "zpe_cm": dmc.zpe_cm,
            "zpe_error_cm": dmc.zpe_error / INV_CM,
            "harmonic_zpe": dmc.harmonic_zpe,
            "n_holes": dmc.n_holes,
            "n_holes_stored": len(dmc.holes),
            "hole_reasons": {r: int(np.sum(dmc.hole_reasons == r)) for r in np.unique(dmc.hole_reasons)},
            "walker_steps_per_second": dmc.walker_steps_per_second,
            "wall_time_s": dmc.wall_time,
            "settings": dmc.settings,
            "outcome": dmc.outcome,
            "completed": dmc.completed,
            "stopped": dmc.stopped,
            "drift": None if dmc.drift is None else list(dmc.drift),
            "production_walker_steps": dmc.production_walker_steps,
            "n_steps_done": len(dmc.energy_trace),
            "n_walkers_final": len(dmc.walkers),
        }
    if "explore" in tasks:
        walkers = dmc.walkers if "dmc" in tasks else None
        found = explore(potential, numbers, positions, masses, walkers=walkers, **tasks["explore"])
        if len(found):
            _write_unlabelled(
                workdir / FILES["candidates"],
                numbers,
                found.positions,
                charge,
                str(settings.get("source", "")),
            )
        result["explore"] = {
            "n_candidates": len(found),
            "counts": found.counts,
            "origin": found.origin.tolist(),
            "energies": found.energies.tolist(),
            "force_std_max": None if found.force_std_max is None else found.force_std_max.tolist(),
            "pool_force_std": found.pool_force_std,
            "md": found.md,
            "settings": found.settings,
        }
    result["files"] = sorted(p.name for p in workdir.iterdir() if p.name in FILES.values())
    return result


def _write(path: Path, numbers: np.ndarray, positions: np.ndarray, energy: float) -> None:
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    atoms = Atoms(numbers=numbers, positions=positions)
    atoms.calc = SinglePointCalculator(atoms, energy=energy)
    write(path, atoms, format="extxyz")


def _write_unlabelled(path: Path, numbers: np.ndarray, holes: np.ndarray, charge: float, source: str) -> None:
    from aiida_mlpes.core.dataset import write_dataset
    from aiida_mlpes.core.ragged import RaggedArrays

    n = len(holes)
    arrays = RaggedArrays(
        n_atoms=np.full(n, len(numbers)),
        atomic_numbers=np.tile(numbers, n),
        positions=holes.reshape(-1, 3),
        charge=np.full(n, charge),
        source=np.array([source] * n, dtype=object),
    )
    write_dataset(path, arrays, overwrite=True)
