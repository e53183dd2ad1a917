"""Physical constants and unit conversions.

The public API of aiida-mlpes uses eV, Angstrom, e, amu and cm^-1 everywhere. Programs' native units
(Hartree, Bohr, kcal/mol, ...) are converted once, at the boundary, with the tables below. All constants
come from :mod:`ase.units` (CODATA 2014) so that numbers agree with ASE calculators bit for bit.
"""

from __future__ import annotations

from ase import units as _ase_units

#: One Hartree in eV.
HARTREE: float = _ase_units.Hartree
#: One Bohr radius in Angstrom.
BOHR: float = _ase_units.Bohr
#: One kcal/mol in eV.
KCAL_PER_MOL: float = _ase_units.kcal / _ase_units.mol
#: One kJ/mol in eV.
KJ_PER_MOL: float = _ase_units.kJ / _ase_units.mol
#: One Debye in e*Angstrom.
DEBYE: float = _ase_units.Debye
#: Boltzmann constant in eV/K.
KB: float = _ase_units.kB
#: One cm^-1 (wavenumber) in eV.
INV_CM: float = _ase_units.invcm
#: One atomic mass unit in electron masses (atomic unit of mass).
AMU_IN_ME: float = _ase_units._amu / _ase_units._me
#: One atomic unit of time in fs.
AU_TIME_FS: float = _ase_units._aut * 1e15

#: Energy units accepted at import, as eV per unit.
ENERGY_UNITS: dict[str, float] = {
    "eV": 1.0,
    "meV": 1e-3,
    "Hartree": HARTREE,
    "Ha": HARTREE,
    "Eh": HARTREE,
    "kcal/mol": KCAL_PER_MOL,
    "kJ/mol": KJ_PER_MOL,
    "Rydberg": _ase_units.Rydberg,
    "Ry": _ase_units.Rydberg,
}
#: Length units accepted at import, as Angstrom per unit.
LENGTH_UNITS: dict[str, float] = {
    "Angstrom": 1.0,
    "Ang": 1.0,
    "A": 1.0,
    "Bohr": BOHR,
    "bohr": BOHR,
    "au": BOHR,
    "nm": 10.0,
    "pm": 0.01,
}
#: Charge units accepted at import, as e per unit.
CHARGE_UNITS: dict[str, float] = {"e": 1.0, "au": 1.0}
#: Dipole units accepted at import, as e*Angstrom per unit.
DIPOLE_UNITS: dict[str, float] = {
    "eAngstrom": 1.0,
    "e*Angstrom": 1.0,
    "eA": 1.0,
    "Debye": DEBYE,
    "D": DEBYE,
    "au": BOHR,
    "eBohr": BOHR,
    "e*Bohr": BOHR,
}

#: The units in which every dataset and public function works.
PUBLIC_UNITS: dict[str, str] = {
    "energy": "eV",
    "positions": "Angstrom",
    "forces": "eV/Angstrom",
    "dipole": "e*Angstrom",
    "charge": "e",
    "atomic_charges": "e",
    "masses": "amu",
    "frequencies": "cm^-1",
}


def _lookup(table: dict[str, float], unit: str, kind: str) -> float:
    try:
        return table[unit]
    except KeyError:
        known = ", ".join(sorted(table))
        raise ValueError(f"Unknown {kind} unit {unit!r}; known units: {known}") from None


def energy_factor(unit: str) -> float:
    """Factor that converts an energy in ``unit`` to eV."""
    return _lookup(ENERGY_UNITS, unit, "energy")


def length_factor(unit: str) -> float:
    """Factor that converts a length in ``unit`` to Angstrom."""
    return _lookup(LENGTH_UNITS, unit, "length")


def dipole_factor(unit: str) -> float:
    """Factor that converts a dipole in ``unit`` to e*Angstrom."""
    return _lookup(DIPOLE_UNITS, unit, "dipole")


def charge_factor(unit: str) -> float:
    """Factor that converts a charge in ``unit`` to e."""
    return _lookup(CHARGE_UNITS, unit, "charge")


def force_factor(energy_unit: str, length_unit: str) -> float:
    """Factor that converts a force in ``energy_unit/length_unit`` to eV/Angstrom."""
    return energy_factor(energy_unit) / length_factor(length_unit)
