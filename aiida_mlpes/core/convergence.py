"""When is a machine-learned PES trustworthy? The refinement loop's settings and its stopping rule.

The loop (``ConstructPESWorkChain``) converges only when every criterion of one iteration holds:

- ``dmc``: a DMC run that *completed* (no population collapse or explosion, no equilibration drift, enough
  walker-steps) found no holes;
- ``new_labels``: the model predicts the structures labelled this iteration (fresh geometries from the final
  DMC population and from sampling on the model, plus the holes) *before* it trains on them, within
  ``energy_mae`` (eV) and ``forces_mae`` (eV/Angstrom);
- ``stability``: the tracked properties moved less than their tolerances since the previous iteration:
  harmonic frequencies (cm^-1), the DMC ZPE (eV, beyond its statistical error) and the barrier (eV) when a
  transition state is tracked;
- ``reference``: the reference method agrees with the model at the model's own minimum: reference forces
  there are close to zero (``reference_max_force``, eV/Angstrom), the reference harmonic frequencies at that
  geometry match the model's (``frequency_rmse``, cm^-1) and, with a transition state, the reference barrier
  at the model's stationary points matches the model's (``barrier_error``, eV).

:class:`LoopSettings` is the one typed definition of the loop's knobs: it validates user input (unknown keys
and out-of-range values are errors that name them), documents each knob and fills the protocol defaults.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

#: The criteria in the order they are reported.
CRITERIA = ("dmc", "new_labels", "stability", "reference")


class Tolerances(BaseModel):
    """Convergence tolerances (units in each description)."""

    model_config = ConfigDict(extra="forbid")

    energy_mae: float = Field(
        default=0.01, gt=0, description="eV: MAE of the model on new labels, before training."
    )
    forces_mae: float = Field(
        default=0.1, gt=0, description="eV/Angstrom: force MAE on new labels, before training."
    )
    frequency_change: float = Field(
        default=5.0,
        gt=0,
        description="cm^-1: largest change of a harmonic frequency since the previous iteration.",
    )
    zpe_change: float = Field(
        default=0.003,
        gt=0,
        description="eV: DMC ZPE change since the previous iteration, beyond twice its error.",
    )
    barrier_change: float = Field(
        default=0.005, gt=0, description="eV: barrier change since the previous iteration."
    )
    reference_max_force: float = Field(
        default=0.05, gt=0, description="eV/Angstrom: largest reference force at the model's minimum."
    )
    frequency_rmse: float = Field(
        default=10.0,
        gt=0,
        description="cm^-1: RMSE of the model's vs the reference's frequencies at the model minimum.",
    )
    barrier_error: float = Field(
        default=0.01,
        gt=0,
        description="eV: model barrier minus the reference barrier at the model's geometries.",
    )
    hole_confirmation: float = Field(
        default=0.02,
        gt=0,
        description="eV: a labelled hole is confirmed when the model's energy there is this far below the "
        "reference; a confirmed hole below the reference minimum is a discovered minimum.",
    )


class LoopSettings(BaseModel):
    """Knobs of the refinement loop (``ConstructPESWorkChain`` input ``settings``)."""

    model_config = ConfigDict(extra="forbid")

    max_iterations: int = Field(
        default=6, ge=1, le=100, description="Train/characterize/validate cycles at most."
    )
    min_iterations: int = Field(
        default=2, ge=1, description="Cycles at least: the stability criterion needs a previous iteration."
    )
    committee_size: int = Field(
        default=4,
        ge=2,
        le=32,
        description="Models trained as one committee (query by committee): their disagreement flags DMC "
        "holes and selects new structures. A committee of one has no disagreement and is refused.",
    )
    max_holes_labelled: int = Field(
        default=50, ge=1, description="DMC holes labelled per iteration at most (chosen for diversity)."
    )
    n_candidates: int = Field(
        default=30,
        ge=1,
        description="Fresh geometries per iteration from the final DMC population and MD on the model; "
        "they test the model before it trains on them.",
    )
    sample_transition_state: bool = Field(
        default=True,
        description="With a ts_structure, the initial sampling also samples around the transition state (a "
        "sampler that optimizes first optimizes it to the saddle point), so the barrier region is in the data "
        "from the start.",
    )
    hole_min_distance: float = Field(
        default=0.3,
        gt=0,
        le=1.0,
        description="Angstrom: holes are labelled down to this interatomic distance; closer ones are skipped.",
    )
    retraining: Literal["fine_tune", "scratch"] = Field(
        default="fine_tune",
        description="'fine_tune' continues from the previous committee on all data at a lower learning rate; "
        "'scratch' trains a new committee every iteration.",
    )
    fine_tune_learning_rate_factor: float = Field(
        default=0.3,
        gt=0,
        le=1,
        description="Fine-tuning learning rate as a fraction of the training learning rate.",
    )
    fine_tune_epoch_factor: float = Field(
        default=0.5, gt=0, le=1, description="Fine-tuning epochs as a fraction of the training epochs."
    )
    scratch_fallback: bool = Field(
        default=True,
        description="Retrain from scratch when a fine-tuned committee is worse than its parent on the fixed "
        "test set: energy or force MAE more than 1.5x the parent's and above its tolerance.",
    )
    validate_frequencies: bool = Field(
        default=True,
        description="Compute reference harmonic frequencies at the model minimum by central differences of "
        "reference forces (6N+1 reference calculations per iteration).",
    )
    finite_difference_step: float = Field(
        default=0.005,
        gt=0.0005,
        le=0.05,
        description="Angstrom: displacement of the reference finite differences.",
    )
    tolerances: Tolerances = Field(default_factory=Tolerances, description="Convergence tolerances.")

    @model_validator(mode="after")
    def _iterations(self) -> LoopSettings:
        if self.min_iterations > self.max_iterations:
            raise ValueError(
                f"min_iterations ({self.min_iterations}) exceeds max_iterations ({self.max_iterations})"
            )
        return self

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> LoopSettings:
        """Validated settings; ``ValueError`` naming every unknown key or value out of range."""
        try:
            return cls.model_validate(dict(data or {}))
        except ValidationError as exc:
            raise ValueError(validation_message(exc, "settings")) from None


def validation_message(exc: ValidationError, prefix: str) -> str:
    """One line per problem, each naming the setting: ``settings.tolerances.foo: Extra inputs ...``."""
    lines = []
    for error in exc.errors():
        where = ".".join([prefix, *(str(part) for part in error["loc"])])
        lines.append(f"{where}: {error['msg']}")
    return "; ".join(lines)


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _criterion(passed: bool | None, **values: Any) -> dict[str, Any]:
    return {"passed": passed, **values}


def assess_iteration(
    record: Mapping[str, Any], previous: Mapping[str, Any] | None, settings: LoopSettings
) -> dict[str, Any]:
    """Evaluate the stopping rule for one iteration's ``record`` (see the module docstring).

    ``record`` keys (missing ones count as not measured): ``dmc`` {``outcome``, ``n_holes``, ``zpe``,
    ``zpe_error``} (eV); ``new_labels`` {``n``, ``energy_mae``, ``forces_mae``}; ``frequencies`` (cm^-1, model
    at its minimum); ``barrier`` (eV); ``validation`` {``reference_max_force``, ``frequency_rmse``,
    ``barrier_error``}. Returns ``{"criteria": {name: {"passed": bool, ...values}}, "converged": bool}``;
    a criterion that could not be measured has ``passed`` False and a ``reason``.
    """
    tol = settings.tolerances
    criteria: dict[str, dict[str, Any]] = {}

    dmc = dict(record.get("dmc") or {})
    outcome = dmc.get("outcome")
    n_holes = dmc.get("n_holes")
    criteria["dmc"] = _criterion(
        outcome == "completed" and n_holes == 0,
        outcome=outcome,
        n_holes=n_holes,
        **({} if outcome == "completed" else {"reason": f"DMC did not complete ({outcome})"}),
    )

    new = dict(record.get("new_labels") or {})
    e_mae, f_mae = _finite(new.get("energy_mae")), _finite(new.get("forces_mae"))
    if not new.get("n") or e_mae is None:
        criteria["new_labels"] = _criterion(False, reason="no new structures were labelled and tested")
    else:
        passed = e_mae <= tol.energy_mae and (f_mae is None or f_mae <= tol.forces_mae)
        criteria["new_labels"] = _criterion(
            passed,
            n=int(new["n"]),
            energy_mae=e_mae,
            forces_mae=f_mae,
            tolerance={"energy_mae": tol.energy_mae, "forces_mae": tol.forces_mae},
        )

    criteria["stability"] = _stability(record, previous, tol)

    validation = dict(record.get("validation") or {})
    max_force = _finite(validation.get("reference_max_force"))
    if max_force is None:
        criteria["reference"] = _criterion(False, reason="the model minimum was not validated")
    else:
        checks = {"reference_max_force": (max_force, tol.reference_max_force)}
        rmse = _finite(validation.get("frequency_rmse"))
        if validation.get("frequencies_validated"):
            checks["frequency_rmse"] = (rmse if rmse is not None else math.inf, tol.frequency_rmse)
        if record.get("barrier") is not None:
            error = _finite(validation.get("barrier_error"))
            checks["barrier_error"] = (abs(error) if error is not None else math.inf, tol.barrier_error)
        criteria["reference"] = _criterion(
            all(value <= limit for value, limit in checks.values()),
            **{name: value for name, (value, _) in checks.items()},
            tolerance={name: limit for name, (_, limit) in checks.items()},
        )
    converged = all(c["passed"] for c in criteria.values())
    return {"criteria": criteria, "converged": bool(converged)}


def _stability(
    record: Mapping[str, Any], previous: Mapping[str, Any] | None, tol: Tolerances
) -> dict[str, Any]:
    if not previous:
        return _criterion(False, reason="no previous iteration to compare with")
    values: dict[str, Any] = {}
    passed = True
    freqs, old = record.get("frequencies"), previous.get("frequencies")
    if freqs is None or old is None or len(freqs) != len(old):
        return _criterion(False, reason="harmonic frequencies missing in this or the previous iteration")
    change = float(np.max(np.abs(np.asarray(freqs, float) - np.asarray(old, float)))) if len(freqs) else 0.0
    values["frequency_change"] = change
    passed &= change <= tol.frequency_change
    dmc, old_dmc = dict(record.get("dmc") or {}), dict(previous.get("dmc") or {})
    zpe, old_zpe = _finite(dmc.get("zpe")), _finite(old_dmc.get("zpe"))
    if zpe is None or old_zpe is None:
        return _criterion(False, reason="no finite DMC ZPE in this or the previous iteration", **values)
    noise = 2.0 * math.hypot(_finite(dmc.get("zpe_error")) or 0.0, _finite(old_dmc.get("zpe_error")) or 0.0)
    values["zpe_change"] = abs(zpe - old_zpe)
    passed &= values["zpe_change"] <= tol.zpe_change + noise
    barrier, old_barrier = _finite(record.get("barrier")), _finite(previous.get("barrier"))
    if record.get("barrier") is not None:
        if barrier is None or old_barrier is None:
            return _criterion(False, reason="barrier missing in this or the previous iteration", **values)
        values["barrier_change"] = abs(barrier - old_barrier)
        passed &= values["barrier_change"] <= tol.barrier_change
    return _criterion(
        bool(passed),
        **values,
        tolerance={
            "frequency_change": tol.frequency_change,
            "zpe_change": f"{tol.zpe_change} + {noise:.2g} (2 sigma)",
            "barrier_change": tol.barrier_change,
        },
    )


def frequency_rmse(model: Sequence[float], reference: Sequence[float]) -> float:
    """RMSE (cm^-1) between two sets of harmonic frequencies, compared in ascending order."""
    a, b = np.sort(np.asarray(model, float)), np.sort(np.asarray(reference, float))
    if a.shape != b.shape:
        raise ValueError(f"{len(a)} model frequencies vs {len(b)} reference frequencies")
    return float(np.sqrt(np.mean((a - b) ** 2))) if len(a) else 0.0


def plot_convergence(
    iterations: Sequence[Mapping[str, Any]], path: str | Path, tolerances: Tolerances | None = None
) -> Path:
    """PNG of the loop's history: errors on new labels and the fixed test set, holes, frequency RMSE vs the
    reference, ZPE and barrier per iteration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [int(r["iteration"]) for r in iterations]

    def series(*keys: str) -> list[float]:
        out = []
        for r in iterations:
            value: Any = r
            for key in keys:
                value = value.get(key) if isinstance(value, Mapping) else None
            out.append(np.nan if _finite(value) is None else float(value))
        return out

    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    tol = tolerances or Tolerances()
    panels = [
        (axes[0, 0], "energy", "energy MAE / eV", tol.energy_mae),
        (axes[0, 1], "forces", "force MAE / eV/Angstrom", tol.forces_mae),
    ]
    for ax, name, label, limit in panels:
        ax.semilogy(ks, series("new_labels", f"{name}_mae"), "o-", label="new labels (before training)")
        ax.semilogy(ks, series("test", name, "mae"), "s--", label="fixed test set")
        ax.axhline(limit, color="gray", lw=0.8, ls=":", label="tolerance")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    ax = axes[1, 0]
    ax.plot(ks, series("validation", "frequency_rmse"), "o-", label="frequency RMSE vs reference")
    ax.axhline(tol.frequency_rmse, color="gray", lw=0.8, ls=":", label="tolerance")
    ax.set_ylabel("cm^-1")
    ax.set_ylim(bottom=0)
    holes = ax.twinx()
    holes.plot(ks, series("dmc", "n_holes"), "x:", color="tab:red", label="DMC holes")
    holes.set_ylabel("DMC holes", color="tab:red")
    ax.legend(fontsize=8, loc="upper right")
    ax = axes[1, 1]
    zpe = np.asarray(series("dmc", "zpe"))
    err = np.nan_to_num(np.asarray(series("dmc", "zpe_error")))
    ax.errorbar(ks, zpe, yerr=err, fmt="o-", label="DMC ZPE / eV")
    barrier = series("barrier")
    if not np.all(np.isnan(barrier)):
        ax.plot(ks, barrier, "s--", label="barrier / eV")
    ax.legend(fontsize=8)
    for ax in axes.flat:
        ax.set_xlabel("iteration")
        ax.set_xticks(ks)
    converged = [k for k, r in zip(ks, iterations, strict=True) if r.get("converged")]
    fig.suptitle("Refinement loop" + (f": converged at iteration {converged[0]}" if converged else ""))
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
