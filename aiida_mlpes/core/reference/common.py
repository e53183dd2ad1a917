"""Shared pieces of the reference-program parsers: the parsed result and the failure categories.

Every parser returns a :class:`ReferenceResult` in public units (eV, Angstrom, eV/Angstrom, e*Angstrom, e)
and never raises on a failed calculation: it sets ``status`` to one of the categories below, which the
CalcJob parsers map to exit codes and the work chain maps to fixes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
from ase.data import atomic_numbers as _atomic_numbers

#: The calculation finished and produced the requested results.
OK = "ok"
#: SCF (or another iterative wavefunction stage) did not converge; retry with more iterations / other strategy.
SCF_NOT_CONVERGED = "scf_not_converged"
#: The output stops without an error or a termination line: the run was killed (walltime) or crashed hard.
WALLTIME = "walltime"
#: No output file, an empty one, or a finished output without the requested results.
MISSING_OUTPUT = "missing_output"
#: The program refused the geometry (atoms too close ...) or returned an unphysical energy/gradient.
UNPHYSICAL = "unphysical"
#: Any other error termination of the program.
ERROR = "error"
#: The structure was never started (job stopped before reaching it); only used by batch drivers.
NOT_RUN = "not_run"

#: All failure categories, in the order of severity used when a batch has to report one of them.
CATEGORIES = (OK, SCF_NOT_CONVERGED, WALLTIME, MISSING_OUTPUT, UNPHYSICAL, ERROR, NOT_RUN)

#: A floating-point number, also in Fortran ``D`` notation (``-0.75002282127785D+02``).
FLOAT = r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[EeDd][-+]?\d+)?"
FLOAT_RE = re.compile(FLOAT)


def to_float(text: str) -> float:
    """Parse a number that may use a Fortran ``D`` exponent."""
    return float(text.replace("D", "E").replace("d", "e"))


def symbol_to_number(symbol: str) -> int:
    """Atomic number of an element symbol as printed by a program (``'C'``, ``'CL'``, ``'Mg>'``); 0 if unknown."""
    letters = re.sub(r"[^A-Za-z]", "", symbol)
    return int(_atomic_numbers.get(letters.capitalize(), 0))


@dataclass
class ReferenceResult:
    """What a reference program produced for one structure, in public units.

    ``energy`` (eV), ``forces`` (N, 3) eV/Angstrom, ``dipole`` (3,) e*Angstrom, ``atomic_charges`` (N,) e
    (scheme named in ``charge_scheme``; all schemes found are in ``charges_by_scheme``), ``numbers`` and
    ``positions`` (Angstrom) as echoed by the program. ``energies`` and ``forces_history`` hold every
    energy / gradient block printed (optimisations print several); ``energy``/``forces`` are the last ones.
    ``status`` is one of :data:`CATEGORIES`; ``message`` explains a failure in one line.
    """

    program: str
    status: str = OK
    message: str = ""
    version: str = ""
    energy: float | None = None
    forces: np.ndarray | None = None
    dipole: np.ndarray | None = None
    atomic_charges: np.ndarray | None = None
    charge_scheme: str = ""
    charges_by_scheme: dict[str, np.ndarray] = field(default_factory=dict)
    numbers: np.ndarray | None = None
    positions: np.ndarray | None = None
    energies: list[float] = field(default_factory=list)
    forces_history: list[np.ndarray] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the calculation succeeded."""
        return self.status == OK

    def fail(self, status: str, message: str) -> ReferenceResult:
        """Mark as failed (keeps the first failure if one is already set) and return self."""
        if self.status == OK:
            self.status, self.message = status, message
        return self


#: Fields of a ReferenceResult kept in a JSON record (what the batch parsers use), and the array ones.
RECORD_FIELDS = (
    "status",
    "message",
    "version",
    "energy",
    "forces",
    "dipole",
    "atomic_charges",
    "charge_scheme",
)
_RECORD_ARRAYS = {"forces", "dipole", "atomic_charges", "numbers", "positions"}


def result_to_record(result: ReferenceResult) -> dict:
    """A JSON-serialisable dict of ``result`` (floats round-trip exactly through JSON)."""
    record: dict = {}
    for name in (*RECORD_FIELDS, "numbers", "positions"):
        value = getattr(result, name)
        record[name] = np.asarray(value).tolist() if name in _RECORD_ARRAYS and value is not None else value
    return record


def result_from_record(program: str, record: dict) -> ReferenceResult:
    """The ReferenceResult of a :func:`result_to_record` dict."""
    result = ReferenceResult(program=program)
    for name, value in record.items():
        if name in _RECORD_ARRAYS and value is not None:
            value = np.asarray(value, dtype=np.int64 if name == "numbers" else float)
        setattr(result, name, value)
    return result


def energy_lower_bound(numbers: np.ndarray) -> float:
    """A loose lower bound (Hartree) for a molecule's total energy: -sum Z^3.

    Non-interacting hydrogen-like electrons give -Z^3/2 per atom; electron repulsion only raises the energy
    and chemical binding is tiny on this scale, so anything below twice that bound is an SCF blow-up.
    """
    z = np.asarray(numbers, dtype=float)
    return -float(np.sum(z**3))


def check_physical(result: ReferenceResult, energy_hartree: float | None, gradient_max: float | None) -> None:
    """Flag NaN, a blown-up energy (below :func:`energy_lower_bound`) or a huge gradient (> 10 Eh/bohr)."""
    if energy_hartree is None:
        return
    if not np.isfinite(energy_hartree):
        result.fail(UNPHYSICAL, "energy is not a finite number")
        return
    numbers = result.numbers
    if numbers is not None and len(numbers) and np.any(numbers > 0):
        bound = energy_lower_bound(numbers[numbers > 0])
        if energy_hartree < bound:
            result.fail(
                UNPHYSICAL,
                f"energy {energy_hartree:.6f} Eh is below the physical bound {bound:.1f} Eh for these atoms "
                "(SCF blow-up)",
            )
            return
    if gradient_max is not None and not (np.isfinite(gradient_max) and gradient_max < 10.0):
        result.fail(UNPHYSICAL, f"largest gradient component {gradient_max:.3g} Eh/bohr is unphysical")


#: What a shell or the dynamic loader prints when a program cannot start: a missing executable (bash: "No
#: such file or directory", "command not found"; dash: "not found"), one that is not executable ("Permission
#: denied", "cannot execute") or a missing shared library. Exit status 126/127; the program wrote nothing.
_NOT_STARTED_RE = re.compile(
    r"^.*(?:No such file or directory|command not found|: not found|Permission denied|cannot execute"
    r"|error while loading shared libraries).*$",
    re.MULTILINE,
)


#: How a reader's message starts when the program never started (``"xtb could not be started: ..."``); a retry
#: cannot help, so the work chains exclude such structures at once.
NOT_STARTED = "could not be started: "


def program_not_started(output: str | None, stderr: str | None) -> str | None:
    """The shell's (or loader's) message when the program never started: its ``output`` is empty and
    ``stderr`` says why (naming the executable's path). None when the program ran."""
    if (output or "").strip():
        return None
    match = _NOT_STARTED_RE.search(stderr or "")
    return match.group(0).strip() if match else None


def read_text(path) -> str | None:
    """File contents as text (undecodable bytes replaced), or None if the file does not exist."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        return None
    return path.read_text(errors="replace")
