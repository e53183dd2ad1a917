"""Layers shared by PhysNet and PaiNN: activations, radial bases, cutoff functions, scatter sums.

Distances are in Angstrom. All functions work on flat pair arrays (P,) built by ``neighbors.py``.

Committees (``committee.py``): the same layers evaluate K members at once when their parameters carry a
leading member dimension (a Dense weight (K, out, in), a feature vector (K, F), a table (K, E, F)). The
rows of the inputs are then member-blocked, K equal blocks one after the other (member k's atoms or pairs
in block k), and each block meets its own member's parameters: a Dense layer becomes one batched matmul
(a grouped GEMM), lookups and feature products are offset per block. With single-model parameters every
function is the plain operation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LN2 = math.log(2.0)
#: Lower bound on the exponent of the radial basis: exp(-80) = 1.8e-35, a normal float32 number. PyTorch's
#: float32 ``exp`` on this machine kind is 10-35x slower for arguments below about -87 (denormal or zero
#: results), and most exponents of the exp-normal basis lie far below (beta_k ~ (K/2)^2 = 1,024 for K = 64):
#: measured 10.7 ms against 1.0 ms for 64,000 NH3 pair values x 64 functions. A basis value of 1.8e-35
#: instead of a smaller one changes no sum it enters (relative 1e-35, far below float64 rounding).
EXP_FLOOR = -80.0


def shifted_softplus(x: torch.Tensor) -> torch.Tensor:
    """ln(0.5 e^x + 0.5): softplus shifted to pass through zero (PhysNet's activation)."""
    return nn.functional.softplus(x) - LN2


class ShiftedSoftplus(nn.Module):
    """Module form of :func:`shifted_softplus`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return shifted_softplus(x)


def make_activation(name: str, before_linear: bool = False) -> nn.Module:
    """``"shifted_softplus"`` or ``"silu"``.

    With ``before_linear=True`` a shifted softplus is returned unshifted (plain softplus): a linear layer
    that follows absorbs the constant -ln 2 in its bias, W (sp(x) - ln 2) + b = W sp(x) + b', so the
    function class is identical and one operation per activation (and per backward) is saved.
    """
    if name == "shifted_softplus":
        return nn.Softplus() if before_linear else ShiftedSoftplus()
    return nn.SiLU()


def polynomial_cutoff(r: torch.Tensor, cutoff: float) -> torch.Tensor:
    """PhysNet's smooth cutoff 1 - 6x^5 + 15x^4 - 10x^3 with x = r/cutoff, exactly 0 beyond the cutoff."""
    x = r / cutoff
    x3 = x * x * x
    value = 1.0 + x3 * (-10.0 + x * (15.0 - 6.0 * x))
    return torch.where(x < 1.0, value, torch.zeros_like(r))


def cosine_cutoff(r: torch.Tensor, cutoff: float) -> torch.Tensor:
    """Behler's cosine cutoff 0.5 (cos(pi r / cutoff) + 1), exactly 0 beyond the cutoff (PaiNN)."""
    value = 0.5 * (torch.cos(r * (math.pi / cutoff)) + 1.0)
    return torch.where(r < cutoff, value, torch.zeros_like(r))


class ExpNormalRBF(nn.Module):
    """PhysNet radial basis g_k(r) = phi(r) exp(-beta_k (exp(-r) - mu_k)^2), trainable mu and beta.

    mu_k are spaced evenly in [exp(-cutoff), 1], beta_k = (2 (1 - exp(-cutoff)) / K)^-2 (Unke & Meuwly 2019).
    Exponents below :data:`EXP_FLOOR` are raised to it (speed; the basis value stays below 1.8e-35).
    """

    def __init__(self, n_rbf: int, cutoff: float) -> None:
        super().__init__()
        self.cutoff = float(cutoff)
        start = math.exp(-self.cutoff)
        self.centers = nn.Parameter(torch.linspace(start, 1.0, n_rbf))
        width = (2.0 / n_rbf * (1.0 - start)) ** -2
        self.widths = nn.Parameter(torch.full((n_rbf,), width))

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        """(P,) distances -> (P, K) basis values, already multiplied by the cutoff function."""
        if self.centers.dim() == 1:
            diff = torch.exp(-r).unsqueeze(-1) - self.centers
            exponent = (-self.widths * diff * diff).clamp(min=EXP_FLOOR)
            return polynomial_cutoff(r, self.cutoff).unsqueeze(-1) * torch.exp(exponent)
        members = self.centers.shape[0]  # committee: member-blocked pairs, (members, K) centres and widths
        diff = torch.exp(-r).reshape(members, -1, 1) - self.centers.unsqueeze(1)
        exponent = (-self.widths.unsqueeze(1) * diff * diff).clamp(min=EXP_FLOOR)
        basis = torch.exp(exponent).reshape(*r.shape, -1)
        return polynomial_cutoff(r, self.cutoff).unsqueeze(-1) * basis


class SincRBF(nn.Module):
    """PaiNN radial basis sin(k pi r / cutoff) / r, k = 1..K (no cutoff applied; the filter applies it)."""

    frequencies: torch.Tensor  # buffer (K,)

    def __init__(self, n_rbf: int, cutoff: float) -> None:
        super().__init__()
        self.cutoff = float(cutoff)
        self.register_buffer("frequencies", torch.arange(1, n_rbf + 1) * (math.pi / self.cutoff))

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        """(P,) distances -> (P, K)."""
        return torch.sin(r.unsqueeze(-1) * self.frequencies) / r.unsqueeze(-1)


def scatter_sum(values: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """Sum rows of ``values`` into ``size`` rows by ``index`` (pair -> atom, atom -> molecule)."""
    out = values.new_zeros((size, *values.shape[1:]))
    return out.index_add_(0, index, values)


def times_features(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x * weight`` for a per-feature weight (F,); a committee weight (K, F) multiplies each member-blocked
    block of rows of ``x`` (R, ..., F or 1) by its member's row."""
    if weight.dim() == 1:
        return x * weight
    members = weight.shape[0]
    blocks = x.reshape(members, -1, *x.shape[1:])
    out = blocks * weight.reshape(members, 1, *([1] * (x.dim() - 2)), weight.shape[-1])
    return out.reshape(x.shape[0], *out.shape[2:])


def lookup(table: torch.Tensor, index: torch.Tensor, ndim: int) -> torch.Tensor:
    """``table.index_select(0, index)`` for a table of ``ndim`` dimensions (e.g. an element embedding);
    a committee table ``(K, *table)`` is indexed block by block with member-blocked ``index``."""
    if table.dim() == ndim:
        return table.index_select(0, index)
    members, rows = table.shape[0], table.shape[1]
    offset = torch.arange(members, device=index.device) * rows
    flat = table.reshape(members * rows, *table.shape[2:])
    return flat.index_select(0, (index.reshape(members, -1) + offset.unsqueeze(1)).reshape(-1))


class Dense(nn.Linear):
    """Linear layer with Xavier-uniform weights and zero bias (PhysNet/PaiNN initialisation).

    With a committee weight (K, out, in) the member-blocked rows of the input go through one batched matmul.
    """

    def __init__(self, n_in: int, n_out: int, bias: bool = True, zero: bool = False) -> None:
        super().__init__(n_in, n_out, bias=bias)
        if zero:
            nn.init.zeros_(self.weight)
        else:
            nn.init.xavier_uniform_(self.weight)
        if bias:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.dim() == 2:
            return F.linear(x, self.weight, self.bias)
        members = self.weight.shape[0]
        blocks = x.reshape(members, -1, x.shape[-1])
        weight = self.weight.transpose(1, 2)
        if self.bias is None:
            out = torch.bmm(blocks, weight)
        else:
            out = torch.baddbmm(self.bias.unsqueeze(1), blocks, weight)
        return out.reshape(*x.shape[:-1], out.shape[-1])


class Residual(nn.Module):
    """Pre-activation residual layer x + W2 act(W1 act(x) + b1) + b2 (PhysNet; shifts absorbed in b1, b2)."""

    def __init__(self, n_features: int, activation: str) -> None:
        super().__init__()
        self.act = make_activation(activation, before_linear=True)
        self.dense1 = Dense(n_features, n_features)
        self.dense2 = Dense(n_features, n_features)

    def forward(self, x: torch.Tensor, activated: torch.Tensor | None = None) -> torch.Tensor:
        """``activated``: act(x) if the caller has it already (saves one activation)."""
        a = self.act(x) if activated is None else activated
        return x + self.dense2(self.act(self.dense1(a)))
