"""Calcfunctions of ``ConstructPESWorkChain``: every number the stopping rule uses is a stored node.

- :func:`validation_structures`: the model's minimum (and TS) plus the 6N displaced copies whose reference
  forces give the reference Hessian (unlabelled PESDataset).
- :func:`validate_against_reference`: reference forces, frequencies and barrier at the model's stationary
  points, compared with the model's.
- :func:`score_new_labels`: the model's errors on structures labelled this iteration, before training on
  them; confirmed holes and discovered minima.
- :func:`record_iteration`: one iteration's record with the verdict of every criterion.
- :func:`collect_history`: all records and the convergence plot.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from aiida import orm
from aiida.engine import calcfunction

from aiida_mlpes.core.runner import finite_or_none
from aiida_mlpes.data.dataset import PESDataset


@calcfunction
def validation_structures(
    minimum: orm.StructureData, step: orm.Float, frequencies: orm.Bool, **extra: orm.StructureData
) -> PESDataset:
    """Unlabelled geometries that validate the model: ``minimum`` first, its 6N central-difference copies
    (``step`` Angstrom) when ``frequencies``, then every structure of ``extra`` (e.g. the TS)."""
    from aiida_mlpes.core.characterize.reference_check import validation_geometries
    from aiida_mlpes.core.ragged import RaggedArrays

    atoms = minimum.get_ase()
    geometries = [*validation_geometries(atoms.positions, step.value, frequencies.value)]
    geometries += [extra[key].get_ase().positions for key in sorted(extra)]
    n = len(geometries)
    arrays = RaggedArrays(
        n_atoms=np.full(n, len(atoms)),
        atomic_numbers=np.tile(atoms.numbers, n),
        positions=np.concatenate(geometries).reshape(-1, 3),
        source=np.array([f"validation:{minimum.uuid}"] * n, dtype=object),
    )
    return PESDataset.from_arrays(arrays)


@calcfunction
def validate_against_reference(
    labels: PESDataset,
    minimum: orm.StructureData,
    characterization: orm.Dict,
    step: orm.Float,
    frequencies: orm.Bool,
    transition_state: orm.StructureData | None = None,
) -> orm.Dict:
    """The reference method at the model's own stationary points (eV, eV/Angstrom, cm^-1).

    ``reference_max_force``: the largest reference force at the model minimum; ``frequency_rmse``: model vs
    reference harmonic frequencies there; ``barrier_error``: model barrier minus the reference barrier
    between the model's minimum and TS geometries. A geometry whose reference calculation failed makes the
    quantities that need it None, with the reason in ``problems``.
    """
    from aiida_mlpes.core.characterize.reference_check import reference_at, reference_modes
    from aiida_mlpes.core.convergence import frequency_rmse

    arrays = labels.get_arrays()
    n = int(arrays.n_atoms[0])
    positions = arrays.positions.reshape(-1, n, 3)
    forces = arrays.forces.reshape(-1, n, 3)
    atoms = minimum.get_ase()
    results = characterization.get_dict()
    out: dict[str, Any] = {"problems": [], "frequencies_validated": bool(frequencies.value)}
    try:
        e_min, f_min = reference_at(atoms.positions, positions, arrays.energy, forces)
        out["reference_energy_minimum"] = e_min
        out["reference_max_force"] = float(np.linalg.norm(f_min, axis=1).max())
    except KeyError as exc:
        out["problems"].append(f"minimum: {exc.args[0]}")
    if frequencies.value:
        model = (results.get("frequencies") or {}).get("minimum")
        try:
            modes = reference_modes(
                atoms.numbers, atoms.positions, positions, arrays.energy, forces, step=step.value
            )
            out["reference_frequencies"] = modes.frequencies.tolist()
            out["model_frequencies"] = model
            if model is not None:
                out["frequency_rmse"] = frequency_rmse(model, modes.frequencies)
                out["frequency_max_error"] = float(
                    np.max(np.abs(np.sort(model) - np.sort(modes.frequencies))) if len(model) else 0.0
                )
        except (KeyError, ValueError) as exc:
            out["problems"].append(f"frequencies: {exc.args[0]}")
    if transition_state is not None and "reference_energy_minimum" in out:
        try:
            e_ts, _ = reference_at(transition_state.get_ase().positions, positions, arrays.energy, forces)
            out["reference_barrier"] = e_ts - out["reference_energy_minimum"]
            model_barrier = (results.get("ts") or {}).get("barrier")
            if model_barrier is not None:
                out["model_barrier"] = model_barrier
                out["barrier_error"] = model_barrier - out["reference_barrier"]
        except KeyError as exc:
            out["problems"].append(f"transition state: {exc.args[0]}")
    return orm.Dict(finite_or_none(out))


@calcfunction
def score_new_labels(
    predictions: orm.SinglefileData, kind: orm.Str, threshold: orm.Float, reference_minimum: orm.Float
) -> orm.Dict:
    """Errors of the model on ``kind`` structures it has not trained on, from a ``mlpes.test`` prediction
    file: MAEs (eV, eV/Angstrom), ``confirmed``: structures where the model's energy is more than
    ``threshold`` eV below the reference (real holes), and ``discovered_minima``: indices of confirmed
    structures whose reference energy is also below the reference energy at the model minimum
    (``reference_minimum``, eV; NaN when unknown)."""
    with predictions.as_path() as path:
        data = dict(np.load(path))
    e_ref, e_pred = data["energy_ref"], data["energy_pred"]
    out: dict[str, Any] = {"kind": kind.value, "n": len(e_ref)}
    out["energy_mae"] = float(np.mean(np.abs(e_pred - e_ref)))
    out["energy_max_error"] = float(np.max(np.abs(e_pred - e_ref)))
    if "forces_ref" in data and "forces_pred" in data:
        out["forces_mae"] = float(np.mean(np.abs(data["forces_pred"] - data["forces_ref"])))
    confirmed = np.flatnonzero(e_pred < e_ref - threshold.value)
    out["confirmed"] = len(confirmed)
    below = e_ref[confirmed] < reference_minimum.value - threshold.value
    out["discovered_minima"] = [int(i) for i in confirmed[below]]
    return orm.Dict(finite_or_none(out))


@calcfunction
def lowest_structure(dataset: PESDataset, index: orm.Int) -> orm.StructureData:
    """Conformation ``index`` of a labelled dataset as a structure (a discovered minimum to continue from)."""
    from ase import Atoms

    arrays = dataset.get_arrays().select([index.value])
    return orm.StructureData(ase=Atoms(numbers=arrays.atomic_numbers, positions=arrays.positions))


@calcfunction
def record_iteration(iteration: orm.Int, settings: orm.Dict, **parts: orm.Dict) -> orm.Dict:
    """One iteration's record and the verdict of each criterion (see ``aiida_mlpes.core.convergence``).

    ``parts``: ``characterization`` (results), ``test`` (metrics on the fixed test set), ``validation``,
    ``new_<kind>`` (:func:`score_new_labels`), ``timings``, ``info`` (counts, model uuid) and ``previous``
    (the previous record)."""
    from aiida_mlpes.core.convergence import LoopSettings, assess_iteration

    loop = LoopSettings.from_dict(settings.get_dict())
    get = {key: node.get_dict() for key, node in parts.items()}
    characterization = get.get("characterization", {})
    dmc = characterization.get("dmc") or {}
    scores = [value for key, value in get.items() if key.startswith("new_")]
    new = _pooled(scores)
    record: dict[str, Any] = {
        "iteration": iteration.value,
        **get.get("info", {}),
        "dmc": {
            "outcome": dmc.get("outcome", "completed" if dmc else None),
            "n_holes": dmc.get("n_holes"),
            "zpe": dmc.get("zpe"),
            "zpe_error": dmc.get("zpe_error"),
            "zpe_cm": dmc.get("zpe_cm"),
            "zpe_error_cm": dmc.get("zpe_error_cm"),
        },
        "frequencies": (characterization.get("frequencies") or {}).get("minimum"),
        "barrier": (characterization.get("ts") or {}).get("barrier"),
        "test": get.get("test", {}),
        "new_labels": new,
        "new_labels_by_kind": {s["kind"]: s for s in scores},
        "holes": {
            "found": dmc.get("n_holes", 0),
            "labelled": next((s["n"] for s in scores if s["kind"] == "holes"), 0),
            "confirmed": next((s["confirmed"] for s in scores if s["kind"] == "holes"), 0),
        },
        "discovered_minima": sum(len(s.get("discovered_minima", [])) for s in scores),
        "validation": get.get("validation", {}),
        "timings": get.get("timings", {}),
    }
    assessment = assess_iteration(record, get.get("previous"), loop)
    record.update(assessment)
    return orm.Dict(finite_or_none(record))


def _pooled(scores: list[dict[str, Any]]) -> dict[str, Any]:
    """MAEs over all new structures (weighted by count)."""
    n = sum(int(s.get("n", 0)) for s in scores)
    if not n:
        return {"n": 0}
    out: dict[str, Any] = {"n": n}
    for key in ("energy_mae", "forces_mae"):
        if all(s.get(key) is not None for s in scores):
            out[key] = sum(s[key] * s["n"] for s in scores) / n
    return out


@calcfunction
def collect_history(settings: orm.Dict, **records: orm.Dict) -> dict[str, orm.Data]:
    """``history`` (Dict: the records of ``iteration_<k>`` in order) and ``convergence_plot`` (PNG, with the
    tolerances of the loop ``settings``)."""
    from aiida_mlpes.core.convergence import LoopSettings, plot_convergence

    tolerances = LoopSettings.from_dict(settings.get_dict()).tolerances
    ordered = [records[key].get_dict() for key in sorted(records, key=lambda k: int(k.rsplit("_", 1)[1]))]
    history = orm.Dict({"iterations": ordered, "converged": bool(ordered and ordered[-1].get("converged"))})
    with tempfile.TemporaryDirectory() as tmp:
        path = plot_convergence(ordered, Path(tmp) / "convergence.png", tolerances)
        plot = orm.SinglefileData(io.BytesIO(path.read_bytes()), filename="convergence.png")
    return {"history": history, "convergence_plot": plot}
