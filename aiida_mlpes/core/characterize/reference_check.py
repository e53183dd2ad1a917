"""Check a model's stationary point against the reference method, from reference single points alone.

Any program that gives energies and forces (xTB, ORCA, Gaussian, PySCF, any ASE calculator) also gives
harmonic frequencies by central differences of its forces, so the refinement loop validates every model the
same way: it labels :func:`validation_geometries` (the model's minimum and its 6N displaced copies) with the
reference method, like any other structures, and :func:`reference_modes` turns those labels into the
reference Hessian through the same projection code the model's frequencies use. Units: Angstrom, eV,
eV/Angstrom, cm^-1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from aiida_mlpes.core.characterize.frequencies import DEFAULT_STEP, NormalModes, normal_modes

#: Positions are matched after rounding to this many decimals (Angstrom); datasets store float64.
_DECIMALS = 6


def _key(positions: np.ndarray) -> bytes:
    return np.round(np.asarray(positions, dtype=float), _DECIMALS).tobytes()


class _Recorder:
    """A Potential that records the geometries it is asked for and answers zeros."""

    def __init__(self) -> None:
        self.requests: list[np.ndarray] = []

    def __call__(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        positions = np.asarray(positions, dtype=float)
        self.requests.append(positions.copy())
        return np.zeros(len(positions)), np.zeros_like(positions)


class LabelledPotential:
    """A Potential that answers from reference labels of exactly the geometries it is asked for.

    Raises ``KeyError`` naming how many requested geometries have no label (e.g. a reference calculation
    that failed and was excluded).
    """

    def __init__(self, positions: np.ndarray, energies: np.ndarray, forces: np.ndarray) -> None:
        self._table = {
            _key(p): (float(e), np.asarray(f, dtype=float))
            for p, e, f in zip(positions, energies, forces, strict=True)
        }

    def __call__(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        positions = np.asarray(positions, dtype=float)
        found = [self._table.get(_key(p)) for p in positions]
        missing = sum(item is None for item in found)
        if missing:
            raise KeyError(f"{missing} of {len(positions)} geometries have no reference label")
        energies = np.array([item[0] for item in found if item is not None])
        forces = np.stack([item[1] for item in found if item is not None])
        return energies, forces


def validation_geometries(
    positions: np.ndarray, step: float = DEFAULT_STEP, frequencies: bool = True
) -> np.ndarray:
    """Geometries (K, N, 3) to label: ``positions`` first, then (with ``frequencies``) the 6N displaced
    copies that :func:`normal_modes` requests for central differences of step ``step`` Angstrom."""
    positions = np.asarray(positions, dtype=float)
    if not frequencies:
        return positions[None].copy()
    recorder = _Recorder()
    normal_modes(recorder, np.ones(len(positions), dtype=int), positions, step=step, project=False)
    return np.concatenate([positions[None], *recorder.requests])


def reference_modes(
    numbers: Sequence[int] | np.ndarray,
    positions: np.ndarray,
    labelled_positions: np.ndarray,
    energies: np.ndarray,
    forces: np.ndarray,
    masses: Sequence[float] | np.ndarray | None = None,
    step: float = DEFAULT_STEP,
) -> NormalModes:
    """Reference normal modes at ``positions`` from labels of :func:`validation_geometries` (any order)."""
    potential = LabelledPotential(labelled_positions, energies, forces)
    # translations and rotations are projected out explicitly: a finite-difference Hessian of a program is
    # only approximately translation invariant, so the "auto" test of normal_modes would keep them
    return normal_modes(potential, numbers, positions, masses, step=step, project=True)


def reference_at(
    positions: np.ndarray, labelled_positions: np.ndarray, energies: np.ndarray, forces: np.ndarray
) -> tuple[float, np.ndarray]:
    """Reference energy (eV) and forces (N, 3) of the labelled geometry equal to ``positions``."""
    energy, force = LabelledPotential(labelled_positions, energies, forces)(np.asarray(positions)[None])
    return float(energy[0]), force[0]
