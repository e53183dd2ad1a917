"""An ASE calculator around PySCF: energy and analytic gradients for DFT (any libxc functional), HF and MP2,
optionally with Grimme's D3(BJ) dispersion correction (tad-dftd3), e.g. PBE-D3BJ/def2-SVP.

Units at the boundary: PySCF works in Hartree and Bohr; results are eV, eV/Angstrom, e*Angstrom, e.
Charge and multiplicity come from the parameters or from ``atoms.info['charge'/'multiplicity']``.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, CalculatorError, all_changes

from aiida_mlpes.core.reference.validation import check_charge_multiplicity
from aiida_mlpes.core.units import BOHR, HARTREE

#: Wavefunction methods; any other ``method`` is taken as an exchange-correlation functional (DFT).
WAVEFUNCTION_METHODS = ("HF", "MP2")


class SCFNotConvergedError(CalculatorError):
    """PySCF's SCF did not converge within ``max_cycle`` iterations."""


class PySCFCalculator(Calculator):
    """Energy, forces, dipole and Mulliken charges from PySCF (restricted if closed shell, else unrestricted).

    Parameters (all optional): ``method`` ("PBE", "B3LYP", "HF", "MP2" ...), ``basis`` ("def2-svp"),
    ``charge``, ``multiplicity``, ``conv_tol`` (Eh), ``max_cycle``, ``grid_level`` (DFT grids 0-9),
    ``density_fit`` (RI-J with the default auxiliary basis), ``level_shift`` (Eh), ``damping`` (0-1),
    ``reuse_density`` (start each SCF from the last converged density of the same molecule: faster for
    nearby geometries, but results then depend on the order within ``conv_tol``), ``dispersion``
    (None or "d3bj": D3 with Becke-Johnson damping and the functional's parameters, added to energy and
    forces; needs tad-dftd3), ``dispersion_three_body`` (include the ATM term with D3; default off, as ORCA).
    """

    implemented_properties = ["energy", "free_energy", "forces", "dipole", "charges"]
    default_parameters = {
        "method": "PBE",
        "basis": "def2-svp",
        "charge": None,
        "multiplicity": None,
        "conv_tol": 1e-9,
        "max_cycle": 100,
        "grid_level": 3,
        "density_fit": False,
        "level_shift": 0.0,
        "damping": 0.0,
        "reuse_density": False,
        "dispersion": None,
        "dispersion_three_body": False,
    }

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._last_key: tuple | None = None
        self._last_dm = None

    @property
    def _params(self) -> Any:
        """ASE's Parameters dict (attribute access, which its type stubs do not know)."""
        return self.parameters

    def _molecule(self, atoms: Atoms):
        from pyscf import gto

        charge = self._params.charge
        if charge is None:
            charge = int(atoms.info.get("charge", 0))
        mult = self._params.multiplicity or atoms.info.get("multiplicity")
        if mult is None:
            mult = 1 if (int(atoms.numbers.sum()) - charge) % 2 == 0 else 2
        problem = check_charge_multiplicity(atoms.numbers, charge, mult)
        if problem:
            raise ValueError(f"PySCFCalculator: {problem}")
        mol = gto.M(
            atom=[(int(z), tuple(p)) for z, p in zip(atoms.numbers, atoms.positions, strict=True)],
            unit="Angstrom",
            basis=self._params.basis,
            charge=int(charge),
            spin=int(mult) - 1,
            verbose=0,
        )
        return mol

    def _mean_field(self, mol):
        from pyscf import dft, scf

        method = str(self._params.method)
        open_shell = mol.spin != 0
        if method.upper() in WAVEFUNCTION_METHODS:
            mf = scf.UHF(mol) if open_shell else scf.RHF(mol)
        else:
            mf = dft.UKS(mol) if open_shell else dft.RKS(mol)
            mf.xc = method
            mf.grids.level = int(self._params.grid_level)
        if self._params.density_fit:
            mf = mf.density_fit()
        mf.conv_tol = float(self._params.conv_tol)
        mf.max_cycle = int(self._params.max_cycle)
        mf.level_shift = float(self._params.level_shift)
        mf.damp = float(self._params.damping)
        mf.verbose = 0
        return mf

    def _check_dispersion(self) -> str | None:
        """The dispersion model (lower case) or None; raises ValueError for unsupported combinations."""
        from aiida_mlpes.core.reference.dispersion import DISPERSION_MODELS

        value = self._params.dispersion
        if value in (None, "", False, "none", "None"):
            return None
        model = str(value).lower().replace("(", "").replace(")", "").replace("-", "")
        if model not in DISPERSION_MODELS:
            raise ValueError(f"PySCFCalculator: unknown dispersion {value!r}; choose None or 'd3bj'")
        if str(self._params.method).upper() == "MP2":
            raise ValueError(
                "PySCFCalculator: a D3 correction is defined for DFT functionals and HF, not MP2"
            )
        return model

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        atoms = cast(Atoms, self.atoms)  # set by the base class
        dispersion = self._check_dispersion()
        mol = self._molecule(atoms)
        mf = self._mean_field(mol)
        key = (
            tuple(atoms.numbers),
            mol.charge,
            mol.spin,
            str(self._params.basis),
            str(self._params.method),
        )
        dm0 = self._last_dm if (self._params.reuse_density and key == self._last_key) else None
        e_scf = mf.kernel(dm0=dm0)
        if not mf.converged:
            self._last_key = None
            raise SCFNotConvergedError(
                f"PySCF SCF did not converge in {mf.max_cycle} cycles (last energy {e_scf:.8f} Eh)"
            )
        self._last_key, self._last_dm = key, mf.make_rdm1()
        if str(self._params.method).upper() == "MP2":
            post = mf.MP2().run()
            energy = post.e_tot
            gradient = post.nuc_grad_method().kernel()
            dipole = None  # the MP2 relaxed density is not computed; an HF dipole would mix levels of theory
        else:
            energy = e_scf
            gradient = mf.nuc_grad_method().kernel()
            dipole = np.asarray(mf.dip_moment(unit="AU", verbose=0)) * BOHR
        charges = np.asarray(mf.mulliken_pop(verbose=0)[1], dtype=float)
        energy_ev = float(energy) * HARTREE
        forces = -np.asarray(gradient) * HARTREE / BOHR
        if dispersion == "d3bj":
            from aiida_mlpes.core.reference.dispersion import d3bj_energy_forces

            e_disp, f_disp = d3bj_energy_forces(
                atoms.numbers,
                atoms.positions,
                str(self._params.method),
                three_body=bool(self._params.dispersion_three_body),
            )
            energy_ev, forces = energy_ev + e_disp, forces + f_disp
            self.results["dispersion_energy"] = e_disp
        self.results["energy"] = self.results["free_energy"] = energy_ev
        self.results["forces"] = forces
        if dipole is not None:
            self.results["dipole"] = dipole
        self.results["charges"] = charges
