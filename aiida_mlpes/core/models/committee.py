"""A committee of K models of one :class:`ModelConfig`, evaluated as ONE batched computation.

The members' parameters are stacked along a leading committee dimension (K, ...) in one model of the single
architecture definition (``stack``). The committee replicates the batch K times, member-blocked (member k's
atoms, pairs and molecules in block k, each member with its own copy of the positions), and runs the regular
:meth:`AtomisticModel.forward` of ``stack`` ONCE: every Dense layer is one batched matmul (a grouped GEMM,
``torch.baddbmm``), lookups and feature products are offset per block (``layers.py``), and every other
operation is issued once instead of K times. Forces of all members come from one backward pass (the gradient
of the summed energies with respect to the K position copies). A ``torch.func.vmap`` strategy over
``functional_call`` gives the same numbers; ``benchmarks/committee.py`` compares the two.

Outputs have a leading member dimension: ``energy`` (K, B) eV float64, ``forces`` (K, N, 3) eV/Angstrom,
``atomic_charges`` (K, N) e and ``dipole`` (K, B, 3) e*Angstrom. :func:`committee_statistics` turns them into
the mean and the spread (query by committee; std with ddof=0, SPARC's max per-atom force deviation).

Molecules larger than ``config.all_pairs_max_atoms`` use a neighbour list that depends on the geometry;
for those the committee evaluates its members one after another (same results, K x the cost).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap

from .base import AtomisticModel
from .config import ModelConfig
from .neighbors import all_pairs

#: per-member buffers (stacked); every other buffer (element table, cutoff) is shared by the members
MEMBER_BUFFERS = ("element_energies", "energy_scale")
#: collate keys that may carry a leading member dimension (each member its own conformations)
PER_MEMBER_KEYS = ("positions", "charge", "energy", "forces", "dipole", "atomic_charges")


def check_committee_size(size: int) -> int:
    """``size`` as an int; a ValueError for fewer than 2 members (one model has no spread)."""
    if isinstance(size, bool) or int(size) != size or int(size) < 2:
        raise ValueError(
            f"a committee needs at least 2 members, got {size!r}; a single model has no committee spread"
        )
    return int(size)


class Committee(nn.Module):
    """K members of one architecture with stacked parameters (see the module docstring).

    Build with :meth:`from_members` (trained models of one config) or :meth:`from_config` (fresh members,
    member k initialised with ``torch.manual_seed(seed + k)``).
    """

    #: metadata stored with the model file (set by :func:`~.io.load_model`)
    metadata: dict[str, Any]

    def __init__(self, stack: AtomisticModel, size: int) -> None:
        super().__init__()
        self.size = check_committee_size(size)
        self.config: ModelConfig = stack.config
        # ``stack`` is a model whose parameters and member buffers have a leading (K,) dimension; its own
        # forward is only ever called through functional_call with one member's slices (inside vmap)
        self.stack = stack

    # -- construction -------------------------------------------------------------------------------------
    @classmethod
    def from_members(cls, members: Sequence[AtomisticModel]) -> Committee:
        """Stack trained models (same ModelConfig, at least two) into one committee on their device."""
        members = list(members)
        check_committee_size(len(members))
        config = members[0].config.to_dict()
        for k, member in enumerate(members[1:], start=1):
            if member.config.to_dict() != config:
                raise ValueError(f"committee member {k} has a different ModelConfig than member 0")
        return cls.from_state_dicts(members[0].config, [m.state_dict() for m in members]).to(
            members[0].element_energies.device
        )

    @classmethod
    def from_state_dicts(cls, config: ModelConfig, states: Sequence[dict[str, torch.Tensor]]) -> Committee:
        """A committee from K single-model state dicts (what :meth:`member_state_dicts` returns)."""
        from .io import build_model

        size = check_committee_size(len(states))
        stack = build_model(config)
        stack.load_state_dict(states[0])  # shared buffers (element table, cutoff) from member 0
        params = dict(stack.named_parameters())
        for key in stack.state_dict():
            if key in params or key in MEMBER_BUFFERS:
                continue
            if any(not torch.equal(states[0][key], s[key]) for s in states[1:]):
                raise ValueError(f"committee members disagree on the shared buffer {key!r}")
        for name, param in params.items():
            module, attr = _owner(stack, name)
            stacked = torch.stack([s[name].to(param.dtype) for s in states])
            setattr(module, attr, nn.Parameter(stacked))
        for name in MEMBER_BUFFERS:
            stacked = torch.stack([s[name].to(torch.float64) for s in states])
            stack.register_buffer(name, stacked, persistent=True)
        return cls(stack, size)

    @classmethod
    def from_config(cls, config: ModelConfig, size: int, seed: int = 0) -> Committee:
        """``size`` freshly initialised members; member k is ``build_model(config)`` after
        ``torch.manual_seed(seed + k)`` (member 0 equals the single model trained with ``seed``)."""
        from .io import build_model

        size = check_committee_size(size)
        members = []
        for k in range(size):
            torch.manual_seed(seed + k)
            members.append(build_model(config))
        return cls.from_members(members)

    def member_state_dicts(self) -> list[dict[str, torch.Tensor]]:
        """One regular single-model state dict per member (detached, on the committee's device)."""
        stacked = set(dict(self.stack.named_parameters())) | set(MEMBER_BUFFERS)
        state = self.stack.state_dict()
        return [
            {key: (value[k] if key in stacked else value).detach() for key, value in state.items()}
            for k in range(self.size)
        ]

    def member(self, k: int) -> AtomisticModel:
        """Member ``k`` as a regular model (a copy)."""
        from .io import build_model

        model = build_model(self.config).to(self.element_energies.device)
        model.load_state_dict(self.member_state_dicts()[k])
        return model.train(self.training)

    # -- the AtomisticModel interface the trainer and potentials use -----------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self.stack.dtype

    @property
    def element_energies(self) -> torch.Tensor:
        """(K, n_elements) reference energies in eV, float64."""
        return self.stack.element_energies

    @property
    def energy_scale(self) -> torch.Tensor:
        """Energy scale (eV) of member 0 (all members share it after :meth:`set_reference`)."""
        return self.stack.energy_scale[0]

    def set_reference(self, element_energies: Sequence[float] | np.ndarray, energy_scale: float) -> None:
        """Set the same per-element reference energies (eV) and energy scale (eV) for every member."""
        values = torch.as_tensor(np.asarray(element_energies, dtype=np.float64).reshape(-1))
        if len(values) != len(self.config.elements):
            raise ValueError(
                f"element_energies has {len(values)} entries; expected one per element {self.config.elements}"
            )
        if not np.isfinite(float(energy_scale)) or float(energy_scale) <= 0:
            raise ValueError(f"energy_scale must be a positive finite number (eV), got {energy_scale}")
        self.stack.element_energies.copy_(values.expand(self.size, -1))
        self.stack.energy_scale.fill_(float(energy_scale))

    def species(self, atomic_numbers: torch.Tensor) -> torch.Tensor:
        """Atomic numbers -> element indices; unknown elements raise a ValueError."""
        return self.stack.species(atomic_numbers)

    @torch.no_grad()
    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """Clip each member's gradient norm to ``max_norm`` on its own (members never share a scale);
        returns the (K,) norms before clipping."""
        grads = [p.grad for p in self.stack.parameters() if p.grad is not None]
        if not grads:
            return torch.zeros(self.size)
        squares = torch.stack([g.reshape(self.size, -1).square().sum(dim=1) for g in grads]).sum(dim=0)
        norms = squares.sqrt()
        factor = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(factor.to(g.dtype).reshape(-1, *([1] * (g.dim() - 1))))
        return norms

    # -- evaluation ---------------------------------------------------------------------------------------
    def _member_inputs(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        params: dict[str, torch.Tensor] = dict(self.stack.named_parameters())
        buffers: dict[str, torch.Tensor] = {name: getattr(self.stack, name) for name in MEMBER_BUFFERS}
        return params, buffers

    #: ``"grouped"`` (default): ONE forward of the stacked model over member-blocked rows, so every layer is
    #: one batched matmul or one offset lookup (see layers.py); ``"vmap"``: ``torch.func.vmap`` over
    #: ``functional_call`` of the members (same results; kept for comparison in benchmarks/committee.py).
    strategy: str = "grouped"

    def forward(
        self, batch: dict[str, torch.Tensor], compute_forces: bool = True, create_graph: bool = False
    ) -> dict[str, torch.Tensor]:
        """All members on one batch: energy (K, B), forces (K, N, 3), atomic_charges (K, N), dipole (K, B, 3).

        ``batch`` is a :func:`collate` dict shared by all members, or (training: each member its own data
        order) one whose :data:`PER_MEMBER_KEYS` have a leading (K,) dimension over conformations with the same
        atoms (:func:`stack_batches`).
        """
        k = self.size
        positions = batch["positions"]
        per_member = positions.dim() == 3
        if positions.dtype != self.dtype:
            positions = positions.to(self.dtype)
        if not per_member:
            positions = positions.unsqueeze(0).expand(k, *positions.shape)
        n_atoms = batch["n_atoms"]
        if ("idx_i" not in batch or "idx_j" not in batch) and (
            len(n_atoms) and int(n_atoms.max()) > self.config.all_pairs_max_atoms
        ):
            return self._member_loop(batch, positions, compute_forces, create_graph)
        if self.strategy == "vmap":
            return self._vmap(batch, positions, compute_forces, create_graph)
        n, b = positions.shape[1], len(n_atoms)
        idx_i, idx_j = batch.get("idx_i"), batch.get("idx_j")
        if idx_i is None or idx_j is None:
            idx_i, idx_j = all_pairs(n_atoms)
        device = n_atoms.device
        atom_offset = (torch.arange(k, device=device) * n).unsqueeze(1)
        rows = {
            "atomic_numbers": batch["atomic_numbers"].repeat(k),
            "positions": positions.reshape(k * n, 3),
            "batch": (
                batch["batch"].unsqueeze(0) + (torch.arange(k, device=device) * b).unsqueeze(1)
            ).reshape(-1),
            "n_atoms": n_atoms.repeat(k),
            "idx_i": (idx_i.unsqueeze(0) + atom_offset).reshape(-1),
            "idx_j": (idx_j.unsqueeze(0) + atom_offset).reshape(-1),
        }
        charge = batch.get("charge")
        if charge is not None:
            rows["charge"] = charge.reshape(-1) if per_member and charge.dim() == 2 else charge.repeat(k)
        out = self.stack(rows, compute_forces=compute_forces, create_graph=create_graph)
        return {key: value.reshape(k, -1, *value.shape[1:]) for key, value in out.items()}

    def _vmap(
        self,
        batch: dict[str, torch.Tensor],
        positions: torch.Tensor,
        compute_forces: bool,
        create_graph: bool,
    ) -> dict[str, torch.Tensor]:
        """The ``"vmap"`` strategy: the members' slices of the stacked parameters through vmap."""
        per_member = batch["positions"].dim() == 3
        shared = {key: value for key, value in batch.items() if key not in PER_MEMBER_KEYS}
        member = {
            key: batch[key]
            for key in PER_MEMBER_KEYS
            if key in batch and key != "positions" and per_member and batch[key].dim() > 0
        }
        if "idx_i" not in shared or "idx_j" not in shared:
            shared["idx_i"], shared["idx_j"] = all_pairs(batch["n_atoms"])
        self.species(batch["atomic_numbers"])  # unknown elements: a clear error before vmap
        params, buffers = self._member_inputs()

        def one(p: dict, b: dict, pos: torch.Tensor, extra: dict) -> dict[str, torch.Tensor]:
            inputs = dict(shared)
            inputs.update(extra)
            inputs["positions"] = pos
            return functional_call(self.stack, (p, b), (inputs,), {"compute_forces": False})

        grad_context = torch.enable_grad() if compute_forces else contextlib.nullcontext()
        with grad_context:
            if compute_forces and not positions.requires_grad:
                positions = positions.detach().clone().requires_grad_(True)
            out = vmap(one, in_dims=(0, 0, 0, 0))(params, buffers, positions, member)
            if compute_forces:
                (grad,) = torch.autograd.grad(
                    out["energy"].sum(), positions, create_graph=create_graph, retain_graph=create_graph
                )
                out["forces"] = -grad
        if not create_graph:
            out = {key: value.detach() for key, value in out.items()}
        return out

    def _member_loop(
        self,
        batch: dict[str, torch.Tensor],
        positions: torch.Tensor,
        compute_forces: bool,
        create_graph: bool,
    ) -> dict[str, torch.Tensor]:
        """The members one after another on their slices of ``positions`` (K, N, 3), then one backward for
        all members' forces; for molecules above ``all_pairs_max_atoms`` (geometry-dependent pair lists)."""
        params, buffers = self._member_inputs()
        per_member = batch["positions"].dim() == 3
        grad_context = torch.enable_grad() if compute_forces else contextlib.nullcontext()
        with grad_context:
            if compute_forces and not positions.requires_grad:
                positions = positions.detach().clone().requires_grad_(True)
            outs = []
            for m in range(self.size):
                inputs = {
                    key: (value[m] if per_member and key in PER_MEMBER_KEYS and value.dim() > 0 else value)
                    for key, value in batch.items()
                }
                inputs["positions"] = positions[m]
                member = ({n: p[m] for n, p in params.items()}, {n: b[m] for n, b in buffers.items()})
                outs.append(functional_call(self.stack, member, (inputs,), {"compute_forces": False}))
            out = {key: torch.stack([o[key] for o in outs]) for key in outs[0]}
            if compute_forces:
                (grad,) = torch.autograd.grad(
                    out["energy"].sum(), positions, create_graph=create_graph, retain_graph=create_graph
                )
                out["forces"] = -grad
        if not create_graph:
            out = {key: value.detach() for key, value in out.items()}
        return out


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The submodule holding the parameter/buffer ``name`` and its attribute name."""
    path, _, attr = name.rpartition(".")
    return (model.get_submodule(path) if path else model), attr


def stack_batches(batches: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One committee batch from K collate dicts over conformations with the same atoms in the same order
    (positions, targets and charge stacked to (K, ...); atomic numbers, batch index and pairs shared)."""
    first = batches[0]
    out = {key: value for key, value in first.items() if key not in PER_MEMBER_KEYS}
    for batch in batches[1:]:
        if not torch.equal(batch["atomic_numbers"], first["atomic_numbers"]) or not torch.equal(
            batch["n_atoms"], first["n_atoms"]
        ):
            raise ValueError("stack_batches needs conformations with the same atoms in every member batch")
    for key in PER_MEMBER_KEYS:
        if key in first:
            out[key] = torch.stack([b[key] for b in batches])
    return out


def unstack_members(flat: dict[str, torch.Tensor], size: int) -> dict[str, torch.Tensor]:
    """A committee batch from ONE collate dict of ``size`` member blocks (member k's conformations in block
    k, every block with the same atoms, as :func:`member_orders` gives): the same as :func:`stack_batches`
    of the blocks, without collating K times."""
    n_mol = len(flat["n_atoms"]) // size
    n = len(flat["atomic_numbers"]) // size
    out = {
        "atomic_numbers": flat["atomic_numbers"][:n],
        "batch": flat["batch"][:n],
        "n_atoms": flat["n_atoms"][:n_mol],
    }
    for key in PER_MEMBER_KEYS:
        if key in flat:
            out[key] = flat[key].reshape(size, -1, *flat[key].shape[1:])
    return out


def member_orders(
    order: np.ndarray, signature: np.ndarray, rngs: Sequence[np.random.Generator]
) -> np.ndarray:
    """(K, M) data orders, one per member: each member shuffles the conformations of every composition
    (``signature``: one class label per conformation) among the slots that ``order`` gives that class, so
    every member sees every conformation once per epoch in its own order while the batches of all members
    hold the same atoms (one batched computation)."""
    order = np.asarray(order)
    classes = signature[order]
    out = np.empty((len(rngs), len(order)), dtype=np.int64)
    for label in np.unique(classes):
        slots = np.flatnonzero(classes == label)
        members = np.flatnonzero(signature == label)
        for k, rng in enumerate(rngs):
            out[k, slots] = rng.permutation(members)
    return out


def composition_signature(n_atoms: np.ndarray, atomic_numbers: np.ndarray) -> np.ndarray:
    """One integer label per conformation; equal labels mean the same atomic numbers in the same order."""
    offsets = np.concatenate([[0], np.cumsum(n_atoms)])
    keys = [atomic_numbers[offsets[i] : offsets[i + 1]].tobytes() for i in range(len(n_atoms))]
    _, labels = np.unique(np.array(keys, dtype=object), return_inverse=True)
    return labels.astype(np.int64)


def committee_statistics(
    out: dict[str, torch.Tensor] | dict[str, np.ndarray], batch_index: np.ndarray, n_mol: int
) -> dict[str, np.ndarray]:
    """Mean and spread over the member axis (0) of committee outputs, as float64 numpy arrays.

    Returns ``energy``, ``forces``, ``dipole``, ``atomic_charges`` (means, where present), each with a
    ``<key>_std`` (ddof=0), and ``forces_std_max`` (B,): the largest per-atom norm of the force std,
    ``max_i sqrt(sum_xyz std_ixyz^2)`` (SPARC's measure), in eV/Angstrom.
    """
    result: dict[str, np.ndarray] = {}
    for key, value in out.items():
        values = value.detach().cpu().double().numpy() if isinstance(value, torch.Tensor) else value
        values = np.asarray(values, dtype=np.float64)
        result[key] = values.mean(axis=0)
        # deviations from member 0 first: exactly zero spread for identical members
        result[f"{key}_std"] = np.std(values - values[:1], axis=0)
    if "forces_std" in result:
        per_atom = np.linalg.norm(result["forces_std"], axis=-1)
        worst = np.zeros(n_mol)
        np.maximum.at(worst, np.asarray(batch_index), per_atom)
        result["forces_std_max"] = worst
    return result
