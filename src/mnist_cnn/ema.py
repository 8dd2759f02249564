"""Exponential moving average (EMA) of a model's weights, the weights used for validation and saved
for evaluation when the config's `ema` decay is > 0.

After every optimizer step: ema = decay_t * ema + (1 - decay_t) * weights, for parameters and
float buffers (BatchNorm running statistics); integer buffers are copied. decay_t ramps up as
min(decay, (1 + t) / (10 + t)) over optimizer steps t, so the average is not dominated by the
random init early on. The state (averaged weights) goes into the checkpoint: resume is bit-exact.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """`EMA(model, decay)`; call `update(model, step)` after each optimizer step; `.model` is the average."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Fold the current weights in; `step` = optimizer steps done so far (1 after the first)."""
        decay = min(self.decay, (1 + step) / (10 + step))
        ema_float, new_float = [], []
        for ema_t, new_t in zip(self.model.state_dict().values(), model.state_dict().values()):
            if ema_t.dtype.is_floating_point:
                ema_float.append(ema_t)
                new_float.append(new_t)
            else:
                ema_t.copy_(new_t)
        # One fused kernel over all tensors: ema += (1 - decay) * (new - ema).
        torch._foreach_lerp_(ema_float, new_float, 1.0 - decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)
