"""The result every sampler returns, and the errors that keep partial results.

A sampler returns a :class:`SampleResult`: the sampled conformations as
:class:`~aiida_mlpes.core.ragged.RaggedArrays` (with the driver's energy/forces/dipole/charges when every
sample has them), the driver energies along the whole trajectory, and bookkeeping. When the driver fails
the sampler raises :class:`SamplingError`, whose ``result`` holds everything sampled up to the failure
(``result.failed`` is True), so no sample is lost. Units: eV, Angstrom, e.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aiida_mlpes.core.ragged import RaggedArrays

#: Driver result keys copied into the samples, and their RaggedArrays field names.
RESULT_FIELDS = {"energy": "energy", "forces": "forces", "dipole": "dipole", "charges": "atomic_charges"}


class DriverError(RuntimeError):
    """The driver raised or returned non-finite values; ``completed`` holds results of a batch finished
    before the failure (list of result dicts)."""

    def __init__(self, message: str, completed: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.completed = completed or []


class SamplingError(RuntimeError):
    """A sampler stopped early; ``result`` is the partial :class:`SampleResult` (``failed`` set)."""

    def __init__(self, message: str, result: SampleResult) -> None:
        super().__init__(message)
        self.result = result


@dataclass
class SampleResult:
    """Sampled conformations and the trajectory they came from.

    Attributes:
        sampler: name of the sampler ("md", "mc", "normal_mode_sampling", ...).
        samples: the sampled conformations (positions Angstrom; driver energy eV, forces eV/Angstrom,
            dipole e*Angstrom, atomic charges e when available for every sample).
        sample_system: (M,) index of the input system each sample comes from.
        sample_data: per-sample extras, arrays of length M (e.g. ``harmonic_energy``, ``scan_modes``).
        trajectory: per-step arrays of equal length T: ``energy`` (driver energy, eV), ``system``, and
            sampler-specific ones (``temperature`` K, ``bias_energy`` eV ...).
        systems: one dict per input system (frequencies, acceptance ratio, ...).
        info: seed, timings (``wall_time_s``, ``driver_time_s``, ``driver_calls``) and sampler settings.
        failed: True when the sampler stopped early; ``message`` says why.
    """

    sampler: str
    samples: RaggedArrays
    sample_system: np.ndarray
    sample_data: dict[str, np.ndarray] = field(default_factory=dict)
    trajectory: dict[str, np.ndarray] = field(default_factory=dict)
    systems: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    failed: bool = False
    message: str = ""

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def trajectory_energy(self) -> np.ndarray:
        """(T,) driver energies along the trajectory, eV."""
        return self.trajectory["energy"]

    def summary(self) -> dict[str, Any]:
        """JSON-serialisable overview: counts, timings, per-system info, failure message."""
        return _jsonable(
            {
                "sampler": self.sampler,
                "n_samples": len(self),
                "n_trajectory": len(self.trajectory.get("energy", ())),
                "failed": self.failed,
                "message": self.message,
                "info": self.info,
                "systems": self.systems,
            }
        )


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    return value


class SampleCollector:
    """Accumulates samples and trajectory steps while a sampler runs; builds the :class:`SampleResult`.

    ``monitor`` (a :class:`~aiida_mlpes.core.sampling.drivers.MonitoredCalculator`) supplies driver timings.
    """

    def __init__(self, sampler: str, n_systems: int, seed: int, monitor: Any, settings: Mapping[str, Any]):
        self.sampler = sampler
        self.monitor = monitor
        self.start = time.perf_counter()
        self.info: dict[str, Any] = {"seed": seed, "settings": dict(settings)}
        self.systems: list[dict[str, Any]] = [{} for _ in range(n_systems)]
        self._samples: list[tuple[int, np.ndarray, np.ndarray, Mapping[str, Any]]] = []
        self._sample_data: dict[str, list] = {}
        self._steps: dict[str, list] = {"energy": [], "system": []}
        # where the sampler is, for error messages: system index, step (or sample) number and its unit
        self.system: int | None = None
        self.step: int | None = None
        self.unit = "step"
        self.phase: str | None = None  # e.g. "the harmonic analysis": replaces the step in messages

    def add_sample(
        self,
        system: int,
        numbers: np.ndarray,
        positions: np.ndarray,
        results: Mapping[str, Any],
        **extra: Any,
    ) -> None:
        """Keep one conformation with the driver ``results`` computed for exactly these positions."""
        self._samples.append((system, np.array(numbers), np.array(positions, dtype=float), dict(results)))
        for key, value in extra.items():
            self._sample_data.setdefault(key, []).append(value)

    def add_step(self, system: int, energy: float, **extra: float) -> None:
        """Record one trajectory step: driver energy (eV) and sampler-specific per-step values."""
        self._steps["energy"].append(energy)
        self._steps["system"].append(system)
        for key, value in extra.items():
            self._steps.setdefault(key, []).append(value)

    def add_steps(self, system: int, energies: np.ndarray, **extra: np.ndarray) -> None:
        """Record several trajectory steps at once: driver energies (eV) and per-step arrays of equal length."""
        n = len(energies)
        self._steps["energy"].extend(np.asarray(energies, dtype=float).tolist())
        self._steps["system"].extend([system] * n)
        for key, values in extra.items():
            if len(values) != n:
                raise ValueError(f"add_steps: {key} has {len(values)} values for {n} steps")
            self._steps.setdefault(key, []).extend(np.asarray(values).tolist())

    def __len__(self) -> int:
        return len(self._samples)

    def result(self, failed: bool = False, message: str = "") -> SampleResult:
        info = dict(self.info)
        info["wall_time_s"] = time.perf_counter() - self.start
        info["driver_time_s"] = self.monitor.time
        info["driver_calls"] = self.monitor.calls
        n_steps = len(self._steps["energy"])
        trajectory = {
            key: np.asarray(values, dtype=np.int64 if key == "system" else float)
            for key, values in self._steps.items()
            if len(values) == n_steps
        }
        return SampleResult(
            sampler=self.sampler,
            samples=self._arrays(),
            sample_system=np.array([s[0] for s in self._samples], dtype=np.int64),
            sample_data={key: np.asarray(values) for key, values in self._sample_data.items()},
            trajectory=trajectory,
            systems=[dict(s) for s in self.systems],
            info=info,
            failed=failed,
            message=message,
        )

    def _arrays(self) -> RaggedArrays:
        samples = self._samples
        if not samples:
            return RaggedArrays(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 3)))
        kwargs: dict[str, Any] = {}
        for key, name in RESULT_FIELDS.items():
            values = [s[3].get(key) for s in samples]
            if all(v is not None for v in values):
                arrays = [np.asarray(v, dtype=float) for v in values]
                kwargs[name] = np.concatenate(arrays) if key in ("forces", "charges") else np.stack(arrays)
        return RaggedArrays(
            n_atoms=np.array([len(s[1]) for s in samples]),
            atomic_numbers=np.concatenate([s[1] for s in samples]),
            positions=np.concatenate([s[2] for s in samples]),
            **kwargs,
        )

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Turn a :class:`DriverError` inside the block into a :class:`SamplingError` with the partial result."""
        try:
            yield
        except DriverError as exc:
            where = "" if self.system is None else f" on system {self.system}"
            if self.phase:
                where += f" during {self.phase}"
            elif self.step is not None:
                where += f" at {self.unit} {self.step}"
            message = f"{self.sampler}: the driver failed{where}: {exc}; {len(self)} samples kept"
            raise SamplingError(message, self.result(failed=True, message=message)) from exc
