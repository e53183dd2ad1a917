"""PhysNet (Unke & Meuwly, J. Chem. Theory Comput. 15, 3678 (2019)).

Atoms start from an element embedding (plus the molecule's total charge times a learned vector); each of
``n_blocks`` modules runs an interaction block (messages G(g_ij) * act(W_J act(x_j))), residual layers, a gated
update x <- u * x + W act(m), atomic residual layers and an output block giving per-atom energy and charge;
outputs are summed over modules. Distances enter through the exp-normal radial basis with a smooth cutoff.
The Coulomb term between the predicted charges lives in :class:`~.base.AtomisticModel`.

Implementation notes (speed): W_I and W_J act on the same input and are fused into one (F, 2F) matmul; the
radial filters of all modules come from one (K, n_blocks * F) matmul; where a shifted softplus feeds a linear
layer, its -ln 2 is absorbed in that layer's bias (same function class, fewer operations).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .base import AtomisticModel
from .config import ModelConfig
from .layers import Dense, ExpNormalRBF, Residual, lookup, make_activation, times_features
from .pairs import PairGeometry


class PhysNetModule(nn.Module):
    """One PhysNet module: interaction block, atomic residuals, output block (energy, charge)."""

    h_shift: torch.Tensor  # buffer (2F,)

    def __init__(self, config: ModelConfig, n_out: int) -> None:
        super().__init__()
        f = config.n_features
        self.n_features = f
        self.act = make_activation(config.activation, before_linear=True)
        self.dense_ij = Dense(f, 2 * f)
        # the shift of the shifted softplus on h = act(W_ij act(x)), which no linear layer follows
        shift = -math.log(2.0) if config.activation == "shifted_softplus" else 0.0
        self.register_buffer("h_shift", torch.full((2 * f,), shift), persistent=False)
        self.residual_interaction = nn.ModuleList(
            Residual(f, config.activation) for _ in range(config.n_residual_interaction)
        )
        self.dense_update = Dense(f, f)
        self.gate = nn.Parameter(torch.ones(f))
        self.residual_atomic = nn.ModuleList(
            Residual(f, config.activation) for _ in range(config.n_residual_atomic)
        )
        self.residual_output = nn.ModuleList(
            Residual(f, config.activation) for _ in range(config.n_residual_output)
        )
        self.output = Dense(f, n_out, zero=True)

    def forward(
        self, x: torch.Tensor, activated: torch.Tensor, filters: torch.Tensor, pairs: PairGeometry
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Atomic features x (N, F), act(x), pair filters (pair shape, F) -> new features (N, F), their
        activation (the next module's input; computed once), outputs (N, n_out)."""
        h = self.act(self.dense_ij(activated)) + self.h_shift
        h_i, h_j = h.split(self.n_features, dim=-1)
        m = h_i + pairs.sum_j(filters * pairs.gather_j(h_j))
        for layer in self.residual_interaction:
            m = layer(m)
        x = times_features(x, self.gate) + self.dense_update(self.act(m))
        for layer in self.residual_atomic:
            x = layer(x)
        x_activated = self.act(x)
        y, y_activated = x, x_activated
        for layer in self.residual_output:
            y, y_activated = layer(y, y_activated), None
        if y_activated is None:
            y_activated = self.act(y)
        return x, x_activated, self.output(y_activated)


class PhysNet(AtomisticModel):
    """PhysNet: per-atom energies and charges from ``n_blocks`` modules (see module docstring)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        f, k = config.n_features, config.n_rbf
        n_elements = len(config.elements)
        self.n_out = 2 if config.predict_charges else 1
        self.embedding = nn.Parameter(torch.empty(n_elements, f).uniform_(-(3.0**0.5), 3.0**0.5))
        self.charge_vector = nn.Parameter(torch.zeros(f)) if config.charge_embedding else None
        self.rbf = ExpNormalRBF(k, config.cutoff)
        self.filters = Dense(k, config.n_blocks * f, bias=False)
        self.blocks = nn.ModuleList(PhysNetModule(config, self.n_out) for _ in range(config.n_blocks))
        self.output_shift = nn.Parameter(torch.zeros(n_elements, self.n_out))
        self.act = make_activation(config.activation, before_linear=True)

    def atomic_outputs(
        self, species: torch.Tensor, pairs: PairGeometry, atom_charge: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = lookup(self.embedding, species, 2)
        if self.charge_vector is not None:
            x = x + times_features(atom_charge.unsqueeze(1), self.charge_vector)
        filters = self.filters(self.rbf(pairs.distances)).split(self.config.n_features, dim=-1)
        total = lookup(self.output_shift, species, 2)
        activated = self.act(x)
        for block, block_filters in zip(self.blocks, filters, strict=True):
            x, activated, out = block(x, activated, block_filters, pairs)
            total = total + out
        if self.n_out == 2:
            return total[:, 0], total[:, 1]
        return total[:, 0], None
