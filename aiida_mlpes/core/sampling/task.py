"""Runner task ``sample``: run one sampler on the structures of a file and write a dataset.

Settings (``input.json``)::

    {
      "sampler": "normal_mode_sampling",      # see SAMPLERS
      "parameters": {"n_samples": 100, "temperature": 500, "frequency_range": [100, null]},
      "driver": {"name": "tblite", "parameters": {"method": "GFN2-xTB"}},
      "structures": "structures.xyz",         # extended XYZ, one or several systems
      "seed": 42,                             # optional; drawn and reported when missing
      "label": false,                         # keep the driver's energies/forces in the dataset
      "source": "",                           # written as every sample's source (the CalcJob's uuid)
      "samples_file": "samples.h5", "trajectory_file": "trajectory.npz"
    }

Outputs: the samples as a dataset file (unlabelled unless ``label``), ``trajectory.npz`` (driver energies
along the trajectory, ``system`` index, per-step extras, per-sample extras ``sample_*`` and per-system
arrays ``system<i>_<key>``), and the summary returned into ``result.json``. When the driver fails, the
samples collected so far are written all the same and the task reports the error (TaskError).
"""

from __future__ import annotations

import inspect
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from aiida_mlpes.core.ragged import RaggedArrays
from aiida_mlpes.core.sampling._common import LOGGER
from aiida_mlpes.core.sampling.collective_variables import check_atoms_exist
from aiida_mlpes.core.sampling.drivers import driver_names, level_of_theory, make_driver
from aiida_mlpes.core.sampling.mc import check_mc_settings, metropolis_mc
from aiida_mlpes.core.sampling.md import check_md_settings, high_friction_md, langevin_md
from aiida_mlpes.core.sampling.metadynamics import check_metadynamics_settings, metadynamics
from aiida_mlpes.core.sampling.normal_modes import (
    check_mode_settings,
    check_optimize,
    check_sampling_settings,
    normal_mode_sampling,
)
from aiida_mlpes.core.sampling.results import SampleResult, SamplingError
from aiida_mlpes.core.sampling.scan import check_scan_settings, normal_mode_scan

#: Sampler name -> function ``f(systems, driver, *, seed, **parameters) -> SampleResult``.
SAMPLERS: dict[str, Callable[..., SampleResult]] = {
    "md": langevin_md,
    "high_friction_md": high_friction_md,
    "mc": metropolis_mc,
    "normal_mode_sampling": normal_mode_sampling,
    "normal_mode_scan": normal_mode_scan,
    "metadynamics": metadynamics,
}
SETTINGS_KEYS = {
    "sampler",
    "parameters",
    "driver",
    "structures",
    "seed",
    "label",
    "source",
    "samples_file",
    "trajectory_file",
    "threads",
}


def _check_values(sampler: str, p: dict[str, Any], n_atoms: Sequence[int] | None) -> None:
    if sampler in ("md", "high_friction_md", "metadynamics"):
        check_md_settings(
            p["temperature"],
            p["timestep"],
            p["steps"],
            p["save_interval"],
            p["friction"],
            p.get("equilibration_steps", 0),
        )
    if sampler == "mc":
        check_mc_settings(**p)
    if sampler in ("normal_mode_sampling", "normal_mode_scan"):
        check_mode_settings(p["frequency_range"], p["step"], p["fmax"])
        check_optimize(p["optimize"])
    if sampler == "normal_mode_sampling":
        check_sampling_settings(
            p["n_samples"], p["temperature"], p["energy"], p["low_temperature_samples"], p["low_temperature"]
        )
    if sampler == "normal_mode_scan":
        check_scan_settings(p["energy_step"], p["energy_limit"], p["nmax"], p["max_multiplier"])
    if sampler == "metadynamics":
        meta = check_metadynamics_settings(
            p["collective_variables"], p["height"], p["widths"], p["deposition_interval"], p["walls"]
        )
        for index, n in enumerate(n_atoms or []):
            check_atoms_exist(meta["cvs"] + [w.cv for w in meta["walls"]], n, index)


