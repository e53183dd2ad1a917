"""PhysNet energies and forces in numpy for small batches of one fixed molecule (latency path).

The single model definition is ``physnet.py`` (PyTorch, autograd forces). For a handful of atoms every
tensor operation costs its fixed overhead, and autograd adds a node per operation; numpy's per-operation
cost is 2-3x lower than torch's on CPU. This module evaluates the same function with numpy arrays and a
hand-written reverse pass, for molecules of identical composition: every atom has the same number (n - 1)
of pairs, stored consecutively, so sums over pairs are reshapes instead of scatters. It is kept only
because it is measured 3-4x faster than the PyTorch definition for one NH3 (energy+forces; see
docs/models.md); ``tests/core/test_numpy_engine.py`` checks it against the definition for every
``ModelConfig`` option it accepts, in float32 and float64.

Weights are copied (transposed, contiguous) from the model and copied again when a parameter changes
through torch (its version counter moves, e.g. ``load_state_dict``, an optimizer step); writes through
``param.data`` bypass that counter: call :meth:`NumpyPhysNet.refresh`. Exponent overflow (pre-activations
above ~88 in float32) raises :class:`FloatingPointError`; the caller then falls back to the torch model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .base import COULOMB_EV_ANGSTROM


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _act(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Softplus and exp(x) (kept for the reverse pass)."""
    e = np.exp(x)
    return np.log1p(e), e


def _act_bw(grad: np.ndarray, e: np.ndarray) -> np.ndarray:
    """grad * sigmoid(x) from e = exp(x)."""
    return grad * e / (1.0 + e)


def _cutoff(r: np.ndarray, cutoff: float) -> tuple[np.ndarray, np.ndarray]:
    x = r / cutoff
    inside = x < 1.0
    x2 = x * x
    value = np.where(inside, 1.0 + x2 * x * (-10.0 + x * (15.0 - 6.0 * x)), 0.0)
    deriv = np.where(inside, (-30.0 / cutoff) * x2 * (1.0 - x) ** 2, 0.0)
    return value.astype(r.dtype, copy=False), deriv.astype(r.dtype, copy=False)


