"""xTB (``xtb`` executable, 6.x): command-line arguments and parsers for its output and files.

xtb writes the ``energy`` and ``gradient`` files (Turbomole format, Eh and Eh/bohr) with ``--grad``,
``xtbout.json`` with ``--json`` (energy Eh, dipole a.u., partial charges e), ``charges`` (e) and prints
the dipole in its stdout. ``normal termination of xtb`` goes to stderr, errors to stdout and stderr.
With ``--namespace NAME`` every file name is prefixed by ``NAME.``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from ase.data import chemical_symbols

from aiida_mlpes.core.reference import common
from aiida_mlpes.core.reference.common import FLOAT, ReferenceResult, to_float
from aiida_mlpes.core.units import BOHR, HARTREE

#: Methods and the xtb flags that select them.
METHODS: dict[str, list[str]] = {
    "GFN2-xTB": ["--gfn", "2"],
    "GFN1-xTB": ["--gfn", "1"],
    "GFN0-xTB": ["--gfn", "0"],
    "GFN-FF": ["--gfnff"],
}
SOLVATION_MODELS = ("alpb", "gbsa")
_SOLVENT_RE = re.compile(r"^[A-Za-z0-9]+$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


def write_xyz(numbers: Sequence[int], positions: np.ndarray, comment: str = "") -> str:
    """XYZ text (Angstrom) for one structure."""
    positions = np.asarray(positions, dtype=float).reshape(-1, 3)
    lines = [str(len(numbers)), comment.replace("\n", " ")]
    for z, (x, y, zc) in zip(numbers, positions, strict=True):
        lines.append(f"{chemical_symbols[int(z)]:<3s} {x:20.12f} {y:20.12f} {zc:20.12f}")
    return "\n".join(lines) + "\n"


def xtb_arguments(
    xyz_name: str,
    charge: int,
    multiplicity: int,
    method: str = "GFN2-xTB",
    accuracy: float | None = None,
    iterations: int | None = None,
    electronic_temperature: float | None = None,
    solvent: str | None = None,
    solvation_model: str = "alpb",
    namespace: str | None = None,
) -> list[str]:
    """Argument list (no shell) for an xtb energy + gradient run on ``xyz_name``.

    ``multiplicity`` 2S+1 becomes ``--uhf`` (2S unpaired electrons). ``accuracy`` and ``iterations`` are
    SCC settings (``--acc``, ``--iterations``), ``electronic_temperature`` in K (``--etemp``).
    """
    if method not in METHODS:
        raise ValueError(f"xtb method {method!r} is unknown; choose one of {', '.join(METHODS)}")
    if int(multiplicity) < 1:
        raise ValueError(f"multiplicity must be >= 1, got {multiplicity}")
    for name, value in (("xyz_name", xyz_name), ("namespace", namespace)):
        if value is not None and not _NAME_RE.match(value):
            raise ValueError(f"xtb {name} {value!r} must be a plain file name")
    args = [xyz_name, *METHODS[method], "--grad", "--json", "--norestart"]
    args += ["--chrg", str(int(charge)), "--uhf", str(int(multiplicity) - 1)]
    if accuracy is not None:
        args += ["--acc", f"{float(accuracy):g}"]
    if iterations is not None:
        args += ["--iterations", str(int(iterations))]
    if electronic_temperature is not None:
        args += ["--etemp", f"{float(electronic_temperature):g}"]
    if solvent:
        if solvation_model not in SOLVATION_MODELS or not _SOLVENT_RE.match(solvent):
            raise ValueError(f"xtb solvation {solvation_model!r} / solvent {solvent!r} not recognised")
        args += [f"--{solvation_model}", solvent]
    if namespace:
        args += ["--namespace", namespace]
    return args


def parse_energy_file(text: str) -> float:
    """Energy (eV) of the last cycle in a Turbomole ``$energy`` file written by xtb."""
    rows = [line.split() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("$")]
    return to_float(rows[-1][1]) * HARTREE


def parse_gradient_file(text: str) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """Last cycle of a Turbomole ``$grad`` file: ``(energy eV, forces (N,3) eV/A, numbers, positions A)``."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if "cycle =" in line]
    if not starts:
        raise ValueError("no 'cycle =' line in the gradient file")
    head = lines[starts[-1]]
    match = re.search(rf"energy =\s+({FLOAT})", head)
    if match is None:
        raise ValueError(f"no energy on the gradient file's cycle line {head!r}")
    energy = to_float(match.group(1)) * HARTREE
    coords, grads = [], []
    for line in lines[starts[-1] + 1 :]:
        parts = line.split()
        if not parts or parts[0].startswith("$") or "cycle =" in line:
            break
        if len(parts) == 4:
            coords.append(parts)
        elif len(parts) == 3:
            grads.append([to_float(p) for p in parts])
    numbers = np.array([common.symbol_to_number(c[3]) for c in coords], dtype=np.int64)
    positions = np.array([[to_float(x) for x in c[:3]] for c in coords]).reshape(-1, 3) * BOHR
    forces = -np.array(grads).reshape(-1, 3) * HARTREE / BOHR
    if len(forces) != len(numbers):
        raise ValueError(f"gradient file has {len(numbers)} coordinate rows but {len(forces)} gradient rows")
    return energy, forces, numbers, positions


