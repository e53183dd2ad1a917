"""Input checks, random streams and progress reporting shared by the samplers.

Every check raises ``ValueError`` naming the offending parameter, before any driver call.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
from ase import Atoms

LOGGER = logging.getLogger("aiida_mlpes.sampling")
#: Seconds between progress messages of a long run.
PROGRESS_INTERVAL = 10.0


def check_real(name: str, value: Any, *, minimum: float | None = 0.0, strict: bool = True) -> float:
    """``value`` as a finite float; must be ``> minimum`` (``>=`` when not ``strict``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        relation = ">" if strict else ">="
        raise ValueError(f"{name} must be {relation} {minimum:g}, got {value:g}")
    return value


def check_int(name: str, value: Any, *, minimum: int = 1) -> int:
    """``value`` as an int ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            value = int(value)
        else:
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_frequency_range(value: Sequence[float | None] | None) -> tuple[float, float]:
    """``(low, high)`` in cm^-1 (``None`` = unbounded); imaginary frequencies count as negative."""
    if value is None:
        return (-math.inf, math.inf)
    if isinstance(value, (str, bytes)) or len(value) != 2:
        raise ValueError(
            f"frequency_range must be (low, high) in cm^-1 with None for no bound, got {value!r}"
        )
    low = -math.inf if value[0] is None else check_real("frequency_range[0]", value[0], minimum=None)
    high = math.inf if value[1] is None else check_real("frequency_range[1]", value[1], minimum=None)
    if not low < high:
        raise ValueError(f"frequency_range must have low < high, got ({low:g}, {high:g}) cm^-1")
    return (low, high)


def as_systems(systems: Atoms | Sequence[Atoms]) -> list[Atoms]:
    """Copies of one or several ASE Atoms; checks they are non-empty with finite positions."""
    items = [systems] if isinstance(systems, Atoms) else list(systems)
    if not items:
        raise ValueError("systems: no structures given")
    out = []
    for i, atoms in enumerate(items):
        if not isinstance(atoms, Atoms):
            raise ValueError(f"systems[{i}] is a {type(atoms).__name__}, not ase.Atoms")
        if len(atoms) == 0:
            raise ValueError(f"systems[{i}] has no atoms")
        if not np.all(np.isfinite(atoms.positions)):
            raise ValueError(f"systems[{i}] has non-finite positions")
        copy = atoms.copy()
        copy.calc = None
        out.append(copy)
    return out


def random_streams(seed: int | None, n: int) -> tuple[int, list[np.random.Generator]]:
    """The seed actually used (drawn when ``None``) and ``n`` independent generators, one per system.

    System ``i`` gets the same stream whatever the number of systems, so adding a system does not change
    the samples of the others.
    """
    if seed is None:
        # entropy is an int when none was given (numpy's stubs also allow a sequence or None)
        seed = int(cast(int, np.random.SeedSequence().entropy) % (2**63))
    seed = check_int("seed", seed, minimum=0)
    children = np.random.SeedSequence(seed).spawn(n)
    return seed, [np.random.default_rng(child) for child in children]


class Progress:
    """Log ``label: done/total unit (rate/s)`` at INFO level at most every ``interval`` seconds
    (default :data:`PROGRESS_INTERVAL`), and once at the end."""

    def __init__(self, label: str, total: int, unit: str = "steps", interval: float | None = None) -> None:
        self.label, self.total, self.unit = label, total, unit
        self.interval = PROGRESS_INTERVAL if interval is None else interval
        self.done = 0
        self.start = self.last = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last >= self.interval:
            self.last = now
            self._log(now)

    def close(self) -> None:
        self._log(time.perf_counter())

    def _log(self, now: float) -> None:
        elapsed = max(now - self.start, 1e-12)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else math.inf
        LOGGER.info(
            "%s: %d/%d %s (%.1f %s/s, %.0f s elapsed, ~%.0f s left)",
            self.label,
            self.done,
            self.total,
            self.unit,
            rate,
            self.unit,
            elapsed,
            eta,
        )
