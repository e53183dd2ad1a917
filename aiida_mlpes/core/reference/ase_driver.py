"""Label RaggedArrays with any ASE calculator named in the settings, one structure after the other.

The calculator is chosen from a fixed registry (name -> import path); user text is never evaluated.
Settings look like ``{"calculator": "tblite", "method": "GFN2-xTB"}`` or
``{"calculator": "pyscf", "method": "PBE", "basis": "def2-svp"}``; every key except ``calculator`` is
passed to the calculator's constructor and must be a JSON scalar or list.
A failing structure does not stop the batch: it is reported with a category from
:mod:`aiida_mlpes.core.reference.common`. Each structure gets a fresh calculator so labels do not depend
on the order of the batch (tblite, for one, restarts from the previous wavefunction and converges to
slightly different forces); ``"reuse_calculator": true`` trades that for speed.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ase import Atoms

from aiida_mlpes.core.ragged import RaggedArrays
from aiida_mlpes.core.reference import common

#: Calculator name -> (import path "module:Class", keyword for charge, keyword for multiplicity).
#: ``None`` keywords mean the calculator reads ``atoms.info['charge'/'multiplicity']`` (set anyway).
CALCULATORS: dict[str, tuple[str, str | None, str | None]] = {
    "tblite": ("tblite.ase:TBLite", "charge", "multiplicity"),
    "pyscf": ("aiida_mlpes.core.reference.pyscf_calculator:PySCFCalculator", "charge", "multiplicity"),
    "psi4": ("ase.calculators.psi4:Psi4", "charge", "multiplicity"),
    "xtb-python": ("xtb.ase.calculator:XTB", None, None),
    "emt": ("ase.calculators.emt:EMT", None, None),
    "lj": ("ase.calculators.lj:LennardJones", None, None),
    "morse": ("ase.calculators.morse:MorsePotential", None, None),
}


def _check_value(key: str, value: Any) -> None:
    ok = isinstance(value, (str, int, float, bool)) or value is None
    if isinstance(value, (list, tuple)):
        ok = all(isinstance(v, (str, int, float, bool)) for v in value)
    if not ok:
        raise ValueError(
            f"calculator setting {key!r} must be a string, number, bool or list of them, got {value!r}"
        )


def calculator_class(name: str) -> type:
    """Import the ASE calculator class registered as ``name``."""
    try:
        target = CALCULATORS[name]
    except KeyError:
        raise ValueError(
            f"unknown calculator {name!r}; registered: {', '.join(sorted(CALCULATORS))}"
        ) from None
    module_name, class_name = target[0].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"calculator {name!r} needs the package providing {module_name}: {exc}") from None
    return getattr(module, class_name)


def make_calculator(settings: dict[str, Any], charge: int = 0, multiplicity: int = 1):
    """Construct the calculator described by ``settings`` for a molecule of this charge/multiplicity."""
    settings = dict(settings)
    name = settings.pop("calculator", None)
    if not isinstance(name, str):
        raise ValueError(
            "settings need a 'calculator' name, e.g. {'calculator': 'tblite', 'method': 'GFN2-xTB'}"
        )
    for key, value in settings.items():
        _check_value(key, value)
    cls = calculator_class(name)
    _, charge_kw, mult_kw = CALCULATORS[name]
    if charge_kw:
        settings.setdefault(charge_kw, int(charge))
    if mult_kw:
        settings.setdefault(mult_kw, int(multiplicity))
    return cls(**settings)


def classify_exception(exc: BaseException) -> str:
    """Failure category for an exception raised by a calculator."""
    text = f"{type(exc).__name__} {exc}".lower()
    if "converge" in text:
        return common.SCF_NOT_CONVERGED
    if "too close" in text or "overlap" in text or "distance" in text:
        return common.UNPHYSICAL
    return common.ERROR


@dataclass
class LabelResult:
    """Labelled conformations (``arrays``, in the order of ``indices`` into the input) and failures by index."""

    arrays: RaggedArrays
    indices: list[int]
    failures: dict[int, dict[str, str]] = field(default_factory=dict)


def label_arrays(
    arrays: RaggedArrays,
    settings: dict[str, Any],
    charge: int = 0,
    multiplicity: int = 1,
    indices: Iterable[int] | None = None,
    on_result: Callable[[int, dict[str, Any]], None] | None = None,
) -> LabelResult:
    """Compute energy and forces (plus dipole and charges when the calculator gives them) for each
    conformation in ``indices`` (default all) with one calculator instance.

    ``on_result(index, record)`` is called after every structure (record: ``status`` and, when ok,
    ``energy``, ``forces``, ``dipole``, ``charges``), e.g. to write progress that survives a walltime kill.
    """
    settings = dict(settings)
    reuse = bool(settings.pop("reuse_calculator", False))
    calc = make_calculator(settings, charge, multiplicity)
    indices = list(range(len(arrays)) if indices is None else indices)
    images: list[Atoms] = []
    done: list[int] = []
    failures: dict[int, dict[str, str]] = {}
    for i in indices:
        sl = arrays.atom_slice(i)
        atoms = Atoms(numbers=arrays.atomic_numbers[sl], positions=arrays.positions[sl])
        atoms.info.update(charge=int(charge), multiplicity=int(multiplicity))
        if not reuse and (images or failures):
            calc = make_calculator(settings, charge, multiplicity)
        atoms.calc = calc
        try:
            energy = float(atoms.get_potential_energy())
            forces = np.array(atoms.get_forces())
            extra = {}
            for prop in ("dipole", "charges"):
                if prop in calc.implemented_properties and prop in calc.results:
                    extra[prop] = np.array(calc.results[prop], dtype=float)
        except Exception as exc:  # a calculator may raise anything; report it per structure
            failures[i] = {"category": classify_exception(exc), "message": f"{type(exc).__name__}: {exc}"}
            calc.reset()
            if on_result:
                on_result(i, {"status": failures[i]["category"], "message": failures[i]["message"]})
            continue
        if not np.isfinite(energy) or not np.isfinite(forces).all():
            failures[i] = {"category": common.UNPHYSICAL, "message": "non-finite energy or forces"}
            continue
        from ase.calculators.singlepoint import SinglePointCalculator

        snapshot = atoms.copy()
        snapshot.info["charge"] = int(charge)
        snapshot.calc = SinglePointCalculator(snapshot, energy=energy, forces=forces, **extra)
        images.append(snapshot)
        done.append(i)
        if on_result:
            record = {"status": common.OK, "energy": energy, "forces": forces.tolist()}
            record.update({k: v.tolist() for k, v in extra.items()})
            on_result(i, record)
    labelled = RaggedArrays.from_atoms(images)
    return LabelResult(arrays=labelled, indices=done, failures=failures)


def records_to_arrays(
    arrays: RaggedArrays, records: dict[int, dict[str, Any]], charge: int = 0
) -> LabelResult:
    """Rebuild a :class:`LabelResult` from per-structure records (as passed to ``on_result``), e.g. read
    back from a progress file after the job was killed."""
    images, done, failures = [], [], {}
    from ase.calculators.singlepoint import SinglePointCalculator

    for i, rec in sorted(records.items()):
        if rec.get("status") != common.OK:
            failures[i] = {"category": rec.get("status", common.ERROR), "message": rec.get("message", "")}
            continue
        atoms = arrays.to_atoms(i)
        atoms.info["charge"] = int(charge)
        extra = {k: np.asarray(rec[k]) for k in ("dipole", "charges") if k in rec}
        atoms.calc = SinglePointCalculator(
            atoms, energy=rec["energy"], forces=np.asarray(rec["forces"]), **extra
        )
        images.append(atoms)
        done.append(i)
    return LabelResult(arrays=RaggedArrays.from_atoms(images), indices=done, failures=failures)


def settings_label(settings: dict[str, Any]) -> str:
    """A short level-of-theory string from calculator settings, e.g. ``tblite GFN2-xTB`` or
    ``pyscf PBE def2-svp d3bj`` (a dispersion correction is part of the level of theory)."""
    parts = [str(settings.get("calculator", ""))]
    for key in ("method", "xc", "basis", "dispersion"):
        if settings.get(key) not in (None, ""):
            parts.append(str(settings[key]))
    return " ".join(parts) if len(parts) > 1 else json.dumps(settings, sort_keys=True)
