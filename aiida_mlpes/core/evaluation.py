"""Model evaluation: predictions, MAE / RMSE / 1-r^2 per property, prediction files and PNG plots.

Units: energy eV, forces eV/Angstrom, dipole e*Angstrom, atomic charges e. The figures follow the Asparagus
test report (paper section 3.2): prediction vs reference, error histogram, error vs energy, learning curves.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aiida_mlpes.core.ragged import RaggedArrays

#: Properties compared with the reference, with their units (for labels).
UNITS = {"energy": "eV", "forces": "eV/Å", "dipole": "e·Å", "atomic_charges": "e"}


def predict(
    model: torch.nn.Module | str | Path,
    arrays: RaggedArrays,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> dict[str, np.ndarray]:
    """Model predictions for every conformation of ``arrays``, as float64 numpy arrays in the ragged layout:
    ``energy`` (M,), ``forces`` (sum n, 3) and, if the model predicts charges, ``dipole`` (M, 3) and
    ``atomic_charges`` (sum n,). Raises ValueError if the data hold elements the model was not trained on.

    ``model`` may be a model file. For a committee (file or :class:`~.models.Committee`) the values are the
    committee means, evaluated in one batched call per batch, plus their spread ``<key>_std`` (ddof=0) and
    ``forces_std_max`` (M,): the largest per-atom norm of the force std (eV/Angstrom)."""
    from aiida_mlpes.core.models import Committee, collate, committee_statistics, load_model

    if isinstance(model, (str, Path)):
        model = load_model(model, device=device or "cpu")
    assert isinstance(model, torch.nn.Module)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    committee = isinstance(model, Committee)
    was_training = model.training
    model.eval()
    parts: dict[str, list[np.ndarray]] = {}
    try:
        for start in range(0, len(arrays), batch_size):
            idx = np.arange(start, min(start + batch_size, len(arrays)))
            batch = collate(arrays, idx, device=device, dtype=dtype)
            out = model(batch, compute_forces=True, create_graph=False)
            for key in ("energy", "forces", "dipole", "atomic_charges"):
                if key in out:
                    parts.setdefault(key, []).append(out[key].detach().cpu().double().numpy())
    finally:
        model.train(was_training)
    if not parts:
        return {"energy": np.zeros(0), "forces": np.zeros((0, 3))}
    if committee:  # member axis first: concatenate conformations along axis 1, then reduce over members
        owner = np.repeat(np.arange(len(arrays)), arrays.n_atoms)
        members = {key: np.concatenate(values, axis=1) for key, values in parts.items()}
        return committee_statistics(members, owner, len(arrays))
    return {key: np.concatenate(values) for key, values in parts.items()}


def metrics(prediction: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """MAE, RMSE and 1 - r^2 (r: Pearson correlation over all components) of ``prediction`` vs ``reference``."""
    pred = np.asarray(prediction, dtype=np.float64).reshape(-1)
    ref = np.asarray(reference, dtype=np.float64).reshape(-1)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction has {pred.size} values but reference {ref.size}")
    if pred.size == 0:
        raise ValueError("no values to compare")
    err = pred - ref
    out = {"mae": float(np.mean(np.abs(err))), "rmse": float(np.sqrt(np.mean(err**2))), "n": int(pred.size)}
    if pred.size > 1 and np.std(pred) > 0 and np.std(ref) > 0:
        r = float(np.corrcoef(pred, ref)[0, 1])
        out["one_minus_r2"] = 1.0 - r * r
    else:
        out["one_minus_r2"] = float("nan")
    return out


def compute_metrics(
    predictions: Mapping[str, np.ndarray], arrays: RaggedArrays
) -> dict[str, dict[str, float]]:
    """:func:`metrics` for every property present in both ``predictions`` and the reference ``arrays``."""
    out = {}
    for name in UNITS:
        reference = getattr(arrays, name)
        if name in predictions and reference is not None:
            out[name] = metrics(predictions[name], reference)
    return out


def write_predictions(
    predictions: Mapping[str, np.ndarray], arrays: RaggedArrays, prefix: str | Path
) -> list[Path]:
    """Write ``<prefix>.npz`` (reference and predicted arrays, ragged layout) and ``<prefix>.csv`` (one row per
    conformation: energies, energy error, force MAE and max error, dipoles). Returns the two paths."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    npz: dict[str, Any] = {
        "n_atoms": arrays.n_atoms,
        "atomic_numbers": arrays.atomic_numbers,
        "positions": arrays.positions,
    }
    for name in UNITS:
        if name in predictions:
            npz[f"{name}_pred"] = predictions[name]
        if getattr(arrays, name) is not None:
            npz[f"{name}_ref"] = getattr(arrays, name)
    npz_path = prefix.with_suffix(".npz")
    np.savez(npz_path, **npz)

    columns = ["index", "n_atoms"]
    per_conf: dict[str, np.ndarray] = {}
    if arrays.energy is not None and "energy" in predictions:
        per_conf["energy_ref"] = arrays.energy
        per_conf["energy_pred"] = predictions["energy"]
        per_conf["energy_error"] = predictions["energy"] - arrays.energy
    if arrays.forces is not None and "forces" in predictions:
        err = np.linalg.norm(predictions["forces"] - arrays.forces, axis=1)
        owner = np.repeat(np.arange(len(arrays)), arrays.n_atoms)
        per_conf["forces_mae"] = np.bincount(
            owner, np.abs(predictions["forces"] - arrays.forces).mean(axis=1), len(arrays)
        ) / np.maximum(arrays.n_atoms, 1)
        max_err = np.zeros(len(arrays))
        np.maximum.at(max_err, owner, err)
        per_conf["forces_max_error"] = max_err
    if "dipole" in predictions:
        for k, axis in enumerate("xyz"):
            if arrays.dipole is not None:
                per_conf[f"dipole_ref_{axis}"] = arrays.dipole[:, k]
            per_conf[f"dipole_pred_{axis}"] = predictions["dipole"][:, k]
    columns += list(per_conf)
    csv_path = prefix.with_suffix(".csv")
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for i in range(len(arrays)):
            writer.writerow([i, int(arrays.n_atoms[i]), *[f"{per_conf[c][i]:.10g}" for c in per_conf]])
    return [npz_path, csv_path]


