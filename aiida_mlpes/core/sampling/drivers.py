"""Drivers: the ASE calculators that move the samplers, by name, and a monitor that times them.

``make_driver("tblite", method="GFN2-xTB")`` builds a calculator by name: ``mlpes`` (the project's ML
model) or any name of the reference layer's registry (``tblite``, ``pyscf``, ``xtb`` (xtb-python),
``emt`` (ASE's toy potential, for tests and demos) ...). Heavy packages are imported only when their driver
is made. Any other ASE calculator can be passed to the samplers directly.

:class:`MonitoredCalculator` wraps a driver for the samplers: it measures the time spent inside the driver,
counts calls, checks results are finite, turns any driver exception into
:class:`~aiida_mlpes.core.sampling.results.DriverError`, and evaluates batches through the driver's
``as_potential(numbers)`` when it has one (the ML model), else one structure at a time.
Units: eV, Angstrom, e*Angstrom, e.
"""

from __future__ import annotations

import math
import time
from typing import Any, cast

import numpy as np
from ase import Atoms
from ase.calculators.calculator import (
    Calculator,
    PropertyNotImplementedError,
    all_changes,
)

from aiida_mlpes.core.sampling.results import DriverError

#: Extra driver results copied along with energy and forces when the driver computed them anyway.
EXTRA_RESULTS = ("dipole", "charges")


#: Driver names besides those of :data:`aiida_mlpes.core.reference.ase_driver.CALCULATORS`.
ALIASES = {"xtb": "xtb-python"}


def driver_names() -> list[str]:
    """Names accepted by :func:`make_driver`."""
    from aiida_mlpes.core.reference.ase_driver import CALCULATORS

    return sorted({*CALCULATORS, *ALIASES, "mlpes"})


def make_driver(name: str, **parameters: Any) -> Calculator:
    """An ASE calculator by name, e.g. ``make_driver("tblite", method="GFN1-xTB", charge=1)``.

    ``mlpes`` is the project's ML model (``model`` = path of a saved model, or a list for a committee);
    every other name comes from the reference layer's calculator registry (``tblite``, ``pyscf``,
    ``xtb`` = ``xtb-python``, ``psi4``, ``emt`` ...), with ``charge`` (e) and ``multiplicity`` passed on.
    tblite is silent unless ``verbosity`` is given.
    """
    parameters = dict(parameters)
    if name == "mlpes":
        if "model" not in parameters:
            raise ValueError("driver 'mlpes' needs parameter 'model' (path of a saved model)")
        from aiida_mlpes.core.calculator import MLPESCalculator

        return MLPESCalculator(**parameters)
    from aiida_mlpes.core.reference.ase_driver import CALCULATORS, make_calculator

    name = ALIASES.get(name, name)
    if name not in CALCULATORS:
        raise ValueError(f"unknown driver {name!r}; known drivers: {', '.join(driver_names())}")
    if name == "tblite":
        parameters.setdefault("verbosity", 0)
    charge = parameters.pop("charge", 0)
    multiplicity = parameters.pop("multiplicity", 1)
    try:
        return make_calculator({"calculator": name, **parameters}, charge, multiplicity)
    except TypeError as exc:
        raise ValueError(f"driver {name!r}: bad parameters {parameters}: {exc}") from exc


def level_of_theory(name: str, parameters: dict[str, Any]) -> str:
    """A short label of the driver's level of theory, e.g. "GFN2-xTB" or "PBE/def2-svp"."""
    name = ALIASES.get(name, name)
    if name in ("tblite", "xtb-python"):
        return str(parameters.get("method", "GFN2-xTB"))
    if name in ("pyscf", "psi4"):
        return f"{parameters.get('method', 'PBE')}/{parameters.get('basis', 'def2-svp')}"
    if name == "mlpes":
        return f"mlpes:{parameters.get('model', '')}"
    return name.upper()


