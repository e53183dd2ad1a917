"""Hand-written reverse pass for PaiNN energies and forces at prediction time (see ``fast.py``).

Same idea as for PhysNet: the forward pass runs without an autograd graph, keeping what the reverse pass
needs, and the reverse pass is written out block by block. Positions enter through the filters (sinc
radial basis and cosine cutoff) and the unit vectors ``r_ij / |r_ij|``. Tests compare it with autograd.
"""

from __future__ import annotations

import math

import torch

from .fast import _activation, _linear, molecular_outputs


def _scatter(values: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    return values.new_zeros((n, *values.shape[1:])).index_add_(0, index, values)


@torch.no_grad()
def painn_energy_forces(
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
    """Energies (B,) eV float64, forces (N, 3) eV/A, and charges/dipole when predicted, for a PaiNN.

    ``idx_i``/``idx_j`` must hold all intramolecular ordered pairs (they also carry the Coulomb term).
    """
    cfg = model.config
    act, act_bw = _activation(cfg.activation)
    n, f, cutoff = len(species), cfg.n_features, cfg.cutoff

    vec = positions.index_select(0, idx_j) - positions.index_select(0, idx_i)
    r = torch.linalg.vector_norm(vec, dim=-1)
    inv_r = 1.0 / r
    unit = vec * inv_r.unsqueeze(1)
    phase = r.unsqueeze(1) * model.rbf.frequencies
    rbf = torch.sin(phase) * inv_r.unsqueeze(1)
    inside = r < cutoff
    cut = torch.where(inside, 0.5 * (torch.cos(r * (math.pi / cutoff)) + 1.0), torch.zeros_like(r))
    pre = _linear(rbf, model.filters)
    filters = (pre * cut.unsqueeze(1)).split(3 * f, dim=1)

    s = model.embedding.index_select(0, species)
    if model.charge_vector is not None:
        s = s + charge.index_select(0, batch_index).unsqueeze(1) * model.charge_vector
    v = s.new_zeros(n, 3, f)
    saved = []
    for k, (block, filt) in enumerate(zip(model.blocks, filters, strict=True)):
        t1 = _linear(s, block.message1)
        phi_j = _linear(act(t1), block.message2).index_select(0, idx_j)
        x = phi_j * filt
        ds, dvv, dvs = x.split(f, dim=1)
        v_j = v.index_select(0, idx_j) if k else None
        s = s.index_add(0, idx_i, ds)
        dv = dvs.unsqueeze(1) * unit.unsqueeze(2)
        if k:
            dv = dv.addcmul_(v_j, dvv.unsqueeze(1))
        v = v.index_add(0, idx_i, dv)
        uv, vv = _linear(v, block.vector_mix).split(f, dim=-1)
        vnorm = torch.sqrt((vv * vv).sum(dim=1) + 1e-8)
        t3 = _linear(torch.cat([s, vnorm], dim=1), block.update1)
        a_vv, a_sv, a_ss = _linear(act(t3), block.update2).split(f, dim=1)
        dot = (uv * vv).sum(dim=1)
        if forces:
            saved.append((t1, phi_j, filt, dvv, dvs, v_j, uv, vv, vnorm, t3, a_vv, a_sv, dot))
        v = v.addcmul(a_vv.unsqueeze(1), uv)
        s = s.addcmul(a_sv, dot).add_(a_ss)
    t5 = _linear(s, model.head1)
    total = _linear(act(t5), model.head2).add_(model.output_shift.index_select(0, species))
    out, g_total, g_r = molecular_outputs(
        model, total, species, positions, r, idx_i, idx_j, batch_index, n_atoms, charge
    )
    if not forces:
        return out

    g_s = act_bw(g_total.mm(model.head2.weight), t5).mm(model.head1.weight)
    g_v = None
    g_filters = []
    g_unit = torch.zeros_like(unit)
    for k in range(len(model.blocks) - 1, -1, -1):
        block = model.blocks[k]
        t1, phi_j, filt, dvv, dvs, v_j, uv, vv, vnorm, t3, a_vv, a_sv, dot = saved[k]
        # update step: s_out = s + a_sv * <uv, vv> + a_ss, v_out = v + a_vv * uv
        g_dot = g_s * a_sv
        if g_v is None:
            g_a = torch.cat([torch.zeros_like(g_s), g_s * dot, g_s], dim=1)
            g_uv = g_dot.unsqueeze(1) * vv
        else:
            g_a = torch.cat([(g_v * uv).sum(dim=1), g_s * dot, g_s], dim=1)
            g_uv = (g_v * a_vv.unsqueeze(1)).addcmul_(g_dot.unsqueeze(1), vv)
        g_cat = act_bw(g_a.mm(block.update2.weight), t3).mm(block.update1.weight)
        g_s = g_s + g_cat[:, :f]
        g_vv = g_dot.unsqueeze(1) * uv + (g_cat[:, f:] / vnorm).unsqueeze(1) * vv
        g_mix = torch.cat([g_uv, g_vv], dim=-1).matmul(block.vector_mix.weight)
        g_v = g_mix if g_v is None else g_v + g_mix
        # message step: s = s_prev + sum_i ds, v = v_prev + sum_i dv
        g_ds = g_s.index_select(0, idx_i)
        g_dv = g_v.index_select(0, idx_i)
        g_dvs = (g_dv * unit.unsqueeze(2)).sum(dim=1)
        g_unit += (g_dv * dvs.unsqueeze(1)).sum(dim=2)
        g_dvv = (g_dv * v_j).sum(dim=1) if v_j is not None else torch.zeros_like(g_dvs)  # None iff k == 0
        g_x = torch.cat([g_ds, g_dvv, g_dvs], dim=1)
        g_filters.append(g_x * phi_j)
        if k == 0:
            break  # the first block's inputs (embedding, v = 0) do not depend on positions
        g_v = g_v + _scatter(g_dv * dvv.unsqueeze(1), idx_j, n)
        g_phi = _scatter(g_x * filt, idx_j, n)
        g_s = g_s + act_bw(g_phi.mm(block.message2.weight), t1).mm(block.message1.weight)
    g_filt = torch.cat(g_filters[::-1], dim=1)
    g_cut = (g_filt * pre).sum(dim=1)
    g_rbf = (g_filt * cut.unsqueeze(1)).mm(model.filters.weight)
    dcut = torch.where(
        inside, (-0.5 * math.pi / cutoff) * torch.sin(r * (math.pi / cutoff)), torch.zeros_like(r)
    )
    drbf = (torch.cos(phase) * model.rbf.frequencies - rbf) * inv_r.unsqueeze(1)
    g_r_nn = (g_rbf * drbf).sum(dim=1) + g_cut * dcut
    g_r = g_r_nn if g_r is None else g_r + g_r_nn
    # unit = vec / r: d/dvec = (I - unit unit^T) / r
    g_unit_perp = (g_unit - (g_unit * unit).sum(dim=1, keepdim=True) * unit) * inv_r.unsqueeze(1)
    g_vec = g_r.unsqueeze(1) * unit + g_unit_perp
    out["forces"] = (
        torch.zeros_like(positions).index_add_(0, idx_i, g_vec).index_add_(0, idx_j, g_vec, alpha=-1.0)
    )
    return out
