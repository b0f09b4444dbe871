"""Gaussian noise: an attacker uploads random noise instead of (or on top of) its update.

The Gaussian attack of Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine Learning with
Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017 (the Krum paper, section 5: the
Byzantine vectors drawn from a Gaussian). `attack.noise_mode replace`: the attacker's update y - x
is replaced by noise of std `attack.noise_std` per coordinate; `add`: the noise is added to it.
The noise comes from the generator (seed, ATTACK_NOISE, round, client): the same numbers in every
backend, in a distributed client process and after a resume.
"""
from __future__ import annotations

import torch

from fedplug.attacks.base import Attack, moved, update
from fedplug.core.params import Params
from fedplug.core.plugin import LocalView
from fedplug.seeding import ATTACK_NOISE, generator


def noisy(params: Params, received: Params, std: float, mode: str, rng: torch.Generator) -> Params:
    """x + noise (replace) or y + noise (add); noise drawn parameter by parameter, in the model's order."""
    noise = {n: std * torch.randn(p.shape, generator=rng, dtype=p.dtype).to(p.device) for n, p in params.items()}
    base = update(params, received) if mode == "add" else {n: torch.zeros_like(p) for n, p in params.items()}
    return moved(received, {n: base[n] + noise[n] for n in params})


class Gaussian(Attack):
    method = "GaussianAttack"

    def transform_upload(self, params: Params, view: LocalView) -> Params:
        if view.client not in self.attackers:
            return params
        rng = generator(self.cfg.seed, ATTACK_NOISE, view.round_num, view.client)
        return noisy(params, view.received, self.section.noise_std, self.section.noise_mode, rng)

    def describe_server(self) -> list[str]:
        a = self.section
        what = "x + noise" if a.noise_mode == "replace" else "y + noise"
        return [f"{'attack':<19}gaussian by {self.who()}: upload {what}, noise N(0, {a.noise_std:g}^2) per coordinate"]
