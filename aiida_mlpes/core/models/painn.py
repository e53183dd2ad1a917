"""PaiNN (Schütt, Unke & Gastegger, ICML 2021): equivariant message passing with scalar and vector features.

Each atom carries scalars s (N, F) and vectors v (N, 3, F). A block's message step filters
phi(s_j) = W act(W s_j) (3F channels) with W(r_ij) = sinc radial basis -> linear, times a cosine cutoff,
and splits the product into a scalar update, a gate on v_j and a gate on the unit vector ``r_ij / |r_ij|``.
The update step mixes channels: U v, V v, ``a = MLP([s, |V v|])``; v += a_vv * U v; s += a_sv <U v, V v> + a_ss.
A two-layer head gives per-atom energies and charges from s.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import AtomisticModel
from .config import ModelConfig
from .layers import Dense, SincRBF, cosine_cutoff, lookup, make_activation, times_features
from .pairs import PairGeometry


class PaiNNBlock(nn.Module):
    """One PaiNN message + update block."""

    def __init__(self, n_features: int, activation: str) -> None:
        super().__init__()
        f = n_features
        self.n_features = f
        self.act = make_activation(activation)
        self.message1 = Dense(f, f)
        self.message2 = Dense(f, 3 * f)
        self.vector_mix = Dense(f, 2 * f, bias=False)
        self.update1 = Dense(2 * f, f)
        self.update2 = Dense(f, 3 * f)

    def forward(
        self,
        s: torch.Tensor,
        v: torch.Tensor,
        filters: torch.Tensor,
        unit: torch.Tensor,
        pairs: PairGeometry,
        first: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """s (N, F), v (N, 3, F), filters (pair shape, 3F), unit vectors (pair shape, 3) -> updated (s, v)."""
        f = self.n_features
        x = pairs.gather_j(self.message2(self.act(self.message1(s)))) * filters
        ds, dvv, dvs = x.split(f, dim=-1)
        s = s + pairs.sum_j(ds)
        dv = dvs.unsqueeze(-2) * unit.unsqueeze(-1)
        if not first:
            dv = dv + pairs.gather_j(v) * dvv.unsqueeze(-2)
        v = v + pairs.sum_j(dv)
        uv, vv = self.vector_mix(v).split(f, dim=-1)
        vnorm = torch.sqrt((vv * vv).sum(dim=1) + 1e-8)
        a = self.update2(self.act(self.update1(torch.cat([s, vnorm], dim=-1))))
        a_vv, a_sv, a_ss = a.split(f, dim=-1)
        v = v + a_vv.unsqueeze(1) * uv
        s = s + a_sv * (uv * vv).sum(dim=1) + a_ss
        return s, v


class PaiNN(AtomisticModel):
    """PaiNN: per-atom energies and charges from the scalar features after ``n_blocks`` blocks."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        f, k = config.n_features, config.n_rbf
        n_elements = len(config.elements)
        self.n_out = 2 if config.predict_charges else 1
        self.embedding = nn.Parameter(torch.randn(n_elements, f))
        self.charge_vector = nn.Parameter(torch.zeros(f)) if config.charge_embedding else None
        self.rbf = SincRBF(k, config.cutoff)
        self.filters = Dense(k, config.n_blocks * 3 * f)
        self.blocks = nn.ModuleList(PaiNNBlock(f, config.activation) for _ in range(config.n_blocks))
        self.act = make_activation(config.activation)
        self.head1 = Dense(f, f)
        self.head2 = Dense(f, self.n_out)
        self.output_shift = nn.Parameter(torch.zeros(n_elements, self.n_out))

    def atomic_outputs(
        self, species: torch.Tensor, pairs: PairGeometry, atom_charge: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        f = self.config.n_features
        s = lookup(self.embedding, species, 2)
        if self.charge_vector is not None:
            s = s + times_features(atom_charge.unsqueeze(1), self.charge_vector)
        v = s.new_zeros(len(s), 3, f)
        distances = pairs.distances
        cut = cosine_cutoff(distances, self.config.cutoff).unsqueeze(-1)
        filters = (self.filters(self.rbf(distances)) * cut).split(3 * f, dim=-1)
        unit = pairs.vectors / distances.unsqueeze(-1)
        for index, (block, block_filters) in enumerate(zip(self.blocks, filters, strict=True)):
            s, v = block(s, v, block_filters, unit, pairs, index == 0)
        out = self.head2(self.act(self.head1(s))) + lookup(self.output_shift, species, 2)
        if self.n_out == 2:
            return out[:, 0], out[:, 1]
        return out[:, 0], None
