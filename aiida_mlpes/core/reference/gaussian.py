"""Gaussian (03/09/16): input writer and output parser.

Parsed values are converted to public units: energy Eh -> eV; the ``Forces (Hartrees/Bohr)`` block is a
force already (= -gradient) -> eV/Angstrom; dipole from the archive entry (a.u., input orientation) or
the ``Dipole moment`` block (Debye, standard orientation; identical with ``NoSymm``) -> e*Angstrom.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from ase.data import chemical_symbols

from aiida_mlpes.core.reference import common
from aiida_mlpes.core.reference.common import FLOAT, ReferenceResult, to_float
from aiida_mlpes.core.units import BOHR, DEBYE, HARTREE

_ROUTE_TOKEN_RE = re.compile(r"^[A-Za-z0-9_+\-/(),.=*']+$")
_LINK0_RE = re.compile(r"^[A-Za-z0-9_.]+$")


def _check_route(route: str) -> list[str]:
    if "\n" in route or "\r" in route:
        raise ValueError(f"Gaussian route {route!r} must be one line")
    text = re.sub(r"^#[pPnNtT]?(?=\s)", "", route.strip())
    tokens = (text[1:] if text.startswith("#") else text).split()
    if not tokens:
        raise ValueError("Gaussian route is empty; give e.g. 'PBEPBE/Def2SVP/W06 EmpiricalDispersion=GD3BJ'")
    for token in tokens:
        if not _ROUTE_TOKEN_RE.match(token):
            raise ValueError(f"Gaussian route keyword {token!r} contains characters that are not allowed")
    return tokens


def write_gaussian_input(
    numbers: Sequence[int],
    positions: np.ndarray,
    charge: int,
    multiplicity: int,
    route: str = "PBEPBE/Def2SVP/W06 EmpiricalDispersion=GD3BJ",
    nprocs: int = 1,
    memory: str | None = None,
    title: str = "aiida-mlpes reference calculation",
) -> str:
    """Gaussian input text for one structure (positions in Angstrom).

    ``Force`` and ``NoSymm`` are added to the route if missing (forces, and dipole/forces in the input
    orientation). ``memory`` is a Link0 value such as ``"2GB"``. No checkpoint file is written.
    """
    tokens = _check_route(route)
    lower = [t.lower() for t in tokens]
    if not any(t.startswith("force") for t in lower):
        tokens.append("Force")
    if "nosymm" not in lower:
        tokens.append("NoSymm")
    if not re.match(r"^[A-Za-z0-9 _.,:-]*$", title):
        raise ValueError(f"Gaussian title {title!r} contains characters that are not allowed")
    lines = []
    if nprocs > 1:
        lines.append(f"%nprocshared={int(nprocs)}")
    if memory:
        if not _LINK0_RE.match(memory):
            raise ValueError(f"Gaussian memory {memory!r} is not a plain value such as '2GB'")
        lines.append(f"%mem={memory}")
    lines += [f"#P {' '.join(tokens)}", "", title or "structure", "", f"{int(charge)} {int(multiplicity)}"]
    positions = np.asarray(positions, dtype=float).reshape(-1, 3)
    for z, (x, y, zc) in zip(numbers, positions, strict=True):
        lines.append(f" {chemical_symbols[int(z)]:<3s} {x:20.12f} {y:20.12f} {zc:20.12f}")
    return "\n".join(lines) + "\n\n"


_SCF_RE = re.compile(rf"SCF Done:\s+E\((\S+)\)\s+=\s+({FLOAT})")
_MP2_RE = re.compile(rf"EUMP2\s+=\s+({FLOAT})")
_FORCES_HEADER = re.compile(r"Forces \(Hartrees/Bohr\)")
_FORCES_ROW = re.compile(rf"^\s*\d+\s+\d+\s+({FLOAT})\s+({FLOAT})\s+({FLOAT})\s*$")
_ORIENT_HEADER = re.compile(r"^\s*(Input|Standard|Z-Matrix) orientation:")
_ORIENT_ROW = re.compile(rf"^\s*\d+\s+(\d+)\s+(?:-?\d+\s+)?({FLOAT})\s+({FLOAT})\s+({FLOAT})\s*$")
_MULLIKEN_HEADER = re.compile(r"^\s*Mulliken (?:atomic )?charges(?: and spin densities)?:\s*$")
_HIRSHFELD_HEADER = re.compile(r"^\s*Hirshfeld charges, spin densities, dipoles, and CM5 charges")
_CHARGE_ROW = re.compile(rf"^\s*\d+\s+[A-Za-z]+\s+({FLOAT})(?:\s+{FLOAT})*\s*$")
_DIPOLE_DEBYE_RE = re.compile(
    rf"Dipole moment \(field-independent basis, Debye\):\s*\n\s*X=\s*({FLOAT})\s+Y=\s*({FLOAT})\s+Z=\s*({FLOAT})"
)
_VERSION_RE = re.compile(r"Gaussian (\d\d):\s+(\S+)")
_NORMAL_RE = re.compile(r"Normal termination of Gaussian")

#: Messages in the output and the failure they mean, checked top to bottom.
ERROR_PATTERNS: tuple[tuple[re.Pattern, str], ...] = (
    (re.compile(r"Convergence failure -- run terminated\."), common.SCF_NOT_CONVERGED),
    (
        re.compile(r"Small interatomic distances encountered|Problem with the distance matrix"),
        common.UNPHYSICAL,
    ),
    (re.compile(r"Error termination (?:via Lnk1e in \S+|request processed by link \d+)"), common.ERROR),
    (re.compile(r"Error termination.*"), common.ERROR),
)


def _tables(lines: list[str], header: re.Pattern, row: re.Pattern, skip: int) -> list[list[re.Match]]:
    tables = []
    for i, line in enumerate(lines):
        if header.search(line):
            rows: list[re.Match] = []
            j = i + 1
            while j < len(lines) and (rows or j <= i + skip):
                m = row.match(lines[j])
                if m:
                    rows.append(m)
                elif rows:
                    break
                j += 1
            tables.append(rows)
    return [t for t in tables if t]


def _archive_dipole(lines: list[str]) -> np.ndarray | None:
    """Dipole (a.u., input orientation) from the last archive entry (``1\\1\\...\\@``), or None."""
    start = None
    for i, line in enumerate(lines):
        if line.startswith(" 1\\1\\") or line.startswith(" 1|1|"):
            start = i
    if start is None:
        return None
    parts = []
    for line in lines[start:]:
        parts.append(line[1:] if line.startswith(" ") else line)
        if "@" in line:
            break
    m = re.search(rf"[\\|]Dipole=({FLOAT}),({FLOAT}),({FLOAT})", "".join(parts))
    return np.array([to_float(m.group(k)) for k in (1, 2, 3)]) if m else None


def parse_gaussian_output(text: str, charge_scheme: str = "mulliken") -> ReferenceResult:
    """Parse a Gaussian log into a :class:`ReferenceResult` (last energy, forces, dipole, charges).

    The energy is the last ``SCF Done`` value, or the ``EUMP2`` value printed after it for MP2 runs
    (Fortran ``D`` exponents handled). Mulliken and Hirshfeld charges are kept in ``charges_by_scheme``.
    Failures: SCF convergence failure, error termination, no ``Normal termination`` line (killed).
    """
    result = ReferenceResult(program="gaussian")
    if not text or not text.strip():
        return result.fail(common.MISSING_OUTPUT, "the Gaussian output is empty")
    lines = text.splitlines()
    m = _VERSION_RE.search(text)
    result.version = f"{m.group(1)} {m.group(2)}" if m else ""

    orientation = _tables(lines, _ORIENT_HEADER, _ORIENT_ROW, skip=6)
    input_tables = [t for t in _tables(lines, re.compile(r"Input orientation:"), _ORIENT_ROW, skip=6) if t]
    geometry = input_tables[-1] if input_tables else (orientation[-1] if orientation else None)
    if geometry:
        result.numbers = np.array([int(r.group(1)) for r in geometry], dtype=np.int64)
        result.positions = np.array([[to_float(r.group(k)) for k in (2, 3, 4)] for r in geometry])

    # Energies: each SCF Done, replaced by the MP2 energy when one follows it before the next SCF Done.
    energies_eh: list[float] = []
    for line in lines:
        scf = _SCF_RE.search(line)
        if scf:
            energies_eh.append(to_float(scf.group(2)))
            continue
        mp2 = _MP2_RE.search(line)
        if mp2 and energies_eh:
            energies_eh[-1] = to_float(mp2.group(1))
    result.energies = [e * HARTREE for e in energies_eh]
    if energies_eh:
        result.energy = result.energies[-1]

    forces = [
        np.array([[to_float(r.group(k)) for k in (1, 2, 3)] for r in t])
        for t in _tables(lines, _FORCES_HEADER, _FORCES_ROW, skip=4)
    ]
    result.forces_history = [f * HARTREE / BOHR for f in forces]
    if forces:
        result.forces = result.forces_history[-1]

    dipole_au = _archive_dipole(lines)
    if dipole_au is not None:
        result.dipole = dipole_au * BOHR
    else:
        found = _DIPOLE_DEBYE_RE.findall(text)
        if found:
            result.dipole = np.array([to_float(x) for x in found[-1]]) * DEBYE

    for scheme, header in (("mulliken", _MULLIKEN_HEADER), ("hirshfeld", _HIRSHFELD_HEADER)):
        tables = _tables(lines, header, _CHARGE_ROW, skip=3)
        if tables:
            result.charges_by_scheme[scheme] = np.array([to_float(r.group(1)) for r in tables[-1]])
    if charge_scheme in result.charges_by_scheme:
        result.atomic_charges = result.charges_by_scheme[charge_scheme]
        result.charge_scheme = charge_scheme

    _classify(result, text, energies_eh, forces)
    return result


def _classify(result: ReferenceResult, text: str, energies_eh: list[float], forces: list[np.ndarray]) -> None:
    for pattern, category in ERROR_PATTERNS:
        m = pattern.search(text)
        if m:
            result.fail(category, f"Gaussian: {m.group(0).strip()}")
            return
    if not _NORMAL_RE.search(text):
        result.fail(common.WALLTIME, "Gaussian output ends without 'Normal termination' (killed or walltime)")
        return
    if not energies_eh:
        result.fail(common.MISSING_OUTPUT, "no 'SCF Done' energy in the Gaussian output")
        return
    fmax = float(np.abs(forces[-1]).max()) if forces else None
    common.check_physical(result, energies_eh[-1], fmax)


def read_gaussian(
    directory: str | Path, basename: str = "aiida", charge_scheme: str = "mulliken"
) -> ReferenceResult:
    """Parse ``<basename>.log`` in ``directory``; a missing forces block is a failure (``Force`` was asked).
    An empty log with the shell's message in ``<basename>.err`` (missing executable) is a program error
    naming the path."""
    text = common.read_text(Path(directory) / f"{basename}.log")
    if text is None:
        return ReferenceResult(program="gaussian").fail(
            common.MISSING_OUTPUT, f"Gaussian output {basename}.log was not written"
        )
    not_started = common.program_not_started(text, common.read_text(Path(directory) / f"{basename}.err"))
    if not_started:
        return ReferenceResult(program="gaussian").fail(
            common.ERROR, f"Gaussian {common.NOT_STARTED}{not_started}"
        )
    result = parse_gaussian_output(text, charge_scheme=charge_scheme)
    if result.ok and result.forces is None:
        result.fail(common.MISSING_OUTPUT, "Gaussian printed no forces block (is Force in the route?)")
    return result
