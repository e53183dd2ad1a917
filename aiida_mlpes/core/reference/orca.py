"""ORCA (versions 3-6): input writer and parsers for the output and the ``.engrad`` file.

Parsed values are converted to public units: energy Eh -> eV, gradient Eh/bohr -> forces eV/Angstrom
(forces = -gradient), dipole a.u. (e*bohr) -> e*Angstrom, charges in e.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from ase.data import chemical_symbols

from aiida_mlpes.core.reference import common
from aiida_mlpes.core.reference.common import FLOAT, ReferenceResult, to_float
from aiida_mlpes.core.units import BOHR, HARTREE

#: A keyword line token: letters, digits and the punctuation ORCA keywords use (``def2/J``, ``D3BJ``, ``CPCM(Water)``).
_KEYWORD_RE = re.compile(r"^[A-Za-z0-9_+\-/(),.=*']+$")
#: Block names, option names and simple values of ``%block`` sections.
_WORD_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_\[\]]*$")
_VALUE_RE = re.compile(r"^[A-Za-z0-9_+\-.\"/]+$")


def _check_keywords(keywords: str) -> list[str]:
    if any(c in keywords for c in "\n\r%"):
        raise ValueError(f"ORCA keywords {keywords!r} must be one line without '%' blocks")
    tokens = keywords.replace("!", " ").split()
    if not tokens:
        raise ValueError("ORCA keywords are empty; give e.g. 'RI PBE D3BJ def2-SVP def2/J EnGrad'")
    for token in tokens:
        if not _KEYWORD_RE.match(token) or token == "*":
            raise ValueError(
                f"ORCA keyword {token!r} contains characters that are not allowed in a keyword line"
            )
    return tokens


def _format_blocks(blocks: Mapping[str, Mapping[str, object]]) -> list[str]:
    lines = []
    for name, options in blocks.items():
        if not _WORD_RE.match(name):
            raise ValueError(f"ORCA block name {name!r} is not a plain word")
        lines.append(f"%{name}")
        for key, value in options.items():
            text = str(value).lower() if isinstance(value, bool) else str(value)
            if not _WORD_RE.match(key) or not _VALUE_RE.match(text):
                raise ValueError(f"ORCA block %{name}: option {key!r} = {value!r} is not a plain word/number")
            lines.append(f"  {key} {text}")
        lines.append("end")
    return lines


def write_orca_input(
    numbers: Sequence[int],
    positions: np.ndarray,
    charge: int,
    multiplicity: int,
    keywords: str = "RI PBE D3BJ def2-SVP def2/J EnGrad",
    blocks: Mapping[str, Mapping[str, object]] | None = None,
    nprocs: int = 1,
    maxcore: int | None = None,
) -> str:
    """ORCA input text for one structure (positions in Angstrom).

    ``keywords`` is the ``!`` line; ``EnGrad`` is added if missing so the gradient is written.
    ``blocks`` adds ``%name`` sections, e.g. ``{"scf": {"MaxIter": 500}}``. Tokens are checked so no
    free text (newlines, ``*`` geometry markers, ``%`` blocks) can be smuggled into the file.
    """
    tokens = _check_keywords(keywords)
    if not any(t.lower() == "engrad" for t in tokens):
        tokens.append("EnGrad")
    lines = [f"! {' '.join(tokens)}"]
    if nprocs > 1:
        lines += [f"%pal nprocs {int(nprocs)} end"]
    if maxcore:
        lines += [f"%maxcore {int(maxcore)}"]
    lines += _format_blocks(blocks or {})
    lines.append(f"* xyz {int(charge)} {int(multiplicity)}")
    positions = np.asarray(positions, dtype=float).reshape(-1, 3)
    for z, (x, y, zc) in zip(numbers, positions, strict=True):
        lines.append(f"  {chemical_symbols[int(z)]:<3s} {x:20.12f} {y:20.12f} {zc:20.12f}")
    lines.append("*")
    return "\n".join(lines) + "\n"


def parse_engrad(text: str) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """Parse an ORCA ``.engrad`` file (also written by xtb).

    Returns ``(energy eV, forces (N, 3) eV/Angstrom, atomic numbers (N,), positions (N, 3) Angstrom)``.
    """
    values = [
        line.split() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]
    n = int(values[0][0])
    energy = to_float(values[1][0])
    gradient = np.array([to_float(v[0]) for v in values[2 : 2 + 3 * n]]).reshape(n, 3)
    rows = values[2 + 3 * n : 2 + 4 * n]
    numbers = np.array([int(r[0]) for r in rows], dtype=np.int64)
    positions = np.array([[to_float(x) for x in r[1:4]] for r in rows]) * BOHR
    return energy * HARTREE, -gradient * HARTREE / BOHR, numbers, positions


def _blocks_after(
    lines: list[str], header: re.Pattern, row: re.Pattern, skip: int = 8
) -> list[list[re.Match]]:
    """Every table that follows a line matching ``header``: consecutive ``row`` matches, started within ``skip``
    lines of the header (dashes, blank and column-title lines are skipped)."""
    tables = []
    for i, line in enumerate(lines):
        if not header.search(line):
            continue
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
    return tables


_GRADIENT_HEADER = re.compile(r"^\s*CARTESIAN GRADIENT\s*$", re.IGNORECASE)
_GRADIENT_ROW = re.compile(rf"^\s*\d+\s+[A-Za-z]+\S*\s*:\s+({FLOAT})\s+({FLOAT})\s+({FLOAT})\s*$")
_MP2_GRADIENT_HEADER = re.compile(r"The final MP2 gradient")
_MP2_GRADIENT_ROW = re.compile(rf"^\s*\d+:\s+({FLOAT})\s+({FLOAT})\s+({FLOAT})\s*$")
_COORD_HEADER = re.compile(r"^CARTESIAN COORDINATES \(ANGSTROEM\)")
_COORD_ROW = re.compile(rf"^\s+([A-Za-z]{{1,2}}\S*)\s+({FLOAT})\s+({FLOAT})\s+({FLOAT})\s*$")
_CHARGE_ROW = re.compile(rf"^\s*\d+\s+[A-Za-z]+\S*\s*:\s+({FLOAT})(?:\s+{FLOAT})?\s*$")
_HIRSHFELD_ROW = re.compile(rf"^\s*\d+\s+[A-Za-z]+\S*\s+({FLOAT})\s+{FLOAT}\s*$")
_CHARGE_HEADERS = {
    "mulliken": re.compile(r"^MULLIKEN ATOMIC CHARGES"),
    "loewdin": re.compile(r"^LOEWDIN ATOMIC CHARGES"),
    "hirshfeld": re.compile(r"^\s*ATOM\s+CHARGE\s+SPIN"),
}
_ENERGY_RE = re.compile(rf"FINAL SINGLE POINT ENERGY\s+({FLOAT})(.*)$")
_DIPOLE_RE = re.compile(rf"Total Dipole Moment\s*:\s+({FLOAT})\s+({FLOAT})\s+({FLOAT})")
_VERSION_RE = re.compile(r"Program Version\s+(\S+)")

#: Messages in the output and the failure they mean, checked top to bottom.
ERROR_PATTERNS: tuple[tuple[re.Pattern, str], ...] = (
    (re.compile(r"SCF NOT CONVERGED AFTER\s+\d+\s+CYCLES"), common.SCF_NOT_CONVERGED),
    (
        re.compile(r"Wavefunction not fully converged|IS NOT FULLY CONVERGED", re.IGNORECASE),
        common.SCF_NOT_CONVERGED,
    ),
    (re.compile(r"ORCA finished by error termination in SCF\b"), common.SCF_NOT_CONVERGED),
    (re.compile(r"ORCA finished by error termination in \w+"), common.ERROR),
    (re.compile(r"aborting the run|Aborting the run"), common.ERROR),
    (re.compile(r"(?:INPUT ERROR|UNRECOGNIZED OR DUPLICATED KEYWORD)"), common.ERROR),
)
_NORMAL_RE = re.compile(r"\*\*\*\*ORCA TERMINATED NORMALLY\*\*\*\*")


def parse_orca_output(text: str, charge_scheme: str = "mulliken") -> ReferenceResult:
    """Parse an ORCA output (stdout) into a :class:`ReferenceResult` (last energy, gradient, dipole, charges).

    ``charge_scheme`` chooses ``atomic_charges`` among ``mulliken``, ``loewdin``, ``hirshfeld`` (all found
    schemes are kept in ``charges_by_scheme``). Failures: error terminations, an unconverged SCF or
    wavefunction (even when ORCA terminated normally), a missing ``TERMINATED NORMALLY`` line (killed) and
    an energy below the physical bound (SCF blow-up) are all reported in ``status``.
    """
    result = ReferenceResult(program="orca")
    if not text or not text.strip():
        return result.fail(common.MISSING_OUTPUT, "the ORCA output is empty")
    lines = text.splitlines()
    m = _VERSION_RE.search(text)
    result.version = m.group(1) if m else ""

    coords = _blocks_after(lines, _COORD_HEADER, _COORD_ROW)
    if coords and coords[-1]:
        rows = coords[-1]
        result.numbers = np.array([common.symbol_to_number(r.group(1)) for r in rows], dtype=np.int64)
        result.positions = np.array([[to_float(r.group(k)) for k in (2, 3, 4)] for r in rows])

    energies_eh = []
    for line in lines:
        m = _ENERGY_RE.search(line)
        if m:
            energies_eh.append(to_float(m.group(1)))
    result.energies = [e * HARTREE for e in energies_eh]

    tables = [t for t in _blocks_after(lines, _GRADIENT_HEADER, _GRADIENT_ROW) if t]
    tables += [t for t in _blocks_after(lines, _MP2_GRADIENT_HEADER, _MP2_GRADIENT_ROW) if t]
    gradients = [np.array([[to_float(r.group(k)) for k in (1, 2, 3)] for r in t]) for t in tables]
    result.forces_history = [-g * HARTREE / BOHR for g in gradients]

    dipoles = _DIPOLE_RE.findall(text)
    if dipoles:
        result.dipole = np.array([to_float(x) for x in dipoles[-1]]) * BOHR

    for scheme, header in _CHARGE_HEADERS.items():
        row = _HIRSHFELD_ROW if scheme == "hirshfeld" else _CHARGE_ROW
        found = [t for t in _blocks_after(lines, header, row, skip=3) if t]
        if found:
            result.charges_by_scheme[scheme] = np.array([to_float(r.group(1)) for r in found[-1]])
    if charge_scheme in result.charges_by_scheme:
        result.atomic_charges = result.charges_by_scheme[charge_scheme]
        result.charge_scheme = charge_scheme

    if energies_eh:
        result.energy = result.energies[-1]
    if result.forces_history:
        result.forces = result.forces_history[-1]

    _classify(result, text, energies_eh, gradients)
    return result


def _classify(
    result: ReferenceResult, text: str, energies_eh: list[float], gradients: list[np.ndarray]
) -> None:
    for pattern, category in ERROR_PATTERNS:
        m = pattern.search(text)
        if m:
            result.fail(category, f"ORCA: {m.group(0).strip()}")
            return
    if not _NORMAL_RE.search(text):
        result.fail(
            common.WALLTIME, "ORCA output ends without 'ORCA TERMINATED NORMALLY' (killed or walltime)"
        )
        return
    if not energies_eh:
        result.fail(common.MISSING_OUTPUT, "no 'FINAL SINGLE POINT ENERGY' in the ORCA output")
        return
    gmax = float(np.abs(gradients[-1]).max()) if gradients else None
    common.check_physical(result, energies_eh[-1], gmax)


def read_orca(
    directory: str | Path, basename: str = "aiida", charge_scheme: str = "mulliken"
) -> ReferenceResult:
    """Parse ``<basename>.out`` in ``directory``; take the gradient from ``<basename>.engrad`` when present
    (more digits than the printed table), the rest from the output. An empty output with the shell's
    message in ``<basename>.err`` (missing executable) is a program error naming the path."""
    directory = Path(directory)
    text = common.read_text(directory / f"{basename}.out")
    if text is None:
        return ReferenceResult(program="orca").fail(
            common.MISSING_OUTPUT, f"ORCA output {basename}.out was not written"
        )
    not_started = common.program_not_started(text, common.read_text(directory / f"{basename}.err"))
    if not_started:
        return ReferenceResult(program="orca").fail(common.ERROR, f"ORCA {common.NOT_STARTED}{not_started}")
    result = parse_orca_output(text, charge_scheme=charge_scheme)
    engrad = common.read_text(directory / f"{basename}.engrad")
    if engrad and result.ok:
        energy, forces, numbers, positions = parse_engrad(engrad)
        result.energy, result.forces = energy, forces
        result.numbers, result.positions = numbers, positions
    elif result.ok and result.forces is None:
        result.fail(common.MISSING_OUTPUT, "ORCA printed no gradient (is EnGrad in the keywords?)")
    return result
