"""Sign flipping: an attacker uploads its update reversed and scaled.

The sign-flipping attack of Li, Xu, Chen, Giannakis, Ling, "RSA: Byzantine-Robust Stochastic
Aggregation Methods for Distributed Learning from Heterogeneous Datasets", AAAI 2019. An
attacker trains honestly, then uploads x - scale * (y - x): its update y - x times -scale
(`attack.scale`, default 1). It needs only its own update, so it runs the same standalone,
vectorized and as a distributed client process.
"""
from __future__ import annotations

from fedplug.attacks.base import Attack, moved, update
from fedplug.core.params import Params
from fedplug.core.plugin import LocalView


def sign_flipped(params: Params, received: Params, scale: float) -> Params:
    """x + (-scale) * (y - x)."""
    return moved(received, {n: -scale * d for n, d in update(params, received).items()})


class SignFlip(Attack):
    method = "SignFlipAttack"

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.scale = self.section.scale or 1.0

    def transform_upload(self, params: Params, view: LocalView) -> Params:
        if view.client not in self.attackers:
            return params
        return sign_flipped(params, view.received, self.scale)

    def describe_server(self) -> list[str]:
        return [f"{'attack':<19}signflip by {self.who()}: upload x - {self.scale:g} * (y - x)"]
