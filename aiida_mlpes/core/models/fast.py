"""Hand-written reverse pass for PhysNet energies and forces at prediction time (no autograd graph).

For small molecules PhysNet's cost is the number of tensor operations, not arithmetic: autograd records a
node for every operation and replays it with its own bookkeeping. Here the forward pass runs under
``no_grad`` keeping only what the reverse pass needs, and the reverse pass is written out layer by layer
(one matmul and one fused activation-backward per dense layer; the first module's inputs, which do not
depend on positions, are skipped). Results equal autograd's to rounding (tests compare them in float64).

Used by :meth:`AtomisticModel.forward` when forces are requested without ``create_graph`` (prediction,
validation) for PhysNet without dispersion; training (``create_graph=True``) always uses autograd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import COULOMB_EV_ANGSTROM

aten = torch.ops.aten


def _activation(name: str):
    if name == "shifted_softplus":  # plain softplus: the shift lives in the following biases
        return F.softplus, lambda grad, x: aten.softplus_backward(grad, x, 1.0, 20.0)
    return F.silu, aten.silu_backward


def _linear(x: torch.Tensor, layer: torch.nn.Linear) -> torch.Tensor:
    return F.linear(x, layer.weight, layer.bias)


def _residual_forward(layer, x, act, saved):
    t = _linear(act(x), layer.dense1)
    saved.append((x, t))
    return _linear(act(t), layer.dense2).add_(x)


def _residual_backward(layers, grad, act_bw, saved):
    for layer, (x, t) in zip(reversed(layers), reversed(saved), strict=True):
        gt = act_bw(grad.mm(layer.dense2.weight), t)
        grad = act_bw(gt.mm(layer.dense1.weight), x).add_(grad)
    return grad


def _cutoff_and_derivative(r: torch.Tensor, cutoff: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PhysNet polynomial cutoff and its derivative d/dr (1/Angstrom), both zero beyond ``cutoff``."""
    x = r / cutoff
    inside = x < 1.0
    x2 = x * x
    value = torch.where(inside, 1.0 + x2 * x * (-10.0 + x * (15.0 - 6.0 * x)), torch.zeros_like(r))
    one_minus = 1.0 - x
    deriv = torch.where(inside, (-30.0 / cutoff) * x2 * one_minus * one_minus, torch.zeros_like(r))
    return value, deriv


def molecular_outputs(
    model,
    total: torch.Tensor,
    species: torch.Tensor,
    positions: torch.Tensor,
    r: torch.Tensor,
    idx_i: torch.Tensor,
    idx_j: torch.Tensor,
    batch_index: torch.Tensor,
    n_atoms: torch.Tensor,
    charge: torch.Tensor,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor | None]:
    """From per-atom outputs ``total`` (N, 1 or 2: energy, raw charge) to energies (float64, with Coulomb
    and references), charges and dipoles; also the gradient of the energy w.r.t. ``total`` and the
    Coulomb part of dE/dr per pair (or None)."""
    cfg = model.config
    dtype, n_mol = positions.dtype, len(n_atoms)
    scale = model.energy_scale.to(dtype)
    energy = total.new_zeros(n_mol).index_add_(0, batch_index, total[:, 0]) * scale
    g_total = torch.empty_like(total)
    g_total[:, 0] = scale
    g_r = None
    out: dict[str, torch.Tensor] = {}
    if model.n_out == 2:
        count = n_atoms.to(dtype)
        excess = (total.new_zeros(n_mol).index_add_(0, batch_index, total[:, 1]) - charge) / count
        q = total[:, 1] - excess.index_select(0, batch_index)
        out["atomic_charges"] = q
        out["dipole"] = positions.new_zeros(n_mol, 3).index_add_(0, batch_index, q.unsqueeze(1) * positions)
        g_q = torch.zeros_like(q)
        if cfg.electrostatics:
            switch, dswitch = _cutoff_and_derivative(r, 0.5 * (cfg.short_range_cutoff or cfg.cutoff))
            shielded = torch.rsqrt(r * r + 1.0)
            inv_r = 1.0 / r
            chi = switch * shielded + (1.0 - switch) * inv_r
            dchi = dswitch * (shielded - inv_r) - switch * r * shielded**3 - (1.0 - switch) * inv_r * inv_r
            qj = q.index_select(0, idx_j)
            qiqj = q.index_select(0, idx_i) * qj
            energy = energy.index_add(
                0, batch_index.index_select(0, idx_i), (0.5 * COULOMB_EV_ANGSTROM) * qiqj * chi
            )
            g_q = g_q.index_add_(0, idx_i, COULOMB_EV_ANGSTROM * chi * qj)
            g_r = (0.5 * COULOMB_EV_ANGSTROM) * qiqj * dchi
        mean_g = g_q.new_zeros(n_mol).index_add_(0, batch_index, g_q) / count
        g_total[:, 1] = g_q - mean_g.index_select(0, batch_index)

    reference = positions.new_zeros(n_mol, dtype=torch.float64).index_add_(
        0, batch_index, model.element_energies.index_select(0, species)
    )
    out["energy"] = energy.to(torch.float64) + reference
    return out, g_total, g_r


