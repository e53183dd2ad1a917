"""ASE calculator and batched Potential for trained PhysNet/PaiNN models (single models and ensembles).

- :class:`MLPESCalculator`: ASE calculator with ``energy``, ``forces``, ``dipole`` and ``charges``; with a
  committee (a committee model file, a :class:`~.models.Committee`, or a list of models) it returns committee
  means plus ``energy_std`` (eV), ``forces_std`` (eV/Angstrom, per atom and component) and ``forces_std_max``
  (eV/Angstrom) as extra results (query by committee). A list of models of one ModelConfig is stacked into
  one Committee, so all members are evaluated in one batched call.
- :meth:`MLPESCalculator.as_potential` -> :class:`MLPotential`: the DESIGN.md Potential contract,
  ``potential(positions (B, N, 3) Angstrom) -> (energies (B,) eV, forces (B, N, 3) eV/Angstrom)``, for one
  fixed molecule. Species and batch indices are built once and cached per chunk size (one molecule runs in
  the model's dense pair layout, which needs no pair list), so a call costs the network and nothing else.
  ``potential.energies(positions)`` skips forces (no autograd; DMC needs no forces),
  ``potential.uncertainty(positions)`` gives the committee energy std (B,) eV,
  ``as_potential(..., return_std=True)`` makes calls return ``(energies, forces, energy_std)``, and
  ``potential.evaluate(positions)`` adds ``energy_std`` (B,) and ``forces_std_max`` (B,) eV/Angstrom (the
  largest per-atom norm of the force std, SPARC's selection measure).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any, cast

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from .models import AtomisticModel, Committee, load_model
from .models.fast_numpy import NumpyPhysNet
from .threads import default_threads, threads_for, torch_threads

ModelLike = str | os.PathLike | AtomisticModel | Committee


def load_models(
    models: ModelLike | Sequence[ModelLike], device: str | torch.device = "cpu"
) -> list[AtomisticModel | Committee]:
    """One model, a path, or a list of them -> list of models in eval mode on ``device``; models of one
    ModelConfig in a list are stacked into one :class:`Committee` (all members in one batched call)."""
    if isinstance(models, (str, os.PathLike, AtomisticModel, Committee)):
        models = [models]
    out: list[AtomisticModel | Committee] = []
    for item in models:
        model = item if isinstance(item, (AtomisticModel, Committee)) else load_model(item, device=device)
        out.append(model.to(device).eval())
    if not out:
        raise ValueError("no model given")
    if len(out) > 1 and all(isinstance(m, AtomisticModel) for m in out):
        configs = {str(m.config.to_dict()) for m in out}
        if len(configs) == 1:
            out = [Committee.from_members(cast(list[AtomisticModel], out)).eval()]
    return out


def member_count(model: AtomisticModel | Committee) -> int:
    """Members of ``model``: its committee size, 1 for a single model."""
    return model.size if isinstance(model, Committee) else 1


@contextlib.contextmanager
def _nothing() -> Iterator[None]:
    yield


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> cuda if available else cpu; otherwise ``torch.device(device)``."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def committee_std(values: np.ndarray) -> np.ndarray:
    """Standard deviation over axis 0 (committee members); exactly zero for identical members."""
    return np.std(values - values[:1], axis=0)


#: Chunks up to this many atoms use the numpy engine (PhysNet): faster per call for a few atoms, slower
#: than torch from about 32-64 atoms on (measured with 128 features).
NUMPY_MAX_ATOMS = 32


class MLPotential:
    """Batched energies and forces of one fixed molecule from one model or a committee (eV, Angstrom).

    Args:
        models: list of models and committees (a committee when there is more than one member in total;
            results are committee means).
        numbers: atomic numbers (N,); checked against every model's elements here, before any work.
        charge: total charge in e.
        chunk_size: structures evaluated per network call (bounds memory; larger batches are split).
        return_std: if True, ``__call__`` returns ``(energies, forces, energy_std)``.
        num_threads: the most torch threads a chunk may use; ``None`` (default): torch's current setting
            (``torch.set_num_threads``) capped by the cores the job is given (:mod:`..threads`). Each chunk
            uses ``threads_for(its atom count, this cap)`` threads: small chunks run on one thread.
        use_numpy: evaluate chunks of at most ``NUMPY_MAX_ATOMS`` atoms of a PhysNet with the numpy engine
            (``models/fast_numpy.py``; 2-3x lower per-operation overhead than torch).
    """

    def __init__(
        self,
        models: Sequence[AtomisticModel | Committee],
        numbers: Sequence[int],
        charge: float = 0.0,
        chunk_size: int = 2048,
        return_std: bool = False,
        num_threads: int | None = None,
        use_numpy: bool = True,
    ) -> None:
        self.models = list(models)
        if num_threads is not None and int(num_threads) < 1:
            raise ValueError(f"num_threads must be a positive integer, got {num_threads}")
        self.n_members = sum(member_count(m) for m in self.models)
        self.num_threads = num_threads
        self.numbers = np.asarray(numbers, dtype=np.int64).reshape(-1)
        if len(self.numbers) == 0:
            raise ValueError("numbers is empty: a potential needs at least one atom")
        self.n_atoms = len(self.numbers)
        self.charge = float(charge)
        self.chunk_size = int(chunk_size)
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.return_std = return_std
        first = self.models[0]
        self.device = first.element_energies.device
        self.dtype = first.dtype
        z = torch.as_tensor(self.numbers, device=self.device)
        for model in self.models:
            model.species(z)  # raises a ValueError naming unknown elements
        self._cache: dict[int, dict[str, torch.Tensor]] = {}
        #: numpy engines for small chunks (PhysNet only; None where unsupported)
        self._numpy = [
            NumpyPhysNet(m, self.numbers, self.charge)
            if use_numpy and isinstance(m, AtomisticModel) and NumpyPhysNet.supports(m)
            else None
            for m in self.models
        ]

    def _batch(self, positions: torch.Tensor) -> dict[str, torch.Tensor]:
        b = positions.shape[0]
        cached = self._cache.get(b)
        if cached is None:
            n = self.n_atoms
            n_atoms = torch.full((b,), n, dtype=torch.long, device=self.device)
            cached = {
                "atomic_numbers": torch.as_tensor(self.numbers, device=self.device).repeat(b),
                "batch": torch.arange(b, device=self.device).repeat_interleave(n),
                "n_atoms": n_atoms,
                "charge": torch.full((b,), self.charge, dtype=self.dtype, device=self.device),
            }
            # no pair list: one molecule of at most all_pairs_max_atoms atoms runs in the dense layout
            # (models/pairs.py), a larger one gets its vesin neighbour list from the model
            if len(self._cache) > 8:
                self._cache.clear()
            self._cache[b] = cached
        batch = dict(cached)
        batch["positions"] = positions.reshape(-1, 3)
        return batch

    def _check(self, positions: np.ndarray) -> np.ndarray:
        positions = np.asarray(positions, dtype=np.float64)
        if positions.ndim == 2:
            positions = positions[None]
        if positions.ndim != 3 or positions.shape[1:] != (self.n_atoms, 3):
            raise ValueError(f"positions have shape {positions.shape}; expected (B, {self.n_atoms}, 3)")
        if not np.isfinite(positions).all():
            bad = np.unique(np.nonzero(~np.isfinite(positions))[0])
            raise ValueError(f"positions of structure(s) {bad[:10].tolist()} are not finite")
        return positions

    def run_chunk(self, m: int, positions: np.ndarray, forces: bool = True) -> dict[str, np.ndarray]:
        """Model ``m`` on one chunk (B, N, 3): energy (B,), forces (B, N, 3), charges (B, N), dipole (B, 3);
        a committee gives every member's results at once, with a leading member axis (K, B, ...)."""
        b = len(positions)
        engine = self._numpy[m]
        if engine is not None and b * self.n_atoms <= NUMPY_MAX_ATOMS:
            try:
                return engine(positions, forces=forces)
            except FloatingPointError:
                pass  # exponent overflow in float32: the torch path below handles it
        chunk = torch.as_tensor(positions, dtype=self.dtype, device=self.device)
        batch = self._batch(chunk)
        model = self.models[m]
        on_cpu = self.device.type == "cpu"
        with torch_threads(self.threads(b)) if on_cpu else _nothing():
            if forces:
                out = model(batch, compute_forces=True)
            else:
                with torch.inference_mode():
                    out = model(batch, compute_forces=False)
        lead = (member_count(model),) if isinstance(model, Committee) else ()
        result = {"energy": out["energy"].cpu().numpy()}
        if forces:
            result["forces"] = (
                out["forces"].reshape(*lead, b, self.n_atoms, 3).cpu().numpy().astype(np.float64)
            )
        if "atomic_charges" in out:
            result["atomic_charges"] = (
                out["atomic_charges"].reshape(*lead, b, self.n_atoms).cpu().numpy().astype(float)
            )
            result["dipole"] = out["dipole"].cpu().numpy().astype(np.float64)
        return result

    def threads(self, n_structures: int) -> int:
        """Torch threads for a chunk of ``n_structures`` structures (see ``num_threads``)."""
        cores = default_threads() if self.num_threads is None else self.num_threads
        return threads_for(n_structures * self.n_atoms, cores)

    def refresh(self) -> None:
        """Re-read the models' weights (only needed after writing to ``param.data`` directly)."""
        for engine in self._numpy:
            if engine is not None:
                engine.refresh()

    def member_results(self, positions: np.ndarray, forces: bool = True) -> dict[str, np.ndarray]:
        """Every member's results for checked (B, N, 3) positions, stacked over members: ``energy`` (K, B),
        ``forces`` (K, B, N, 3) if asked, ``atomic_charges`` (K, B, N) and ``dipole`` (K, B, 3) if predicted."""
        b = len(positions)
        parts: dict[str, list[list[np.ndarray]]] = {}
        for start in range(0, b, self.chunk_size):
            stop = min(start + self.chunk_size, b)
            for m, model in enumerate(self.models):
                out = self.run_chunk(m, positions[start:stop], forces=forces)
                for key, value in out.items():
                    rows = parts.setdefault(key, [[] for _ in self.models])
                    rows[m].append(value if isinstance(model, Committee) else value[None])
        return {
            key: np.concatenate([np.concatenate(chunks, axis=1) for chunks in rows], axis=0)
            for key, rows in parts.items()
        }

    def evaluate(self, positions: np.ndarray, forces: bool = True) -> dict[str, np.ndarray]:
        """All results for (B, N, 3) positions: ``energy`` (B,), ``forces`` (B, N, 3) if asked, and for
        committees ``energy_std`` (B,), ``forces_std`` (B, N, 3) and ``forces_std_max`` (B,) = max over atoms
        of the norm of the per-atom force std; eV and eV/Angstrom."""
        members = self.member_results(self._check(positions), forces=forces)
        energies = members["energy"]
        result = {"energy": energies.mean(axis=0)}
        if forces:
            result["forces"] = members["forces"].mean(axis=0)
        if len(energies) > 1:
            result["energy_std"] = committee_std(energies)
            if forces:
                result["forces_std"] = committee_std(members["forces"])
                result["forces_std_max"] = np.linalg.norm(result["forces_std"], axis=-1).max(axis=-1)
        return result

    def __call__(self, positions: np.ndarray) -> tuple[np.ndarray, ...]:
        """(B, N, 3) Angstrom -> energies (B,) eV, forces (B, N, 3) eV/A [, energy_std (B,) eV]."""
        out = self.evaluate(positions, forces=True)
        if self.return_std:
            return out["energy"], out["forces"], out.get("energy_std", np.zeros_like(out["energy"]))
        return out["energy"], out["forces"]

    def energies(self, positions: np.ndarray) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Energies (B,) eV without forces [and the committee std (B,) eV when ``return_std``]."""
        out = self.evaluate(positions, forces=False)
        if self.return_std:
            return out["energy"], out.get("energy_std", np.zeros_like(out["energy"]))
        return out["energy"]

    def uncertainty(self, positions: np.ndarray) -> np.ndarray:
        """Committee standard deviation of the energy (B,) in eV (zeros for a single model)."""
        out = self.evaluate(positions, forces=False)
        return out.get("energy_std", np.zeros_like(out["energy"]))


class MLPESCalculator(Calculator):
    """ASE calculator for one model or a committee (a committee file or module, or a list of models).

    Args:
        model: path to a saved model or committee file, a model or committee, or a list of either.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        charge: total charge in e; ``None`` reads ``atoms.info["charge"]`` (default 0).
    """

    implemented_properties = ["energy", "free_energy", "forces", "dipole", "charges"]

    def __init__(
        self,
        model: ModelLike | Sequence[ModelLike],
        device: str | torch.device = "cpu",
        charge: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.device = resolve_device(device)
        self.models = load_models(model, self.device)
        self.charge = charge
        self._potential: MLPotential | None = None

    def as_potential(
        self,
        numbers: Sequence[int],
        charge: float = 0.0,
        chunk_size: int = 2048,
        return_std: bool = False,
        num_threads: int | None = None,
        use_numpy: bool = True,
    ) -> MLPotential:
        """A batched :class:`MLPotential` for the fixed molecule ``numbers`` with total ``charge`` (e)."""
        return MLPotential(
            self.models,
            numbers,
            charge=charge,
            chunk_size=chunk_size,
            return_std=return_std,
            num_threads=num_threads,
            use_numpy=use_numpy,
        )

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: Sequence[str] = ("energy",),
        system_changes: Sequence[str] = all_changes,
    ) -> None:
        super().calculate(atoms, properties, system_changes)
        atoms = cast(Atoms, self.atoms)  # set by Calculator.calculate above
        charge = self.charge if self.charge is not None else float(atoms.info.get("charge", 0.0))
        pot = self._potential
        if pot is None or pot.charge != charge or not np.array_equal(pot.numbers, atoms.numbers):
            pot = self._potential = self.as_potential(atoms.numbers, charge=charge)
        members = pot.member_results(pot._check(atoms.positions))
        energy, forces = members["energy"][:, 0], members["forces"][:, 0]
        self.results["energy"] = self.results["free_energy"] = float(energy.mean())
        self.results["forces"] = forces.mean(axis=0)
        if "dipole" in members:
            self.results["dipole"] = members["dipole"][:, 0].mean(axis=0)
            self.results["charges"] = members["atomic_charges"][:, 0].mean(axis=0)
        if len(energy) > 1:
            self.results["energy_std"] = float(committee_std(energy))
            self.results["forces_std"] = committee_std(forces)
            # SPARC's selection measure: the largest per-atom norm of the force std (eV/Angstrom)
            self.results["forces_std_max"] = float(np.linalg.norm(self.results["forces_std"], axis=-1).max())