def evaluate_model(
    model: torch.nn.Module,
    arrays: RaggedArrays,
    outdir: str | Path | None = None,
    batch_size: int = 256,
    learning_curve: str | Path | None = None,
) -> dict[str, Any]:
    """Predict, compute metrics and, with ``outdir``, write predictions and plots there.

    Returns ``{"metrics": {property: {mae, rmse, one_minus_r2, n}}, "predictions": ..., "files": [paths]}``.
    """
    predictions = predict(model, arrays, batch_size=batch_size)
    result: dict[str, Any] = {
        "metrics": compute_metrics(predictions, arrays),
        "predictions": predictions,
        "files": [],
    }
    if outdir is not None:
        outdir = Path(outdir)
        files = write_predictions(predictions, arrays, outdir / "predictions")
        files += plot_all(predictions, arrays, outdir)
        if learning_curve is not None and Path(learning_curve).exists():
            files.append(plot_learning_curves(learning_curve, outdir / "learning_curves.png"))
        result["files"] = files
    return result


# -- plots (matplotlib, Agg backend: no display needed) ----------------------------------------------------------
def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _pairs(
    predictions: Mapping[str, np.ndarray], arrays: RaggedArrays
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {
        name: (np.asarray(getattr(arrays, name)).reshape(-1), np.asarray(predictions[name]).reshape(-1))
        for name in UNITS
        if name in predictions and getattr(arrays, name) is not None
    }


def _grid(plt: Any, n: int) -> tuple[Any, np.ndarray]:
    fig, axes = plt.subplots(1, max(n, 1), figsize=(4.2 * max(n, 1), 4.0), squeeze=False)
    return fig, axes[0]


def plot_correlation(predictions: Mapping[str, np.ndarray], arrays: RaggedArrays, path: str | Path) -> Path:
    """Predicted vs reference values, one panel per property, with the y = x line and MAE/RMSE."""
    plt = _pyplot()
    pairs = _pairs(predictions, arrays)
    fig, axes = _grid(plt, len(pairs))
    for ax, (name, (ref, pred)) in zip(axes, pairs.items(), strict=False):
        m = metrics(pred, ref)
        ax.scatter(ref, pred, s=6, alpha=0.6)
        lo, hi = float(min(ref.min(), pred.min())), float(max(ref.max(), pred.max()))
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_xlabel(f"reference {name} ({UNITS[name]})")
        ax.set_ylabel(f"predicted {name} ({UNITS[name]})")
        ax.set_title(f"MAE {m['mae']:.3g}, RMSE {m['rmse']:.3g} {UNITS[name]}", fontsize=9)
    return _save(plt, fig, path)


def plot_error_histogram(
    predictions: Mapping[str, np.ndarray], arrays: RaggedArrays, path: str | Path
) -> Path:
    """Histogram of prediction errors, one panel per property."""
    plt = _pyplot()
    pairs = _pairs(predictions, arrays)
    fig, axes = _grid(plt, len(pairs))
    for ax, (name, (ref, pred)) in zip(axes, pairs.items(), strict=False):
        ax.hist(pred - ref, bins=min(50, max(5, len(ref) // 5)))
        ax.set_xlabel(f"{name} error ({UNITS[name]})")
        ax.set_ylabel("count")
    return _save(plt, fig, path)


def plot_error_vs_energy(
    predictions: Mapping[str, np.ndarray], arrays: RaggedArrays, path: str | Path
) -> Path:
    """Per-conformation energy error and mean absolute force error against the reference energy (relative
    to the lowest reference energy)."""
    plt = _pyplot()
    if arrays.energy is None or "energy" not in predictions:
        raise ValueError("plot_error_vs_energy needs reference and predicted energies")
    energy = arrays.energy - arrays.energy.min()
    panels = [("energy error (eV)", predictions["energy"] - arrays.energy)]
    if arrays.forces is not None and "forces" in predictions:
        owner = np.repeat(np.arange(len(arrays)), arrays.n_atoms)
        abs_err = np.abs(predictions["forces"] - arrays.forces).mean(axis=1)
        panels.append(
            ("force MAE per structure (eV/Å)", np.bincount(owner, abs_err, len(arrays)) / arrays.n_atoms)
        )
    fig, axes = _grid(plt, len(panels))
    for ax, (label, values) in zip(axes, panels, strict=False):
        ax.scatter(energy, values, s=6, alpha=0.6)
        ax.axhline(0.0, color="k", lw=0.8)
        ax.set_xlabel("reference energy above the lowest (eV)")
        ax.set_ylabel(label)
    return _save(plt, fig, path)


def plot_learning_curves(curve: str | Path, path: str | Path) -> Path:
    """Train and validation loss (log scale) and validation MAE per property against the epoch."""
    from aiida_mlpes.core.training.log import read_curve

    plt = _pyplot()
    columns = read_curve(curve)
    epoch = np.asarray(columns["epoch"])
    fig, axes = _grid(plt, 2)
    axes[0].semilogy(epoch, columns["train_loss"], label="train")
    valid = np.asarray(columns["valid_loss"])
    ok = np.isfinite(valid)
    axes[0].semilogy(epoch[ok], valid[ok], "o-", ms=3, label="validation (EMA)")
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("loss")
    axes[0].legend()
    for name in columns:
        if name.startswith("valid_mae_"):
            values = np.asarray(columns[name])
            ok = np.isfinite(values) & (values > 0)
            if ok.any():
                prop = name[len("valid_mae_") :]
                axes[1].semilogy(epoch[ok], values[ok], "o-", ms=3, label=f"{prop} ({UNITS.get(prop, 'e')})")
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel("validation MAE")
    axes[1].legend()
    return _save(plt, fig, path)


def plot_all(predictions: Mapping[str, np.ndarray], arrays: RaggedArrays, outdir: str | Path) -> list[Path]:
    """Correlation, error histogram and error-vs-energy plots in ``outdir``; returns the paths."""
    outdir = Path(outdir)
    files = [
        plot_correlation(predictions, arrays, outdir / "correlation.png"),
        plot_error_histogram(predictions, arrays, outdir / "error_histogram.png"),
    ]
    if arrays.energy is not None and "energy" in predictions:
        files.append(plot_error_vs_energy(predictions, arrays, outdir / "error_vs_energy.png"))
    return files


def _save(plt: Any, fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
