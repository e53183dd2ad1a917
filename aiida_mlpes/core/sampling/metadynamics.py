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
from aiida_mlpes.core.sampling.md import check_md_settings, langevin_steps
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
    ``cvs``, plus ``walls``. All CVs (biased and walled) are evaluated in one vectorised pass."""

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
        self.periodic = self.cvset.periodic[: self.n_bias]
        self.wall_rows = np.array([everything.index(w.cv) for w in self.walls], dtype=np.int64)
        self.wall_lower = np.array([-np.inf if w.lower is None else w.lower for w in self.walls])
        self.wall_upper = np.array([np.inf if w.upper is None else w.upper for w in self.walls])
        self.wall_k = np.array([w.force_constant for w in self.walls])
        self._centers = np.zeros((64, self.n_bias))
        self.n_gaussians = 0
        self._cache: tuple[bytes, np.ndarray, np.ndarray] | None = None

    @property
    def centers(self) -> np.ndarray:
        """(n_gaussians, Ncv) deposited centres."""
        return self._centers[: self.n_gaussians]

    def _evaluate(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        key = np.ascontiguousarray(positions, dtype=float).tobytes()
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, *self.cvset(positions))
        return self._cache[1], self._cache[2]

    def values(self, positions: np.ndarray) -> np.ndarray:
        """Values (Ncv,) of the biased CVs."""
        return self._evaluate(positions)[0][: self.n_bias].copy()

    def deposit(self, positions: np.ndarray) -> np.ndarray:
        """Add a Gaussian at the current CV values; returns them."""
        s = self.values(positions)
        if self.n_gaussians == len(self._centers):
            self._centers = np.vstack([self._centers, np.zeros_like(self._centers)])
        self._centers[self.n_gaussians] = s
        self.n_gaussians += 1
        return s

    def gaussians(self, s: np.ndarray) -> tuple[float, np.ndarray]:
        """Sum of the deposited Gaussians at CV values ``s`` (eV) and its gradient dV/ds."""
        if self.n_gaussians == 0:
            return 0.0, np.zeros(self.n_bias)
        diff = wrap(s - self.centers, self.periodic) / self.widths
        weights = self.height * np.exp(-0.5 * np.einsum("ij,ij->i", diff, diff))
        return float(weights.sum()), -(weights @ diff) / self.widths

    def __call__(self, positions: np.ndarray) -> tuple[float, np.ndarray]:
        """Bias energy (eV) and bias forces (N, 3) in eV/Angstrom at ``positions``."""
        values, grads = self._evaluate(positions)
        slope = np.zeros(len(values))
        energy, slope[: self.n_bias] = self.gaussians(values[: self.n_bias])
        if len(self.walls):
            w = values[self.wall_rows]
            excess = np.where(w > self.wall_upper, w - self.wall_upper, 0.0)
            excess += np.where(w < self.wall_lower, w - self.wall_lower, 0.0)
            energy += float(0.5 * np.dot(self.wall_k, excess**2))
            slope += np.bincount(self.wall_rows, weights=self.wall_k * excess, minlength=len(values))
        return energy, -(slope @ grads.reshape(len(values), -1)).reshape(grads.shape[1:])


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
    inverse_masses = 1.0 / atoms.get_masses()[:, None]
    numbers = atoms.numbers.copy()
    progress = Progress(f"metadynamics system {index}", md["steps"])
    collector.system, collector.step = index, 0
    steps = langevin_steps(
        atoms,
        rng,
        temperature=md["temperature"],
        timestep=md["timestep"],
        friction=md["friction"],
        steps=md["steps"],
    )
    try:
        for step in steps:
            collector.step = step + 1
            progress.update()
            driver_results = calc.driver_results
            momenta = atoms.arrays["momenta"]
            kinetic = kinetic_factor * float(np.vdot(momenta, momenta * inverse_masses))
            collector.add_step(
                index, driver_results["energy"], bias_energy=calc.results["bias_energy"], temperature=kinetic
            )
            if step % md["save_interval"] == 0:
                s = calc.bias.values(atoms.positions)
                collector.add_sample(index, numbers, atoms.positions, driver_results, cv_values=s)
            if step % interval == 0:
                calc.bias.deposit(atoms.positions)
                calc.update_bias()
    finally:
        progress.close()
        collector.systems[index]["gaussian_centers"] = calc.bias.centers.copy()
        atoms.calc = None
