"""ASE's Langevin propagator with the per-step Atoms bookkeeping taken out, for small molecules.

:class:`LeanLangevin` is :class:`ase.md.langevin.Langevin`: the same constructor and state, the same
coefficients (``updatevars``: c1-c5 of Vanden-Eijnden and Ciccotti, Chem. Phys. Lett. 429, 310 (2006),
eq. 23) and the same normal draws from the same generator in the same order. Only the step is written out
again, because ASE's ``Langevin.step`` lacks a cheap path for a molecule of a few atoms: it goes through
``get_velocities``, ``set_positions``/``set_momenta`` (each applying constraints on fresh copies),
``get_forces`` twice (more copies) and two MPI broadcasts, about 40 numpy calls and as many Python calls
per step. On NH3 a numpy call costs ~1 us here, so that is ~10% of a GFN2-xTB (tblite) call.

The step here reads and writes ``atoms.arrays`` in place, reuses the forces of the previous step, applies
:class:`~ase.constraints.FixCom` inline and groups ASE's update formulas algebraically (17 numpy calls):

    v' = p (1 - c2)/m + f c1/m + rnd_vel          (ASE: v + c1 f/m - c2 v + rnd_vel, v = p/m)
    d  = dt v' + rnd_pos - <dt v' + rnd_pos>_m     (FixCom.adjust_positions; x += d)
    v'' = (d - rnd_pos) / dt                        (ASE: (x_new - x - rnd_pos) / dt)

with ``<y>_m = sum_i m_i y_i / M`` (one product with a projection matrix), and FixCom.adjust_momenta as
``v -= <v>_m``. Every per-atom factor is stored as a full (N, 3) array: numpy's broadcasting costs more
than the arithmetic on arrays this small. The trajectory is ASE's
up to round-off (tested against ``Langevin.step``). Any constraint other than one FixCom, ``fixcm=True``
or an MPI run falls back to ASE's own step. The normal draws are taken in blocks of :data:`DRAW_BLOCK`
steps (the same numbers in the same order; the generator only runs ahead). A caller that changes the
potential between steps (metadynamics) calls :meth:`LeanLangevin.potential_changed`. Units: ASE's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ase import Atoms
from ase.constraints import FixCom
from ase.md.langevin import Langevin

#: Steps whose random numbers are drawn at once.
DRAW_BLOCK = 64


class LeanLangevin(Langevin):
    """:class:`ase.md.langevin.Langevin` (NVT) with a step on plain arrays; arguments as ASE's.

    Use ``fixcm=False`` and put a :class:`~ase.constraints.FixCom` on ``atoms`` to hold the centre of mass
    (ASE's recommendation). ``forces`` holds the calculator's raw forces (eV/Angstrom) at the current
    positions once a step has run.
    """

    def __init__(self, atoms: Atoms, *args: Any, **kwargs: Any) -> None:
        """The arguments of ASE's ``Langevin`` (timestep, temperature_K, friction, ...), unchanged."""
        self._draws: np.ndarray | None = None  # before ASE's __init__, which calls updatevars()
        super().__init__(atoms, *args, **kwargs)
        constraints = atoms.constraints
        self.lean = (
            not self.fix_com
            and self.comm.size == 1  # ASE broadcasts the random draws between MPI ranks
            and (not constraints or (len(constraints) == 1 and type(constraints[0]) is FixCom))
        )
        self.hold_com = bool(constraints)
        self._random: list[tuple[np.ndarray, np.ndarray]] = []
        self._next_draw = 0
        self.forces: np.ndarray | None = None

    def updatevars(self) -> None:
        """ASE's coefficients, their grouped forms, and the random terms of steps already drawn."""
        super().updatevars()
        # every factor as a full (N, 3) array: on arrays this small numpy's broadcasting costs several
        # times the arithmetic
        masses = self.masses  # (N, 1), as in ASE's MolecularDynamics
        shape = (len(masses), 3)
        keep = 1.0 - self.c2  # velocity kept per half step
        self._keep = np.broadcast_to(keep, shape).copy()
        self._momentum_factor = np.broadcast_to(keep / masses, shape).copy()
        self._force_factor = np.broadcast_to(self.c1 / masses, shape).copy()
        self._masses = np.broadcast_to(masses, shape).copy()
        self._timestep = np.full(shape, self.dt)
        self._inverse_timestep = np.full(shape, 1.0 / self.dt)
        weights = masses[:, 0] / masses.sum()
        # y -> y - sum_i m_i y_i / M (FixCom's projection) as one matrix product
        self._com_projection = np.eye(len(masses)) - np.outer(np.ones(len(masses)), weights)
        if self._draws is not None:
            self._random_terms()

    def _random_terms(self) -> None:
        """rnd_pos and rnd_vel of the drawn steps, by ASE's formulas."""
        assert self._draws is not None
        xi, eta = self._draws[:, 0], self._draws[:, 1]
        self._random = list(zip(self.c5 * eta, self.c3 * xi - self.c4 * eta, strict=True))

    def potential_changed(self) -> None:
        """Forget the forces of the last step: the next step asks the calculator again."""
        self.forces = None

    def step(self, forces: np.ndarray | None = None) -> np.ndarray:
        """One step; returns the raw forces (eV/Angstrom) at the new positions."""
        if not self.lean:
            self.forces = super().step(forces)
            return self.forces
        atoms = self.atoms
        calc = atoms.calc
        if calc is None:
            raise RuntimeError("LeanLangevin: the Atoms have no calculator")
        if forces is None:
            forces = self.forces if self.forces is not None else calc.get_property("forces", atoms)
        if self._next_draw == len(self._random):
            # xi and eta of DRAW_BLOCK steps: the numbers ASE draws one (N, 3) array after the other
            self._draws = self.rng.standard_normal(size=(DRAW_BLOCK, 2, len(atoms), 3))
            self._random_terms()
            self._next_draw = 0
        rnd_pos, rnd_vel = self._random[self._next_draw]
        self._next_draw += 1
        arrays = atoms.arrays
        v = arrays["momenta"] * self._momentum_factor + forces * self._force_factor + rnd_vel
        displacement = v * self._timestep + rnd_pos
        if self.hold_com:  # FixCom.adjust_positions, and ASE's velocity from the adjusted displacement
            displacement = self._com_projection @ displacement
            v = (displacement - rnd_pos) * self._inverse_timestep
        arrays["positions"] += displacement
        # the positions moved (and nothing else): ASE's calculator contract, without get_property's
        # comparison of the whole state and its copy of the result
        calc.reset()
        calc.calculate(atoms, ["energy", "forces"], ["positions"])
        forces = calc.results["forces"]
        v = v * self._keep + forces * self._force_factor + rnd_vel
        if self.hold_com:  # FixCom.adjust_momenta
            v = self._com_projection @ v
        np.multiply(v, self._masses, out=arrays["momenta"])
        self.forces = forces
        return forces