class MonitoredCalculator(Calculator):
    """Forward to ``driver``; time it, count calls, check finiteness, raise DriverError on failure.

    Attach it to Atoms like any calculator (the MD samplers do), or call :meth:`evaluate` /
    :meth:`evaluate_many` directly. ``time`` (s) and ``calls`` accumulate over the monitor's life.
    """

    implemented_properties = ["energy", "free_energy", "forces", "dipole", "charges"]

    def __init__(self, driver: Calculator, name: str | None = None) -> None:
        super().__init__()
        if not hasattr(driver, "get_property"):
            raise ValueError(f"driver must be an ASE calculator, got {type(driver).__name__}")
        self.driver = driver
        self.label = name or type(driver).__name__
        self.time = 0.0
        self.calls = 0
        self._fresh = True
        self._driver_atoms: Atoms | None = None
        self._driver_positions = self._driver_numbers = np.zeros(0)
        self._potentials: dict[tuple[int, ...], Any] = {}

    def check_state(self, atoms: Atoms, tol: float = 1e-15) -> list[str]:
        """Exact comparison of positions and numbers only: the samplers own their Atoms and only move them
        (ASE's tolerance-based comparison of every array would cost as much as a fast driver call)."""
        old = self.atoms
        if old is None or not _same(old.numbers, atoms.numbers):
            return list(all_changes)
        return [] if _same(old.positions, atoms.positions) else ["positions"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        if atoms is not None:
            if self.atoms is not None and "numbers" not in system_changes:
                self.atoms.positions[:] = atoms.positions  # cheaper than a copy of the Atoms
            else:
                self.atoms = atoms.copy()
        # ASE passes the Atoms on the first call; a missing one fails inside evaluate (DriverError) as before
        moved = system_changes == ["positions"]
        self.results = self.evaluate(cast(Atoms, self.atoms), forces=True, moved=moved)

    def get_property(self, name: str, atoms: Atoms | None = None, allow_calculation: bool = True) -> Any:
        """As ASE's, without its copy of the Atoms at every call; always computes energy and forces."""
        if name not in self.implemented_properties:
            raise PropertyNotImplementedError(f"{name} property not implemented")
        changes = [] if atoms is None else self.check_state(atoms)
        if changes:
            self.results = {}
        if name not in self.results:
            if not allow_calculation:
                return None
            self.calculate(atoms, [name], changes or list(all_changes))
        if name not in self.results:
            raise PropertyNotImplementedError(f"{name} not present in this calculation")
        result = self.results[name]
        return result.copy() if isinstance(result, np.ndarray) else result

    def reset(self) -> None:
        self.results = {}  # keep self.atoms: calculate() then updates its positions in place

    def restart(self) -> None:
        """Make the next evaluation start the driver afresh (no SCF guess from earlier structures), so a
        sampler run does not depend on what the driver computed before: needed for reproducibility.
        Samplers call it before each system."""
        self._fresh = True
        self.atoms = None
        self.results = {}

    def evaluate(self, atoms: Atoms, forces: bool = True, moved: bool = False) -> dict[str, Any]:
        """Driver results for ``atoms``: ``energy`` (eV), ``forces`` (eV/Angstrom) when asked or computed
        anyway, and ``dipole``/``charges`` when the driver computed them. ``moved``: the caller knows the
        positions differ from the last evaluation (and nothing else does), which saves comparing them.

        ``time`` counts the driver's own calls (``reset``, ``calculate``) only, not this bookkeeping."""
        driver = self.driver
        try:
            last = getattr(driver, "atoms", None)
            ours = (
                not self._fresh
                and last is not None
                and last is self._driver_atoms
                and _same(self._driver_numbers, atoms.numbers)
            )
            if ours:
                # nobody else used the driver since our last call: only positions can differ (compared with
                # our own copy, in case the driver keeps a reference to the Atoms instead of a copy)
                changes = ["positions"] if moved or not _same(self._driver_positions, atoms.positions) else []
            else:
                changes = list(all_changes) if self._fresh else system_changes(last, atoms)
            self._fresh = False
            properties = ["energy", "forces"] if forces else ["energy"]
            start = time.perf_counter()
            try:
                if changes:
                    driver.reset()
                    driver.calculate(atoms, properties, changes)
                elif any(p not in driver.results for p in properties):
                    driver.calculate(atoms, properties, changes)
            finally:
                self.time += time.perf_counter() - start
                self.calls += 1
            self._driver_atoms = getattr(driver, "atoms", None)
            self._driver_positions = atoms.positions.copy()
            if not ours:
                self._driver_numbers = atoms.numbers.copy()
            results = driver.results
            energy = float(results["energy"])
            out: dict[str, Any] = {"energy": energy, "free_energy": energy}
            if "forces" in results:
                out["forces"] = np.array(results["forces"], dtype=float)
            for key in EXTRA_RESULTS:
                if key in results:
                    out[key] = np.array(results[key], dtype=float)
        except Exception as exc:
            raise DriverError(f"{self.label}: {type(exc).__name__}: {exc}") from exc
        if forces and "forces" not in out:
            raise DriverError(f"{self.label} returned no forces")
        _check_finite(self.label, out)
        return out

    def evaluate_many(self, template: Atoms, positions: np.ndarray) -> list[dict[str, Any]]:
        """Results for each of ``positions`` (B, N, 3) with the numbers/charges of ``template``.

        Batched through ``driver.as_potential(numbers)`` when the driver offers it. On a failure the
        DriverError carries the results completed before it (``completed``).
        """
        positions = np.asarray(positions, dtype=float)
        if callable(getattr(self.driver, "as_potential", None)):
            return self._evaluate_batch(template, positions)
        atoms = template.copy()
        done: list[dict[str, Any]] = []
        for pos in positions:
            atoms.positions = pos
            try:
                done.append(self.evaluate(atoms))
            except DriverError as exc:
                raise DriverError(str(exc), completed=done) from exc
        return done

    def _evaluate_batch(self, template: Atoms, positions: np.ndarray) -> list[dict[str, Any]]:
        key = tuple(int(z) for z in template.numbers)
        start = time.perf_counter()
        try:
            if key not in self._potentials:
                charge = getattr(self.driver, "charge", None)
                charge = float(template.info.get("charge", 0.0) if charge is None else charge)
                # evaluate_many only comes here when the driver has ``as_potential``
                driver: Any = self.driver
                self._potentials[key] = driver.as_potential(template.numbers, charge=charge)
            out = self._potentials[key](positions)
            energies, forces = np.asarray(out[0], dtype=float), np.asarray(out[1], dtype=float)
        except Exception as exc:
            raise DriverError(f"{self.label}: {type(exc).__name__}: {exc}") from exc
        finally:
            self.time += time.perf_counter() - start
            self.calls += len(positions)
        done: list[dict[str, Any]] = []
        for e, f in zip(energies, forces, strict=True):
            result = {"energy": float(e), "free_energy": float(e), "forces": f}
            try:
                _check_finite(self.label, result)
            except DriverError as exc:
                raise DriverError(str(exc), completed=done) from exc
            done.append(result)
        return done


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Exact equality of two small arrays (bytes compare: several times cheaper than np.array_equal)."""
    return a.shape == b.shape and a.tobytes() == b.tobytes()


def system_changes(old: Atoms | None, new: Atoms) -> list[str]:
    """What differs between ``old`` (a calculator's last atoms) and ``new``, compared exactly."""
    if old is None:
        return list(all_changes)
    changes = []
    if not np.array_equal(old.positions, new.positions):
        changes.append("positions")
    if not np.array_equal(old.numbers, new.numbers):
        changes.append("numbers")
    if not np.array_equal(old.cell.array, new.cell.array):
        changes.append("cell")
    if not np.array_equal(old.pbc, new.pbc):
        changes.append("pbc")
    for name in ("initial_charges", "initial_magmoms"):
        if not np.array_equal(old.arrays.get(name, 0.0), new.arrays.get(name, 0.0)):
            changes.append(name)
    return changes


def _check_finite(name: str, results: dict[str, Any]) -> None:
    if not math.isfinite(results["energy"]):
        raise DriverError(f"{name} returned a non-finite energy: {results['energy']}")
    if "forces" in results and not math.isfinite(float(results["forces"].sum())):
        raise DriverError(f"{name} returned non-finite forces")
