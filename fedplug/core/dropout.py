"""Dropout that draws its masks from the client's generator, not from torch's global one.

A run's randomness depends only on (seed, round, client) (docs/architecture.md, "Seeds"): the global
RNG would make a client's masks depend on every client trained before it in the process, so the
same seed would give other numbers distributed, resumed, or after any other draw. The Trainer hands
each local update's generator (`gen(seed, TRAINING, r, c)`, also the one that shuffles) to every
`SeededDropout` of its model. Masks are drawn on the CPU and moved, so they are the same on every device.
"""
from __future__ import annotations

import torch
from torch import nn


class SeededDropout(nn.Module):
    """Inverted dropout (Srivastava et al., JMLR 2014): zero each value with probability p, scale the
    rest by 1 / (1 - p) while training; the identity in eval mode."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.generator: torch.Generator | None = None  # None (outside a Trainer): torch's global generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = torch.rand(x.shape, generator=self.generator) >= self.p
        return x * keep.to(x.device, non_blocking=True) / (1 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"
