"""Metadynamics ("meta-sampling", Asparagus paper eq. 10 and Listing 2), driven by Langevin dynamics.

The driver's surface V(x) is biased by Gaussians deposited every ``deposition_interval`` steps at the
current values s_alpha of the collective variables (CVs):

    V_bias(s) = sum_alpha h * exp(-sum_i (s_i - s_alpha,i)^2 / (2 sigma_i^2))

(the paper's eq. 10 misses the minus sign), plus optional harmonic walls 0.5 k (s - bound)^2 outside
[lower, upper] on any CV. :class:`MetadynamicsCalculator` adds the bias energy and its forces
-dV_bias/ds * ds/dx (analytic CV gradients) to the driver's; samples keep the driver's own (unbiased)
energy and forces. Large heights and widths with a high friction explore quickly; the result is a
conformational sampler, not a converged free-energy estimate. Units: eV, Angstrom, degrees, K, fs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, cast

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator, all_changes

from aiida_mlpes.core.sampling._common import Progress, as_systems, check_int, check_real, random_streams
from aiida_mlpes.core.sampling.collective_variables import (
    CollectiveVariable,
    CVSet,
    check_atoms_exist,
    parse_cv,
    parse_cvs,
    wrap,
)
from aiida_mlpes.core.sampling.drivers import MonitoredCalculator
from aiida_mlpes.core.sampling.md import check_md_settings, start_langevin
from aiida_mlpes.core.sampling.results import SampleCollector, SampleResult

#: Default wall force constant, eV per (CV unit)^2.
DEFAULT_WALL_CONSTANT = 10.0


class Wall:
    """Harmonic wall 0.5 k (s - bound)^2 on ``cv`` where s is below ``lower`` or above ``upper``."""

    def __init__(
        self, cv: CollectiveVariable, lower: float | None, upper: float | None, force_constant: float
    ):
        if lower is None and upper is None:
            raise ValueError(f"wall on {cv}: give a lower and/or an upper bound")
        if lower is not None and upper is not None and not lower < upper:
            raise ValueError(f"wall on {cv}: lower bound {lower} must be below upper bound {upper}")
        self.cv, self.lower, self.upper = cv, lower, upper
        self.force_constant = check_real("wall force_constant", force_constant)


def parse_walls(specs: Sequence[Mapping[str, Any]] | None, cvs: Sequence[CollectiveVariable]) -> list[Wall]:
    """Walls from ``[{"cv": 0 or a CV spec, "lower": ..., "upper": ..., "force_constant": ...}, ...]``;
    an integer ``cv`` is an index into ``cvs``."""
    walls = []
    for i, spec in enumerate(specs or []):
        if not isinstance(spec, Mapping) or "cv" not in spec:
            raise ValueError(f"wall {i}: expected a dict with 'cv' and 'lower' and/or 'upper', got {spec!r}")
        unknown = set(spec) - {"cv", "lower", "upper", "force_constant"}
        if unknown:
            raise ValueError(f"wall {i}: unknown keys {sorted(unknown)}")
        ref = spec["cv"]
        if isinstance(ref, (int, np.integer)) and not isinstance(ref, bool):
            if not 0 <= ref < len(cvs):
                raise ValueError(f"wall {i}: cv index {ref} out of range (there are {len(cvs)} CVs)")
            cv = cvs[int(ref)]
        else:
            cv = parse_cv(ref)
        lower, upper = [
            None if spec.get(k) is None else check_real(f"wall {i} {k}", spec[k], minimum=None)
            for k in ("lower", "upper")
        ]
        walls.append(Wall(cv, lower, upper, spec.get("force_constant", DEFAULT_WALL_CONSTANT)))
    return walls


class MetadynamicsBias:
    """The history-dependent bias of one run: Gaussians of ``height`` (eV) and ``widths`` (CV units) on
    ``cvs``, plus ``walls``. All CVs (biased and walled) are evaluated in one pass of a :class:`CVSet`,
    and the bias forces come from its pullback of dV/ds (no (K, N, 3) Jacobian for distance CVs)."""

    def __init__(
        self,
        cvs: Sequence[CollectiveVariable],
        height: float,
        widths: Sequence[float],
        walls: Sequence[Wall] = (),
    ) -> None:
        self.cvs, self.walls = list(cvs), list(walls)
        self.height = float(height)
        self.widths = np.asarray(widths, dtype=float)
        everything = list(self.cvs)
        for wall in self.walls:
            if wall.cv not in everything:
                everything.append(wall.cv)
        self.cvset = CVSet(everything)
        self.n_bias = len(self.cvs)
        self.n_all = len(everything)
        self.periodic = self.cvset.periodic[: self.n_bias]
        self._any_periodic = bool(self.periodic.any())
        # (row, lower, upper, k) per wall: a handful of scalars, cheaper in plain Python than in numpy
        self._walls = [
            (
                everything.index(w.cv),
                -math.inf if w.lower is None else w.lower,
                math.inf if w.upper is None else w.upper,
                w.force_constant,
            )
            for w in self.walls
        ]
        # The Gaussian sum works on "extended" rows (s, 1) - (s_a, 0): one product with the weights then
        # gives sum_a g_a (s - s_a) and sum_a g_a together.
        self._point = np.ones(self.n_bias + 1)
        self._centers = np.zeros((64, self.n_bias + 1))
        self._exponent = np.append(-0.5 / self.widths**2, 0.0)  # -|s - s_a|^2 / (2 w^2) = diff^2 @ this
        self._force_factor = self.height / self.widths**2  # -dV/ds = h / w^2 * sum_a e_a (s - s_a)
        self.n_gaussians = 0
        self._key = b""
        self._values = np.zeros(0)

    @property
    def centers(self) -> np.ndarray:
        """(n_gaussians, Ncv) deposited centres."""
        return self._centers[: self.n_gaussians, : self.n_bias]

    def _forward(self, positions: np.ndarray) -> np.ndarray:
        """Values of all CVs (biased and walled) at ``positions``, evaluated once per set of positions."""
        key = np.ascontiguousarray(positions, dtype=float).tobytes()
        if key != self._key:
            self._values = self.cvset.forward(positions)
            self._key = key
        return self._values

    def values(self, positions: np.ndarray) -> np.ndarray:
        """Values (Ncv,) of the biased CVs."""
        return self._forward(positions)[: self.n_bias].copy()

    def deposit(self, positions: np.ndarray) -> np.ndarray:
        """Add a Gaussian at the current CV values; returns them."""
        s = self.values(positions)
        if self.n_gaussians == len(self._centers):
            self._centers = np.vstack([self._centers, np.zeros_like(self._centers)])
        self._centers[self.n_gaussians, : self.n_bias] = s
        self.n_gaussians += 1
        return s

    def _gaussian_force(self, s: np.ndarray) -> tuple[float, np.ndarray]:
        """Sum of the deposited Gaussians at CV values ``s`` (eV) and -dV/ds."""
        if self.n_gaussians == 0:
            return 0.0, np.zeros(self.n_bias)
        self._point[: self.n_bias] = s
        diff = self._point - self._centers[: self.n_gaussians]  # rows (s - s_a, 1)
        if self._any_periodic:
            diff[:, : self.n_bias] = wrap(diff[:, : self.n_bias], self.periodic)
        sums = np.exp((diff * diff) @ self._exponent) @ diff  # (sum_a e_a (s - s_a), sum_a e_a)
        return self.height * float(sums[-1]), sums[: self.n_bias] * self._force_factor

    def gaussians(self, s: np.ndarray) -> tuple[float, np.ndarray]:
        """Sum of the deposited Gaussians at CV values ``s`` (eV) and its gradient dV/ds."""
        energy, force = self._gaussian_force(np.asarray(s, dtype=float))
        return energy, -force

    def __call__(self, positions: np.ndarray) -> tuple[float, np.ndarray]:
        """Bias energy (eV) and bias forces (N, 3) in eV/Angstrom at ``positions``."""
        values = self._forward(positions)
        energy, force = self._gaussian_force(values[: self.n_bias])  # -dV/ds
        if self.n_all > self.n_bias:
            force = np.concatenate([force, np.zeros(self.n_all - self.n_bias)])
        if self._walls:
            wall_force = None
            current = values.tolist()
            for row, lower, upper, k in self._walls:
                s = current[row]
                if s > upper:
                    excess = s - upper
                elif s < lower:
                    excess = s - lower
                else:
                    continue
                energy += 0.5 * k * excess * excess
                if wall_force is None:
                    wall_force = [0.0] * self.n_all
                wall_force[row] -= k * excess
            if wall_force is not None:
                force = force + np.array(wall_force)
        return energy, self.cvset.pullback(force)


class MetadynamicsCalculator(MonitoredCalculator):
    """The monitored driver plus ``bias``; ``results`` are biased, ``driver_results`` are the driver's own,
    ``results["bias_energy"]`` the bias (eV)."""

    def __init__(self, driver: Calculator, bias: MetadynamicsBias) -> None:
        super().__init__(driver)
        self.bias = bias
        self.driver_results: dict[str, Any] = {}

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        self.driver_results = self.results
        self.update_bias()

    def update_bias(self) -> None:
        """Recompute the bias at the current positions (after a deposition) on top of the driver results."""
        # only called after calculate(), which sets the Atoms
        e_bias, f_bias = self.bias(cast(Atoms, self.atoms).positions)
        d = self.driver_results
        energy = d["energy"] + e_bias
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "forces": d["forces"] + f_bias,
            "bias_energy": e_bias,
        }


def check_metadynamics_settings(
    collective_variables: Sequence[Any],
    height: float,
    widths: float | Sequence[float],
    deposition_interval: int,
    walls: Sequence[Mapping[str, Any]] | None,
) -> dict[str, Any]:
    """Validated metadynamics settings (CVs parsed; atom indices are checked per system)."""
    cvs = parse_cvs(collective_variables)
    # not a scalar (np.ndim also covers numpy scalars and 0-d arrays): a sequence of widths
    widths_list = [widths] * len(cvs) if np.ndim(widths) == 0 else list(cast(Sequence[float], widths))
    if len(widths_list) != len(cvs):
        raise ValueError(f"widths has {len(widths_list)} entries for {len(cvs)} collective variables")
    return {
        "cvs": cvs,
        "height": check_real("height", height),
        "widths": [check_real(f"widths[{i}]", w) for i, w in enumerate(widths_list)],
        "deposition_interval": check_int("deposition_interval", deposition_interval),
        "walls": parse_walls(walls, cvs),
    }


def metadynamics(
    systems: Atoms | Sequence[Atoms],
    driver: Calculator,
    *,
    collective_variables: Sequence[Any],
    temperature: float,
    height: float = 0.05,
    widths: float | Sequence[float] = 0.1,
    deposition_interval: int = 10,
    timestep: float = 1.0,
    steps: int = 10000,
    save_interval: int = 10,
    friction: float = 0.01,
    walls: Sequence[Mapping[str, Any]] | None = None,
    seed: int | None = None,
) -> SampleResult:
    """Metadynamics sampling of each system with Langevin dynamics at ``temperature`` (K).

    Args:
        collective_variables: CV specifications, e.g. ``[[0, 1], [0, 2], [0, 3]]`` for the N-H bonds of
            NH3 (paper Listing 2); see :mod:`~aiida_mlpes.core.sampling.collective_variables`.
        height: Gaussian height, eV. widths: Gaussian width per CV (or one for all), CV units.
        deposition_interval: steps between depositions.
        walls: optional harmonic walls, e.g. ``[{"cv": 0, "upper": 2.5, "force_constant": 10}]``.
        timestep (fs), steps, save_interval, friction (1/fs), seed: as in
            :func:`~aiida_mlpes.core.sampling.md.langevin_md`.

    Samples carry the driver's unbiased energy and forces and ``sample_data["cv_values"]``;
    ``trajectory`` has the driver ``energy``, ``bias_energy`` and kinetic ``temperature`` per step;
    ``systems[i]["gaussian_centers"]`` the deposited centres.
    """
    md = check_md_settings(temperature, timestep, steps, save_interval, friction, 0)
    meta = check_metadynamics_settings(collective_variables, height, widths, deposition_interval, walls)
    systems = as_systems(systems)
    for index, atoms in enumerate(systems):
        check_atoms_exist(meta["cvs"] + [w.cv for w in meta["walls"]], len(atoms), index)
    seed, rngs = random_streams(seed, len(systems))
    calc = MetadynamicsCalculator(driver, MetadynamicsBias(meta["cvs"], meta["height"], meta["widths"]))
    settings = {**md, **meta, "cvs": [str(cv) for cv in meta["cvs"]], "walls": walls or []}
    collector = SampleCollector("metadynamics", len(systems), seed, calc, settings)
    with collector.guard():
        for index, (atoms, rng) in enumerate(zip(systems, rngs, strict=True)):
            calc.bias = MetadynamicsBias(meta["cvs"], meta["height"], meta["widths"], meta["walls"])
            _run_one(index, atoms, calc, rng, collector, md, meta["deposition_interval"])
    return collector.result()


def _run_one(
    index: int,
    atoms: Atoms,
    calc: MetadynamicsCalculator,
    rng: np.random.Generator,
    collector: SampleCollector,
    md: dict[str, Any],
    interval: int,
) -> None:
    calc.restart()
    atoms.calc = calc
    dof = max(3 * len(atoms) - (3 if len(atoms) > 1 else 0), 1)
    kinetic_factor = 1.0 / (dof * units.kB)
    # (N, 3), not (N, 1): broadcasting costs more than the arithmetic on arrays this small
    inverse_masses = np.repeat(1.0 / atoms.get_masses()[:, None], 3, axis=1)
    numbers = atoms.numbers.copy()
    total, save_interval = md["steps"], md["save_interval"]
    progress = Progress(f"metadynamics system {index}", total)
    collector.system, collector.step = index, 1
    # per-step records go to the collector in one piece at the end (also when the driver fails)
    energies, bias_energies, temperatures = np.empty(total), np.empty(total), np.empty(total)
    arrays = atoms.arrays
    step = done = 0
    try:
        dyn = start_langevin(
            atoms, rng, temperature=md["temperature"], timestep=md["timestep"], friction=md["friction"]
        )
        for step in range(1, total + 1):
            dyn.step()
            progress.update()
            driver_results = calc.driver_results
            momenta = arrays["momenta"]
            temperatures[done] = kinetic_factor * float(np.vdot(momenta, momenta * inverse_masses))
            energies[done] = driver_results["energy"]
            bias_energies[done] = calc.results["bias_energy"]
            done += 1
            if step % save_interval == 0:
                s = calc.bias.values(arrays["positions"])
                collector.add_sample(index, numbers, arrays["positions"], driver_results, cv_values=s)
            if step % interval == 0:
                calc.bias.deposit(arrays["positions"])
                calc.update_bias()
                dyn.potential_changed()
    finally:
        collector.step = step  # where a failure happened (step s computes the driver's call s + 1)
        progress.close()
        collector.add_steps(
            index, energies[:done], bias_energy=bias_energies[:done], temperature=temperatures[:done]
        )
        collector.systems[index]["gaussian_centers"] = calc.bias.centers.copy()
        atoms.calc = None