@torch.no_grad()
def physnet_energy_forces(
    model,
    species: torch.Tensor,
    positions: torch.Tensor,
    idx_i: torch.Tensor,
    idx_j: torch.Tensor,
    batch_index: torch.Tensor,
    n_atoms: torch.Tensor,
    charge: torch.Tensor,
    forces: bool = True,
) -> dict[str, torch.Tensor]:
    """Energies (B,) eV float64, forces (N, 3) eV/A, and charges/dipole when predicted, for a PhysNet.

    ``idx_i``/``idx_j`` must hold all intramolecular ordered pairs (they also carry the Coulomb term).
    ``forces=False`` runs the forward pass only.
    """
    cfg = model.config
    act, act_bw = _activation(cfg.activation)
    n, f = len(species), cfg.n_features

    # radial basis with its cutoff (PhysNet exp-normal functions)
    vec = positions.index_select(0, idx_j) - positions.index_select(0, idx_i)
    r = torch.linalg.vector_norm(vec, dim=-1)
    exp_r = torch.exp(-r)
    diff = exp_r.unsqueeze(1) - model.rbf.centers
    width_diff = model.rbf.widths * diff
    gauss = torch.exp(-(width_diff * diff))
    fc, dfc = _cutoff_and_derivative(r, cfg.cutoff)
    filters = _linear(fc.unsqueeze(1) * gauss, model.filters).split(f, dim=1)

    x = model.embedding.index_select(0, species)
    if model.charge_vector is not None:
        x = x + charge.index_select(0, batch_index).unsqueeze(1) * model.charge_vector
    total = model.output_shift.index_select(0, species)
    saved = []
    for block, block_filters in zip(model.blocks, filters, strict=True):
        z = _linear(act(x), block.dense_ij)
        h_i, h_j = (act(z) + block.h_shift).split(f, dim=1)
        hj = h_j.index_select(0, idx_j)
        m = h_i.index_add(0, idx_i, block_filters * hj)
        res_int: list = []
        for layer in block.residual_interaction:
            m = _residual_forward(layer, m, act, res_int)
        x_new = _linear(act(m), block.dense_update).addcmul_(block.gate, x)
        res_atom: list = []
        for layer in block.residual_atomic:
            x_new = _residual_forward(layer, x_new, act, res_atom)
        y = x_new
        res_out: list = []
        for layer in block.residual_output:
            y = _residual_forward(layer, y, act, res_out)
        total = _linear(act(y), block.output).add_(total)
        if forces:
            saved.append((x, z, hj, m, y, res_int, res_atom, res_out))
        x = x_new

    out, g_total, g_r = molecular_outputs(
        model, total, species, positions, r, idx_i, idx_j, batch_index, n_atoms, charge
    )
    if not forces:
        return out

    # reverse pass through the modules
    g_filters = []
    g_x = None
    for b in range(len(model.blocks) - 1, -1, -1):
        block = model.blocks[b]
        x_in, z, hj, m, y, res_int, res_atom, res_out = saved[b]
        g_y = act_bw(g_total.mm(block.output.weight), y)
        g_y = _residual_backward(block.residual_output, g_y, act_bw, res_out)
        g_xn = g_y if g_x is None else g_y.add_(g_x)
        g_xn = _residual_backward(block.residual_atomic, g_xn, act_bw, res_atom)
        g_m = act_bw(g_xn.mm(block.dense_update.weight), m)
        g_m = _residual_backward(block.residual_interaction, g_m, act_bw, res_int)
        g_msg = g_m.index_select(0, idx_i)
        g_filters.append(g_msg * hj)
        if b == 0:
            break  # the first module's input (the embedding) does not depend on positions
        g_hj = g_m.new_zeros(n, f).index_add_(0, idx_j, g_msg * filters[b])
        g_z = act_bw(torch.cat([g_m, g_hj], dim=1), z)
        g_x = act_bw(g_z.mm(block.dense_ij.weight), x_in).addcmul_(g_xn, block.gate)
    g_rbf = torch.cat(g_filters[::-1], dim=1).mm(model.filters.weight) * gauss
    g_r_nn = dfc * g_rbf.sum(dim=1) + (2.0 * fc * exp_r) * (g_rbf * width_diff).sum(dim=1)
    g_r = g_r_nn if g_r is None else g_r + g_r_nn
    g_vec = (g_r / r).unsqueeze(1) * vec
    out["forces"] = (
        torch.zeros_like(positions).index_add_(0, idx_i, g_vec).index_add_(0, idx_j, g_vec, alpha=-1.0)
    )
    return out