def check_sampler_parameters(
    sampler: str, parameters: dict[str, Any], n_atoms: Sequence[int] | None = None
) -> dict[str, Any]:
    """Check a sampler's parameters without running it; returns them with defaults filled in.

    ``n_atoms`` (atoms per system), when given, lets metadynamics check its CV atom indices.
    Raises ValueError naming the problem.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; known samplers: {', '.join(SAMPLERS)}")
    if not isinstance(parameters, dict):
        raise ValueError(f"parameters must be a dict, got {type(parameters).__name__}")
    signature = inspect.signature(SAMPLERS[sampler]).parameters
    allowed = {n: p for n, p in signature.items() if p.kind is inspect.Parameter.KEYWORD_ONLY and n != "seed"}
    unknown = sorted(set(parameters) - set(allowed))
    if unknown:
        raise ValueError(f"{sampler}: unknown parameter(s) {unknown}; allowed: {', '.join(sorted(allowed))}")
    missing = [n for n, p in allowed.items() if p.default is inspect.Parameter.empty and n not in parameters]
    if missing:
        raise ValueError(f"{sampler}: missing required parameter(s) {missing}")
    full = {n: parameters.get(n, p.default) for n, p in allowed.items()}
    _check_values(sampler, full, n_atoms)
    return full


def check_sample_settings(settings: dict[str, Any], n_atoms: Sequence[int] | None = None) -> None:
    """Validate task settings (sampler, parameters, driver, seed) before anything runs."""
    unknown = sorted(set(settings) - SETTINGS_KEYS)
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown}; allowed: {', '.join(sorted(SETTINGS_KEYS))}")
    check_sampler_parameters(settings.get("sampler", ""), settings.get("parameters", {}), n_atoms)
    driver = settings.get("driver")
    if not isinstance(driver, dict) or not isinstance(driver.get("name"), str):
        raise ValueError(
            "driver must be a dict like {'name': 'tblite', 'parameters': {'method': 'GFN2-xTB'}}"
        )
    if set(driver) - {"name", "parameters"}:
        raise ValueError(f"driver: unknown keys {sorted(set(driver) - {'name', 'parameters'})}")
    if driver["name"] not in driver_names():
        raise ValueError(f"unknown driver {driver['name']!r}; known drivers: {', '.join(driver_names())}")
    if not isinstance(driver.get("parameters", {}), dict):
        raise ValueError("driver parameters must be a dict")
    seed = settings.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def run_sample_task(settings: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Runner task ``sample`` (see the module docstring)."""
    from ase.io import read

    from aiida_mlpes.core.dataset import write_dataset
    from aiida_mlpes.core.runner import TaskError, set_threads
    from aiida_mlpes.core.threads import REFERENCE_THREADS

    workdir = Path(workdir)
    path = workdir / settings.get("structures", "structures.xyz")
    if not path.exists():
        raise TaskError(f"structures file {path.name} not found")
    systems = read(path, index=":")
    try:
        check_sample_settings(settings, [len(a) for a in systems])
    except ValueError as exc:
        raise TaskError(str(exc)) from exc
    driver_spec = settings["driver"]
    driver_parameters = dict(driver_spec.get("parameters", {}))
    if driver_spec["name"] == "mlpes" and isinstance(driver_parameters.get("model"), str):
        driver_parameters["model"] = str(workdir / driver_parameters["model"])
    if driver_spec["name"] != "mlpes" and not settings.get("threads"):
        set_threads(
            REFERENCE_THREADS
        )  # a quantum-chemistry driver: reproducible labels (see REFERENCE_THREADS)
    driver = make_driver(driver_spec["name"], **driver_parameters)
    sampler = SAMPLERS[settings["sampler"]]
    handler = logging.StreamHandler(sys.stdout)  # progress lines go to the job's output file
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    LOGGER.addHandler(handler)
    level = LOGGER.level
    LOGGER.setLevel(logging.INFO)
    try:
        result = sampler(systems, driver, seed=settings.get("seed"), **settings.get("parameters", {}))
        error = None
    except SamplingError as exc:
        result, error = exc.result, str(exc)
    except ValueError as exc:
        raise TaskError(str(exc)) from exc
    finally:
        LOGGER.removeHandler(handler)
        LOGGER.setLevel(level)
    level_name = level_of_theory(driver_spec["name"], driver_spec.get("parameters", {}))
    label = bool(settings.get("label", False))
    samples_file = settings.get("samples_file", "samples.h5")
    if len(result):
        arrays = result.samples if label else _unlabelled(result.samples)
        arrays.source = np.array([settings.get("source", "")] * len(arrays), dtype=object)
        write_dataset(
            workdir / samples_file, arrays, level_of_theory=level_name if label else "", overwrite=True
        )
    _write_trajectory(workdir / settings.get("trajectory_file", "trajectory.npz"), result)
    if error is not None:
        raise TaskError(f"{error} (written to {samples_file})" if len(result) else error)
    summary = result.summary()
    summary["systems"] = [{k: v for k, v in s.items() if np.ndim(v) == 0} for s in summary["systems"]]
    summary["level_of_theory"] = level_name
    summary["labelled"] = label
    return summary


def _unlabelled(arrays: RaggedArrays) -> RaggedArrays:
    return RaggedArrays(arrays.n_atoms, arrays.atomic_numbers, arrays.positions, charge=arrays.charge)


def _write_trajectory(path: Path, result: SampleResult) -> None:
    data: dict[str, Any] = dict(result.trajectory)
    data["sample_system"] = result.sample_system
    data.update({f"sample_{key}": value for key, value in result.sample_data.items()})
    for i, info in enumerate(result.systems):
        data.update(
            {f"system{i}_{key}": np.asarray(value) for key, value in info.items() if np.ndim(value) > 0}
        )
    np.savez_compressed(path, **data)
