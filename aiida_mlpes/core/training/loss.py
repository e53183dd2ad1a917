"""The weighted smooth-L1 (Huber) loss of Asparagus, eq. 11-12: L = sum_p W_p * mean(smoothL1(pred_p - ref_p)).

Properties: ``energy`` (eV), ``forces`` (eV/Angstrom), ``dipole`` (e*Angstrom), ``charge`` (sum of the
predicted atomic charges against the total charge, e) and ``atomic_charges`` (e).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

#: Model output that each loss property needs.
MODEL_OUTPUT = {
    "energy": "energy",
    "forces": "forces",
    "dipole": "dipole",
    "charge": "atomic_charges",
    "atomic_charges": "atomic_charges",
}


class WeightedLoss:
    """Weighted smooth-L1 loss over the properties with a positive weight.

    Args:
        weights: property -> weight (only positive weights are kept, in a fixed order).
        beta: smooth-L1 transition point (paper: 1).
    """

    def __init__(self, weights: Mapping[str, float], beta: float = 1.0) -> None:
        self.weights = {name: float(w) for name, w in weights.items() if w > 0}
        self.properties = list(self.weights)
        self.beta = float(beta)

    def errors(
        self, out: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Prediction minus reference (``batch`` holds the targets, see ``collate``), in the positions' dtype."""
        dtype = batch["positions"].dtype
        errors = {}
        for name in self.properties:
            if name == "charge":
                # committee outputs carry a leading member axis: sum atoms along the last axis
                target = batch["charge"]
                charges = out["atomic_charges"].to(target.dtype)
                total = charges.new_zeros((*charges.shape[:-1], target.shape[-1]))
                errors[name] = total.index_add_(-1, batch["batch"], charges) - target
            else:
                # energy: float64 model energy (references included) minus float64 reference, then dtype
                errors[name] = (out[MODEL_OUTPUT[name]] - batch[name]).to(dtype)
        return errors

    def __call__(
        self, out: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Total loss (differentiable scalar) and detached per-property [smooth-L1 mean, MAE] rows."""
        errors = self.errors(out, batch)
        total: torch.Tensor | None = None
        rows = []
        for name in self.properties:
            err = errors[name]
            huber = F.smooth_l1_loss(err, torch.zeros_like(err), beta=self.beta)
            term = self.weights[name] * huber
            total = term if total is None else total + term
            rows.append(torch.stack([huber.detach(), err.detach().abs().mean()]))
        table = torch.stack(rows)  # raises on an empty list, as before
        if total is None:
            raise ValueError("WeightedLoss has no property with a positive weight")
        return total, table

    def error_sums(self, errors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Per property [sum smooth-L1, sum |err|, sum err^2, count], shape (n_properties, 4), float64."""
        rows = []
        for name in self.properties:
            err = errors[name].detach().double()
            huber = F.smooth_l1_loss(err, torch.zeros_like(err), beta=self.beta, reduction="sum")
            count = torch.tensor(float(err.numel()), dtype=torch.float64, device=err.device)
            rows.append(torch.stack([huber, err.abs().sum(), err.square().sum(), count]))
        return torch.stack(rows)

    def total_from_sums(self, sums: torch.Tensor) -> float:
        """Weighted loss over a whole set from accumulated :meth:`error_sums`."""
        means = sums[:, 0] / sums[:, 3].clamp(min=1)
        weights = torch.tensor(
            [self.weights[p] for p in self.properties], dtype=means.dtype, device=means.device
        )
        return float((weights * means).sum())