class NumpyPhysNet:
    """Energies (B,) and forces (B, n, 3) of a PhysNet for B copies of one molecule, in numpy.

    Args:
        model: a PhysNet with shifted-softplus activation and no dispersion (see :meth:`supports`).
        numbers: atomic numbers (n,) of the molecule.
        charge: its total charge (e).
    """

    def __init__(self, model, numbers: Sequence[int] | np.ndarray, charge: float) -> None:
        self.model = model
        self.numbers = np.asarray(numbers, dtype=np.int64)
        self.charge = float(charge)
        self.n = n = len(self.numbers)
        self.dtype: type[np.floating[Any]] = np.float64 if model.dtype == torch.float64 else np.float32
        local_i = np.repeat(np.arange(n), n - 1)
        local_j = np.array([j for i in range(n) for j in range(n) if j != i], dtype=np.int64)
        self.local = (local_i, local_j)
        self._layouts: dict[int, tuple[np.ndarray, ...]] = {}
        self._signature: tuple = ()
        self._weights()

    @staticmethod
    def supports(model) -> bool:
        """Whether ``model`` can run here (PhysNet, shifted softplus, no dispersion, on CPU)."""
        return (
            model.config.architecture == "physnet"
            and model.config.activation == "shifted_softplus"
            and model.dispersion is None
            and model.element_energies.device.type == "cpu"
        )

    def refresh(self) -> None:
        """Copy the model's weights again (needed only after writes through ``param.data``)."""
        self._signature = ()
        self._weights()

    def _weights(self) -> None:
        """(Re)copy the weights when any parameter changed since the last copy."""
        params = list(self.model.parameters())
        signature = tuple((p._version, p.data_ptr()) for p in params)
        if signature == self._signature:
            return
        m, dt = self.model, self.dtype

        def lin(layer) -> tuple[np.ndarray, np.ndarray | None]:
            w = np.ascontiguousarray(_np(layer.weight).T, dtype=dt)
            return w, None if layer.bias is None else _np(layer.bias).astype(dt)

        def res(layers) -> list:
            """Per residual layer: W1.T, b1, W2.T, b2 (forward) and W1, W2 (reverse pass)."""
            out = []
            for layer in layers:
                (w1t, b1), (w2t, b2) = lin(layer.dense1), lin(layer.dense2)
                out.append((w1t, b1, w2t, b2, np.ascontiguousarray(w1t.T), np.ascontiguousarray(w2t.T)))
            return out

        species = _np(m.species(torch.as_tensor(self.numbers)))
        x0 = _np(m.embedding)[species]
        if m.charge_vector is not None:
            x0 = x0 + self.charge * _np(m.charge_vector)
        self.x0 = x0.astype(dt)
        self.shift = _np(m.output_shift)[species].astype(dt)
        self.reference = float(_np(m.element_energies)[species].sum())
        self.scale = float(m.energy_scale)
        self.centers = _np(m.rbf.centers).astype(dt)
        self.widths = _np(m.rbf.widths).astype(dt)
        self.filters = lin(m.filters)[0]
        self.blocks: list[dict[str, Any]] = [
            {
                "ij": lin(b.dense_ij),
                "W_ij": _np(b.dense_ij.weight).astype(dt),
                "h_shift": _np(b.h_shift).astype(dt),
                "res_int": res(b.residual_interaction),
                "update": lin(b.dense_update),
                "W_update": _np(b.dense_update.weight).astype(dt),
                "gate": _np(b.gate).astype(dt),
                "res_atom": res(b.residual_atomic),
                "res_out": res(b.residual_output),
                "out": lin(b.output),
                "W_out": _np(b.output.weight).astype(dt),
            }
            for b in m.blocks
        ]
        self._signature = signature

    def _layout(self, b: int) -> tuple[np.ndarray, ...]:
        layout = self._layouts.get(b)
        if layout is None:
            n = self.n
            offsets = (np.arange(b) * n)[:, None]
            idx_i = (offsets + self.local[0]).reshape(-1)
            idx_j = (offsets + self.local[1]).reshape(-1)
            by_j = np.argsort(idx_j, kind="stable")
            layout = (idx_i, idx_j, by_j, np.tile(self.x0, (b, 1)), np.tile(self.shift, (b, 1)))
            if len(self._layouts) > 8:
                self._layouts.clear()
            self._layouts[b] = layout
        return layout

    def __call__(self, positions: np.ndarray, forces: bool = True) -> dict[str, np.ndarray]:
        """positions (B, n, 3) Angstrom -> ``energy`` (B,) eV, ``forces`` (B, n, 3) eV/A if asked, and when
        charges are predicted ``atomic_charges`` (B, n) e and ``dipole`` (B, 3) e*A; all float64."""
        self._weights()
        with np.errstate(over="raise", invalid="raise", divide="raise"):
            return self._evaluate(positions, forces)

    @staticmethod
    def _res_forward(x: np.ndarray, layers: list, saved: list) -> np.ndarray:
        for w1t, b1, w2t, b2, _, _ in layers:
            a, ex = _act(x)
            a2, et = _act(a @ w1t + b1)
            saved.append((ex, et))
            x = x + (a2 @ w2t + b2)
        return x

    @staticmethod
    def _res_backward(g: np.ndarray, layers: list, saved: list) -> np.ndarray:
        for (_, _, _, _, w1, w2), (ex, et) in zip(reversed(layers), reversed(saved), strict=True):
            g = g + _act_bw(_act_bw(g @ w2, et) @ w1, ex)
        return g

    def _evaluate(self, positions: np.ndarray, forces: bool) -> dict[str, np.ndarray]:
        cfg = self.model.config
        n = self.n
        b = len(positions)
        f = cfg.n_features
        nn1 = max(n - 1, 0)
        idx_i, idx_j, by_j, x, total = self._layout(b)
        pos = np.asarray(positions, dtype=self.dtype).reshape(-1, 3)
        big_n = len(pos)

        def sum_i(v: np.ndarray) -> np.ndarray:  # pair -> atom i
            return v.reshape(big_n, nn1, *v.shape[1:]).sum(axis=1)

        def sum_j(v: np.ndarray) -> np.ndarray:  # pair -> atom j
            return v[by_j].reshape(big_n, nn1, *v.shape[1:]).sum(axis=1)

        vec = pos[idx_j] - pos[idx_i]
        r = np.sqrt(np.einsum("pi,pi->p", vec, vec))
        exp_r = np.exp(-r)
        diff = exp_r[:, None] - self.centers
        wd = self.widths * diff
        gauss = np.exp(-(wd * diff))
        fc, dfc = _cutoff(r, cfg.cutoff)
        filters = (fc[:, None] * gauss) @ self.filters
        saved = []
        for k, blk in enumerate(self.blocks):
            w, bias = blk["ij"]
            a, ex = _act(x)
            z = a @ w + bias
            h, ez = _act(z)
            h += blk["h_shift"]
            hj = h[idx_j, f:]
            filt = filters[:, k * f : (k + 1) * f]
            m = h[:, :f] + sum_i(filt * hj)
            res_int: list = []
            m = self._res_forward(m, blk["res_int"], res_int)
            w, bias = blk["update"]
            am, em = _act(m)
            x_new = am @ w + bias + blk["gate"] * x
            res_atom: list = []
            x_new = self._res_forward(x_new, blk["res_atom"], res_atom)
            res_out: list = []
            y = self._res_forward(x_new, blk["res_out"], res_out)
            w, bias = blk["out"]
            ay, ey = _act(y)
            total = total + (ay @ w + bias)
            saved.append((ex, ez, hj, em, ey, res_int, res_atom, res_out))
            x = x_new

        scale = self.scale
        energy = total[:, 0].reshape(b, n).sum(axis=1).astype(np.float64) * scale
        g_total = np.empty_like(total)
        g_total[:, 0] = scale
        g_r = None
        out: dict[str, np.ndarray] = {}
        if total.shape[1] == 2:
            raw_q = total[:, 1].reshape(b, n)
            q = (raw_q - ((raw_q.sum(axis=1) - self.charge) / n)[:, None]).reshape(-1)
            out["atomic_charges"] = q.reshape(b, n).astype(np.float64)
            out["dipole"] = np.einsum("bn,bni->bi", out["atomic_charges"], pos.reshape(b, n, 3))
            g_q = np.zeros_like(q)
            if cfg.electrostatics:
                switch, dswitch = _cutoff(r, 0.5 * (cfg.short_range_cutoff or cfg.cutoff))
                shielded = 1.0 / np.sqrt(r * r + 1.0)
                inv_r = 1.0 / r
                chi = switch * shielded + (1.0 - switch) * inv_r
                dchi = (
                    dswitch * (shielded - inv_r) - switch * r * shielded**3 - (1.0 - switch) * inv_r * inv_r
                )
                qj = q[idx_j]
                qiqj = q[idx_i] * qj
                pair = (0.5 * COULOMB_EV_ANGSTROM) * qiqj * chi
                energy = energy + pair.reshape(b, n * nn1).sum(axis=1)
                g_q = COULOMB_EV_ANGSTROM * sum_i(chi * qj)
                g_r = (0.5 * COULOMB_EV_ANGSTROM) * qiqj * dchi
            g_q = g_q.reshape(b, n)
            g_total[:, 1] = (g_q - g_q.mean(axis=1, keepdims=True)).reshape(-1)
        out["energy"] = energy + self.reference
        if not forces:
            return out

        g_filters = []
        g_x = None
        for k in range(len(self.blocks) - 1, -1, -1):
            blk = self.blocks[k]
            ex, ez, hj, em, ey, res_int, res_atom, res_out = saved[k]
            g_y = _act_bw(g_total @ blk["W_out"], ey)
            g_y = self._res_backward(g_y, blk["res_out"], res_out)
            g_xn = g_y if g_x is None else g_y + g_x
            g_xn = self._res_backward(g_xn, blk["res_atom"], res_atom)
            g_m = _act_bw(g_xn @ blk["W_update"], em)
            g_m = self._res_backward(g_m, blk["res_int"], res_int)
            g_msg = np.repeat(g_m, nn1, axis=0)
            g_filters.append(g_msg * hj)
            if k == 0:
                break
            filt = filters[:, k * f : (k + 1) * f]
            g_hj = sum_j(g_msg * filt)
            g_z = _act_bw(np.concatenate([g_m, g_hj], axis=1), ez)
            g_x = _act_bw(g_z @ blk["W_ij"], ex) + g_xn * blk["gate"]
        g_filt = np.concatenate(g_filters[::-1], axis=1)
        g_rbf = (g_filt @ self.filters.T) * gauss
        g_r_nn = dfc * g_rbf.sum(axis=1) + (2.0 * fc * exp_r) * np.einsum("pk,pk->p", g_rbf, wd)
        g_r = g_r_nn if g_r is None else g_r + g_r_nn
        g_vec = (g_r / r)[:, None] * vec
        out["forces"] = (sum_i(g_vec) - sum_j(g_vec)).reshape(b, n, 3).astype(np.float64)
        return out
