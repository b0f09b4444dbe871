"""Adaptive clipping: Andrew, Thakkar, McMahan, Ramaswamy, "Differentially Private Learning with
Adaptive Clipping", NeurIPS 2021 (Algorithm 1, geometric update).

Each client also reports b_k = 1 if its update's norm is at most the round's clip C (before
clipping), else 0, sent centred as b_k - 1/2. The server estimates the unclipped fraction privately
with the fixed denominator m (the expected clients per round) and moves C geometrically toward the
norms' target quantile gamma:
    b = (sum_k (b_k - 1/2) + N(0, sigma_b^2)) / m + 1/2,      C <- C * exp(-eta_C * (b - gamma)).
The count is a second Gaussian mechanism on the same clients, of sensitivity 1/2 (one client
added or removed moves the centred sum by 1/2). The paper splits the privacy budget so that the
pair costs what the update alone would at noise multiplier z: the update's noise multiplier becomes
    z_update = (z^-2 - (2 sigma_b)^-2)^(-1/2),
which needs 2 sigma_b > z, and the accountant is run at z.
"""
from __future__ import annotations

import math

import torch

from fedplug.errors import ConfigError


def update_noise_multiplier(z: float, count_noise: float) -> float:
    """z_update: the update's noise multiplier once the count's share of the budget is taken out."""
    if z == 0:
        return 0.0  # no noise at all: nothing to split (and no guarantee)
    if not 2 * count_noise > z:
        raise ConfigError(f"dp.adaptive_clip.count_noise {count_noise} leaves no budget for the update: adaptive "
                          f"clipping needs 2 * count_noise > dp.noise_multiplier ({z})")
    return (z ** -2 - (2 * count_noise) ** -2) ** -0.5


class AdaptiveClip:
    def __init__(self, target_quantile: float, lr: float, count_noise: float, z: float) -> None:
        self.gamma, self.lr = target_quantile, lr
        self.count_noise = count_noise if z > 0 else 0.0  # z 0: a run without privacy, no noise anywhere
        self.update_z = update_noise_multiplier(z, count_noise)

    def next_clip(self, clip: float, centred_count: float, expected: int, noise: torch.Generator) -> float:
        """The clip of the next round from this round's sum of b_k - 1/2."""
        draw = float(torch.randn((), generator=noise, dtype=torch.float64)) * self.count_noise
        fraction = (centred_count + draw) / expected + 0.5
        return clip * math.exp(-self.lr * (fraction - self.gamma))

    def describe(self) -> str:
        return (f"clip <- clip * exp(-{self.lr} * (b - {self.gamma})), "
                f"b = (sum(b_k - 1/2) + N(0, {self.count_noise}^2)) / expected + 1/2; "
                f"update noise multiplier {self.update_z:.4g}")
