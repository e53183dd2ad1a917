"""Exponential moving average (EMA) of model weights, decay 0.99 by default (Asparagus)."""

from __future__ import annotations

import copy
from typing import Any

import torch


class WeightEMA:
    """A shadow copy of ``model`` whose parameters follow ``shadow <- d * shadow + (1 - d) * param``.

    With ``warmup`` the decay is ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so the average is
    not dominated by the random initial weights. Buffers are copied, not averaged.
    """

    def __init__(self, model: torch.nn.Module, decay: float = 0.99, warmup: bool = True) -> None:
        self.decay = float(decay)
        self.warmup = warmup
        self.num_updates = 0
        self.module = copy.deepcopy(model)
        self.module.requires_grad_(False)
        self._shadow: list[torch.Tensor] = list(self.module.parameters())
        self._params: list[torch.Tensor] = list(model.parameters())
        self._shadow_buffers: list[torch.Tensor] = list(self.module.buffers())
        self._buffers: list[torch.Tensor] = list(model.buffers())

    def current_decay(self) -> float:
        """Decay used by the next update."""
        if self.warmup:
            return min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))
        return self.decay

    @torch.no_grad()
    def update(self) -> None:
        """Move the shadow weights towards the live weights (one call per optimizer step)."""
        weight = 1.0 - self.current_decay()
        self.num_updates += 1
        torch._foreach_lerp_(self._shadow, self._params, weight)
        for shadow, live in zip(self._shadow_buffers, self._buffers, strict=True):
            shadow.copy_(live)

    def state_dict(self) -> dict[str, Any]:
        """Shadow weights and update count (for checkpoints)."""
        return {"module": self.module.state_dict(), "num_updates": self.num_updates, "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""
        self.module.load_state_dict(state["module"])
        self.num_updates = int(state["num_updates"])