def parse_xtbout_json(text: str) -> dict:
    """``xtbout.json`` in public units: ``energy`` eV, ``dipole`` e*Angstrom, ``charges`` e, plus
    ``method``, ``version`` and ``gap`` (HOMO-LUMO gap, eV) when present."""
    data = json.loads(text)
    out: dict = {"method": data.get("method", ""), "version": data.get("xtb version", "")}
    if "total energy" in data:
        out["energy"] = float(data["total energy"]) * HARTREE
    if "dipole" in data:
        out["dipole"] = np.asarray(data["dipole"], dtype=float) * BOHR
    if "partial charges" in data:
        out["charges"] = np.asarray(data["partial charges"], dtype=float)
    if "HOMO-LUMO gap/eV" in data:
        out["gap"] = float(data["HOMO-LUMO gap/eV"])
    return out


def parse_charges_file(text: str) -> np.ndarray:
    """Atomic partial charges (e) from xtb's ``charges`` file, one per line."""
    return np.array([to_float(line.split()[0]) for line in text.splitlines() if line.strip()])


_TOTAL_RE = re.compile(rf"\|\s+TOTAL ENERGY\s+({FLOAT})\s+Eh")
_OLD_TOTAL_RE = re.compile(rf"^total E\s+:\s+({FLOAT})", re.MULTILINE)
_STEP_RE = re.compile(rf"::\s+total energy\s+({FLOAT})\s+Eh")
_DIPOLE_RE = re.compile(
    rf"molecular dipole:.*?\n.*?\n.*?\n\s+full:\s+({FLOAT})\s+({FLOAT})\s+({FLOAT})\s+{FLOAT}", re.DOTALL
)
_VERSION_RE = re.compile(r"(?:xtb version|^\s*\|\s+Version)\s+(\S+)", re.MULTILINE)
#: Messages (stdout or stderr) and the failure they mean, checked top to bottom.
ERROR_PATTERNS: tuple[tuple[re.Pattern, str], ...] = (
    (
        re.compile(r"Self consistent charge iterator did not converge|SCC did not converge", re.I),
        common.SCF_NOT_CONVERGED,
    ),
    (
        re.compile(r"atoms in the start geometry are \*very\* close|REFUSES TO CONTINUE", re.I),
        common.UNPHYSICAL,
    ),
    (re.compile(r"abnormal termination of xtb|\[ERROR\] Program stopped.*|ERROR STOP"), common.ERROR),
)


def parse_xtb_output(stdout: str, stderr: str = "") -> ReferenceResult:
    """Parse xtb's stdout (and stderr): final energy, per-step energies, dipole, version, failures.

    Gradients and charges are not in stdout with full precision: see :func:`read_xtb`.
    """
    result = ReferenceResult(program="xtb")
    text = stdout or ""
    not_started = common.program_not_started(text, stderr)
    if not_started:
        return result.fail(common.ERROR, f"xtb {common.NOT_STARTED}{not_started}")
    if not text.strip() and not (stderr or "").strip():
        return result.fail(common.MISSING_OUTPUT, "the xtb output is empty")
    m = _VERSION_RE.search(text)
    result.version = m.group(1) if m else ""
    energies = [to_float(x) for x in _TOTAL_RE.findall(text)] or [
        to_float(x) for x in _OLD_TOTAL_RE.findall(text)
    ]
    steps = [to_float(x) for x in _STEP_RE.findall(text)]
    result.energies = [e * HARTREE for e in (steps or energies)]
    if energies:
        result.energy = energies[-1] * HARTREE
    found = _DIPOLE_RE.findall(text)
    if found:
        result.dipole = np.array([to_float(x) for x in found[-1]]) * BOHR

    both = text + "\n" + (stderr or "")
    for pattern, category in ERROR_PATTERNS:
        m = pattern.search(both)
        if m:
            # the most specific message: the '-1-' line of xtb's error stack when there is one
            detail = re.search(r"-1- (.*)", both)
            result.fail(category, f"xtb: {(detail.group(1) if detail else m.group(0)).strip()}")
            return result
    if "finished run" not in text and "normal termination of xtb" not in (stderr or ""):
        return result.fail(common.WALLTIME, "xtb output ends without 'finished run' (killed or walltime)")
    if not energies:
        return result.fail(common.MISSING_OUTPUT, "no TOTAL ENERGY in the xtb output")
    return result


