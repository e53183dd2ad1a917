"""PNG plots of characterization results (matplotlib ``Figure`` objects, no pyplot state, no display).

Energies are plotted in eV relative to the lowest point (paths) or to V(minimum) (DMC).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure

from aiida_mlpes.core.units import INV_CM

if TYPE_CHECKING:
    from aiida_mlpes.core.characterize.dmc import DMCResult
    from aiida_mlpes.core.characterize.mep import PathResult


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def plot_path(result: PathResult, path: str | Path, title: str = "Minimum energy path") -> Path:
    """Energy profile of an MEP (against path length) or MDP (against time, with kinetic and total energy)."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    reference = float(np.min(result.energies))
    dynamic = "kinetic_energy" in result.extra
    ax.plot(result.coordinate, result.energies - reference, "-", color="C0", label="potential")
    if dynamic:
        ax.plot(result.coordinate, result.extra["kinetic_energy"], "-", color="C1", label="kinetic")
        ax.plot(result.coordinate, result.extra["total_energy"] - reference, "--", color="C2", label="total")
        ax.set_xlabel("time from the transition state / fs")
        ax.legend()
    else:
        ax.set_xlabel("path length from the transition state / Angstrom")
    ts = result.ts_index
    ax.plot(result.coordinate[ts], result.energies[ts] - reference, "o", color="C3", label="TS")
    ax.set_ylabel("energy / eV")
    ax.set_title(title)
    return _save(fig, path)


def plot_dmc(result: DMCResult, path: str | Path) -> Path:
    """Reference energy (E_ref - V_min, cm^-1) and population per step, with the ZPE estimate."""
    fig = Figure(figsize=(7, 6))
    ax_e, ax_n = fig.subplots(2, 1, sharex=True)
    steps = np.arange(len(result.energy_trace))
    eq = int(result.settings.get("eqsteps", 0))
    ax_e.plot(steps, result.energy_trace / INV_CM, lw=0.6, color="C0", label="E_ref")
    ax_e.axhline(
        result.zpe_cm, color="C3", label=f"ZPE {result.zpe_cm:.1f} ± {result.zpe_error / INV_CM:.1f}"
    )
    if result.harmonic_zpe is not None:
        ax_e.axhline(result.harmonic_zpe / INV_CM, color="C2", ls="--", label="harmonic ZPE")
    ax_e.axvline(eq, color="grey", ls=":")
    production = result.energy_trace[eq:] / INV_CM
    if len(production) > 1:
        low, high = np.percentile(production, [0.5, 99.5])
        pad = 0.5 * (high - low) + 1.0
        ax_e.set_ylim(low - pad, high + pad)
    ax_e.set_ylabel("energy above minimum / cm$^{-1}$")
    ax_e.legend(fontsize=8)
    ax_n.plot(steps, result.population_trace, lw=0.6, color="C1")
    ax_n.axhline(result.settings.get("nwalkers", 0), color="grey", ls=":")
    if len(result.hole_steps):
        ax_n.plot(result.hole_steps, np.full(len(result.hole_steps), ax_n.get_ylim()[0]), "|", color="C3")
    ax_n.set_xlabel("DMC step")
    ax_n.set_ylabel(f"walkers ({result.n_holes} holes)")
    return _save(fig, path)
