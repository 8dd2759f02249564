"""Several trained networks as one: `Ensemble` averages its members' probabilities.

Its output is the log of that average. softmax(output) is the averaged probability and argmax is
the ensemble's class, so everything that takes a network's logits (evaluation, prediction,
serving, the ONNX graph `export` writes) treats an ensemble as one model. Probabilities, not
logits, are averaged: members trained differently have differently scaled logits.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class Ensemble(nn.Module):
    """(N, C, 28, 28) images -> (N, classes) log of the members' mean softmax probability."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_probs = torch.stack([F.log_softmax(m(x).float(), dim=1) for m in self.members])
        return torch.logsumexp(log_probs, dim=0) - math.log(len(self.members))
