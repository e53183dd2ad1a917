"""Normal-mode sampling (Asparagus paper, eqs. 1-2) and the harmonic analysis shared with the scan.

Around a reference structure x_eq with normal modes q_i (unit Cartesian vectors) and force constants
k_i (eV/Angstrom^2), each sample is

    x = x_eq + sum_i f_i q_i,   f_i = +-sqrt(3 c_i kB T / k_i),   c_i ~ U[0, 1], sign ~ Bernoulli(1/2),

so each selected mode carries the harmonic energy 0.5 k_i f_i^2 = 1.5 c_i kB T, uniform on [0, 1.5 kB T]
(mean 0.75 kB T). Imaginary modes use ``|k_i|``.

``zero_point=True`` replaces kB T of each mode by max(kB T, hbar omega_i). A diffusion Monte Carlo population
of the ground state is distributed as psi_0, whose potential energy per harmonic mode averages hbar omega / 2:
the same as a classical mode at kB T = hbar omega. At 1000 K an N-H stretch (3400 cm^-1, hbar omega = 0.42
eV) would be sampled only to 0.13 eV, well inside the region its DMC walkers visit; with ``zero_point`` the
initial data cover the quantum ground state that the refinement loop's DMC explores, for any molecule. The modes come from
:func:`aiida_mlpes.core.characterize.frequencies.normal_modes`: a central-difference Hessian of the driver
(all 6N displaced structures in one batch), mass-weighted, translations and rotations projected out.
Units: K, eV, Angstrom, amu, cm^-1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator

from aiida_mlpes.core.characterize.frequencies import DEFAULT_STEP, NormalModes, normal_modes
from aiida_mlpes.core.characterize.optimize import optimize_minimum, optimize_ts
from aiida_mlpes.core.sampling._common import (
    Progress,
    as_systems,
    check_frequency_range,
    check_int,
    check_real,
    random_streams,
)
from aiida_mlpes.core.sampling.drivers import MonitoredCalculator
from aiida_mlpes.core.sampling.results import DriverError, SampleCollector, SampleResult
from aiida_mlpes.core.units import INV_CM, KB

#: Structures per driver batch (the ML driver evaluates a batch in one call).
BATCH_SIZE = 64
#: Modes with ``|frequency|`` below this (cm^-1) are flat: eqs. 2 and 8 would displace them infinitely.
MIN_FREQUENCY = 1.0
#: Default frequency window (cm^-1): real modes only, numerically zero ones excluded.
DEFAULT_FREQUENCY_RANGE = (10.0, None)


class DriverPotential:
    """A batched Potential over a monitored driver, for the atoms (numbers, charge) of ``template``."""

    def __init__(self, monitor: MonitoredCalculator, template: Atoms) -> None:
        self.monitor, self.template = monitor, template
        #: when a list, every evaluated structure is appended to it as (positions, driver results)
        self.record: list[tuple[np.ndarray, dict[str, Any]]] | None = None

    def __call__(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        positions = np.asarray(positions).reshape(-1, len(self.template), 3)
        results = self.monitor.evaluate_many(self.template, positions)
        if self.record is not None:
            self.record.extend(zip(positions.copy(), results, strict=True))
        return np.array([r["energy"] for r in results]), np.stack([r["forces"] for r in results])


@dataclass
class Reference:
    """The structure the modes belong to: ``positions`` (N, 3), driver ``results`` there, ``modes`` and the
    indices ``selected`` by the frequency range."""

    positions: np.ndarray
    results: dict[str, Any]
    modes: NormalModes
    selected: np.ndarray
    #: the structures of the finite-difference Hessian with their driver results (when recorded)
    hessian_points: list[tuple[np.ndarray, dict[str, Any]]] = field(default_factory=list)


def prepare_reference(
    index: int,
    atoms: Atoms,
    monitor: MonitoredCalculator,
    collector: SampleCollector,
    *,
    frequency_range: tuple[float, float],
    step: float,
    optimize: bool | str,
    fmax: float,
    record_hessian: bool = False,
) -> Reference:
    """Optionally relax ``atoms`` (``optimize``: True or "minimum" to a minimum, "saddle" to the first-order
    saddle point nearby by P-RFO), compute its normal modes and select those in ``frequency_range``.

    ``record_hessian`` keeps the structures of the finite-difference Hessian with their driver results.
    Raises ValueError naming the system when no mode lies in the range.
    """
    monitor.restart()
    potential = DriverPotential(monitor, atoms)
    collector.system, collector.phase = index, "the optimization"
    if optimize:
        if optimize == "saddle":
            masses = atoms.get_masses()
            opt = optimize_ts(potential, atoms.numbers, atoms.positions, masses=masses, fmax=fmax, steps=200)
        else:
            opt = optimize_minimum(potential, atoms.numbers, atoms.positions, fmax=fmax)
        atoms.positions = opt.positions
        collector.systems[index].update(
            optimized=True, optimization_converged=opt.converged, stationary_point=str(optimize)
        )
    collector.phase = "the harmonic analysis"
    results = monitor.evaluate(atoms)
    potential.record = [] if record_hessian else None
    modes = normal_modes(potential, atoms.numbers, atoms.positions, masses=atoms.get_masses(), step=step)
    hessian_points, potential.record = potential.record or [], None
    collector.phase = None
    low, high = frequency_range
    selected = np.flatnonzero((modes.frequencies >= low) & (modes.frequencies <= high))
    if len(selected) == 0:
        freqs = ", ".join(f"{f:.1f}" for f in modes.frequencies)
        raise ValueError(
            f"frequency_range ({low:g}, {high:g}) cm^-1 selects none of the {len(modes.frequencies)} normal "
            f"modes of system {index} (frequencies: {freqs} cm^-1; imaginary ones negative)"
        )
    flat = [int(i) for i in selected if abs(modes.frequencies[i]) < MIN_FREQUENCY]
    if flat:
        raise ValueError(
            f"normal mode {flat[0]} of system {index} is flat ({modes.frequencies[flat[0]]:.3g} cm^-1): it cannot be "
            f"sampled or scanned (infinite displacement); exclude it with frequency_range"
        )
    collector.systems[index].update(
        frequencies=modes.frequencies,
        force_constants=modes.force_constants,
        selected_modes=selected,
        reference_energy=results["energy"],
    )
    return Reference(atoms.positions.copy(), results, modes, selected, hessian_points)


#: Values of ``optimize``: no relaxation, a minimum, or a first-order saddle point (a transition state).
OPTIMIZE_CHOICES = (False, True, "minimum", "saddle")


def check_optimize(optimize: Any) -> bool | str:
    """``optimize`` checked: False, True (= "minimum"), "minimum" or "saddle"."""
    if isinstance(optimize, bool) or optimize in ("minimum", "saddle"):
        return optimize
    raise ValueError(f"optimize must be one of {OPTIMIZE_CHOICES}, got {optimize!r}")


def check_mode_settings(frequency_range: Any, step: float, fmax: float) -> dict[str, Any]:
    """Validated settings of the harmonic analysis."""
    return {
        "frequency_range": check_frequency_range(frequency_range),
        "step": check_real("step", step),
        "fmax": check_real("fmax", fmax),
    }


def check_sampling_settings(
    n_samples: int,
    temperature: float | None,
    energy: float | None,
    low_temperature_samples: int = 0,
    low_temperature: float = 300.0,
) -> dict[str, Any]:
    """Validated normal-mode sampling settings; exactly one of ``temperature`` and ``energy``."""
    if (temperature is None) == (energy is None):
        raise ValueError("give exactly one of temperature (K) and energy (eV, replaces kB*T in eq. 2)")
    kt = KB * check_real("temperature", temperature) if energy is None else check_real("energy", energy)
    return {
        "n_samples": check_int("n_samples", n_samples),
        "kT": kt,
        "low_temperature_samples": check_int("low_temperature_samples", low_temperature_samples, minimum=0),
        "low_kT": KB * check_real("low_temperature", low_temperature),
    }


def normal_mode_sampling(
    systems: Atoms | Sequence[Atoms],
    driver: Calculator,
    *,
    n_samples: int,
    temperature: float | None = None,
    energy: float | None = None,
    zero_point: bool = False,
    hessian_samples: bool = False,
    low_temperature_samples: int = 0,
    low_temperature: float = 300.0,
    frequency_range: Sequence[float | None] | None = DEFAULT_FREQUENCY_RANGE,
    step: float = DEFAULT_STEP,
    optimize: bool | str = False,
    fmax: float = 0.01,
    seed: int | None = None,
) -> SampleResult:
    """Random displacements along the normal modes of each system (paper eqs. 1-2).

    Args:
        systems: one or several ASE Atoms, each the reference (ideally a minimum) of its own samples.
        driver: ASE calculator (energy and forces, for the Hessian).
        n_samples: samples per system.
        temperature: K; or ``energy`` in eV, used in place of kB*T in eq. 2.
        zero_point: each mode's energy scale is max(kB T, hbar omega_i), so the samples also cover the
            quantum ground state (the region DMC walkers visit; see the module docstring).
        hessian_samples: also keep the (optimized) reference structure and the 6N structures of its
            finite-difference Hessian as samples. The driver computed them anyway; their forces carry the
            curvature at the stationary point, i.e. the harmonic frequencies, to a model trained on them.
        low_temperature_samples: extra samples per system drawn at ``low_temperature`` (K) without the
            zero-point scale: the harmonic region, where frequencies and barrier heights are decided. Their
            ``sample_data["low_temperature"]`` is True.
        frequency_range: (low, high) cm^-1, None for no bound; only modes inside are displaced.
            Imaginary frequencies are negative: the default (10, None) leaves them and zero modes out.
        step: finite-difference step of the Hessian, Angstrom.
        optimize: relax each system to ``fmax`` (eV/Angstrom) first: True or "minimum" with BFGS, "saddle"
            to the nearest first-order saddle point (a transition-state guess) by P-RFO.
        seed: makes the samples reproducible; drawn and recorded in ``info["seed"]`` when None.

    ``sample_data["harmonic_energy"]`` is the harmonic energy of each displacement (eV above the
    reference); ``systems[i]`` holds frequencies, force constants and the selected modes.
    """
    s = {
        **check_sampling_settings(n_samples, temperature, energy, low_temperature_samples, low_temperature),
        **check_mode_settings(frequency_range, step, fmax),
        "optimize": check_optimize(optimize),
        "zero_point": bool(zero_point),
        "hessian_samples": bool(hessian_samples),
    }
    systems = as_systems(systems)
    seed, rngs = random_streams(seed, len(systems))
    monitor = MonitoredCalculator(driver)
    collector = SampleCollector("normal_mode_sampling", len(systems), seed, monitor, s)
    collector.unit = "sample"
    with collector.guard():
        for index, (atoms, rng) in enumerate(zip(systems, rngs, strict=True)):
            ref = prepare_reference(
                index,
                atoms,
                monitor,
                collector,
                frequency_range=s["frequency_range"],
                step=s["step"],
                optimize=s["optimize"],
                fmax=s["fmax"],
                record_hessian=s["hessian_samples"],
            )
            if s["hessian_samples"]:
                keep_hessian_points(index, atoms, ref, collector)
            positions, harmonic = displacements(ref, s["n_samples"], s["kT"], rng, s["zero_point"])
            low = np.zeros(len(positions), dtype=bool)
            if s["low_temperature_samples"]:  # drawn after the others: those stay as without them
                extra, extra_energy = displacements(ref, s["low_temperature_samples"], s["low_kT"], rng)
                positions = np.concatenate([positions, extra])
                harmonic = np.concatenate([harmonic, extra_energy])
                low = np.concatenate([low, np.ones(len(extra), dtype=bool)])
            evaluate_and_collect(
                index, atoms, positions, monitor, collector, harmonic_energy=harmonic, low_temperature=low
            )
    return collector.result()


def keep_hessian_points(index: int, atoms: Atoms, ref: Reference, collector: SampleCollector) -> None:
    """Add the reference structure and its Hessian's displaced structures as samples of system ``index``,
    each with its harmonic energy 0.5 dx.H.dx (eV) from the Cartesian Hessian."""
    for positions, results in [(ref.positions, ref.results), *ref.hessian_points]:
        dx = (positions - ref.positions).reshape(-1)
        harmonic = np.float64(0.5 * dx @ ref.modes.hessian @ dx)
        collector.add_sample(
            index, atoms.numbers.copy(), positions, results, harmonic_energy=harmonic, low_temperature=False
        )
        collector.add_step(index, results["energy"])


def displacements(
    ref: Reference, n_samples: int, kt: float, rng: np.random.Generator, zero_point: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Sampled positions (n_samples, N, 3) by eqs. 1-2 and their harmonic energies (n_samples,) in eV;
    ``zero_point``: each mode's energy scale is max(kB T, hbar omega_i) instead of kB T."""
    k = np.abs(ref.modes.force_constants[ref.selected])
    q = ref.modes.modes[ref.selected]
    scale = np.full(len(k), kt)
    if zero_point:
        scale = np.maximum(scale, np.abs(ref.modes.frequencies[ref.selected]) * INV_CM)
    c = rng.random((n_samples, len(k)))
    sign = np.where(rng.random((n_samples, len(k))) < 0.5, -1.0, 1.0)
    f = sign * np.sqrt(3.0 * c * scale / k)
    positions = ref.positions + np.einsum("bk,kna->bna", f, q)
    return positions, 0.5 * (k * f**2).sum(axis=1)


def evaluate_and_collect(
    index: int,
    atoms: Atoms,
    positions: np.ndarray,
    monitor: MonitoredCalculator,
    collector: SampleCollector,
    **per_sample: np.ndarray,
) -> None:
    """Evaluate ``positions`` in batches and keep every structure as a sample (with ``per_sample`` extras);
    on a driver failure the structures finished before it are kept too."""
    progress = Progress(f"{collector.sampler} system {index}", len(positions), unit="samples")
    numbers = atoms.numbers.copy()

    def keep(start: int, results: list[dict[str, Any]]) -> None:
        for j, res in enumerate(results):
            i = start + j
            collector.add_sample(
                index, numbers, positions[i], res, **{k: v[i] for k, v in per_sample.items()}
            )
            collector.add_step(index, res["energy"])

    try:
        for start in range(0, len(positions), BATCH_SIZE):
            collector.step = start + 1
            try:
                results = monitor.evaluate_many(atoms, positions[start : start + BATCH_SIZE])
            except DriverError as exc:
                keep(start, exc.completed)
                collector.step = start + len(exc.completed) + 1
                raise
            keep(start, results)
            progress.update(len(results))
    finally:
        progress.close()