def read_xtb(
    directory: str | Path,
    namespace: str | None = None,
    stdout_name: str | None = None,
    stderr_name: str | None = None,
) -> ReferenceResult:
    """Collect one xtb run in ``directory``: stdout (status, dipole), ``energy`` and ``gradient`` files,
    ``xtbout.json`` (dipole and charges) or ``charges``. File names get the ``namespace.`` prefix if given.
    """
    directory = Path(directory)
    prefix = f"{namespace}." if namespace else ""
    stdout = common.read_text(directory / (stdout_name or f"{prefix}out")) or ""
    stderr = common.read_text(directory / (stderr_name or f"{prefix}err")) or ""
    result = parse_xtb_output(stdout, stderr)
    if not result.ok:
        return result
    gradient = common.read_text(directory / f"{prefix}gradient")
    if gradient is None:
        return result.fail(common.MISSING_OUTPUT, f"xtb wrote no {prefix}gradient file (was --grad given?)")
    energy, forces, numbers, positions = parse_gradient_file(gradient)
    energy_file = common.read_text(directory / f"{prefix}energy")
    result.energy = parse_energy_file(energy_file) if energy_file else energy
    result.forces, result.numbers, result.positions = forces, numbers, positions
    result.forces_history = [forces]
    js = common.read_text(directory / f"{prefix}xtbout.json")
    if js:
        data = parse_xtbout_json(js)
        if "dipole" in data:
            result.dipole = data["dipole"]
        if "charges" in data:
            result.charges_by_scheme["xtb"] = data["charges"]
    charges = common.read_text(directory / f"{prefix}charges")
    if charges and "xtb" not in result.charges_by_scheme:
        result.charges_by_scheme["xtb"] = parse_charges_file(charges)
    if "xtb" in result.charges_by_scheme:
        result.atomic_charges, result.charge_scheme = result.charges_by_scheme["xtb"], "xtb"
    common.check_physical(result, result.energy / HARTREE, float(np.abs(forces).max()) * BOHR / HARTREE)
    return result


def run_xtb(
    numbers: Sequence[int],
    positions: np.ndarray,
    charge: int = 0,
    multiplicity: int = 1,
    executable: str = "xtb",
    workdir: str | Path | None = None,
    threads: int = 1,
    **options,
) -> ReferenceResult:
    """Run the ``xtb`` executable once (argument list, no shell) and parse it; ``options`` go to
    :func:`xtb_arguments`. Runs in a temporary folder unless ``workdir`` is given."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(workdir) if workdir is not None else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "mol.xyz").write_text(write_xyz(numbers, positions))
        args = xtb_arguments("mol.xyz", charge, multiplicity, **options)
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(int(threads)),
            "OMP_STACKSIZE": os.environ.get("OMP_STACKSIZE", "1G"),
        }
        with (folder / "out").open("w") as out, (folder / "err").open("w") as err:
            subprocess.run([executable, *args], cwd=folder, stdout=out, stderr=err, env=env, check=False)
        return read_xtb(folder)


def parse_vibspectrum(text: str) -> np.ndarray:
    """Wavenumbers (cm^-1) of all 3N modes in xtb's Turbomole-style ``vibspectrum`` file (``xtb --hess``);
    translations/rotations are the (near-)zero ones, imaginary modes are negative."""
    values = []
    for line in text.splitlines():
        parts = line.split()
        if not parts or parts[0].startswith(("$", "#")):
            continue
        # "mode [symmetry] wavenumber intensity IR RAMAN": the wavenumber is the first float after the mode
        numbers = [p for p in parts[1:] if re.fullmatch(FLOAT, p)]
        values.append(to_float(numbers[0]))
    return np.array(values)
