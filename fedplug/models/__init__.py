"""Models by name (`model.type`), initialised from the run's seed."""
from __future__ import annotations

import math

import torch
from torch import nn

from fedplug.config import ConfigNode
from fedplug.core.compose import Plan
from fedplug.seeding import MODEL_INIT, derive_seed


def build_model(cfg: ConfigNode, input_shape: tuple[int, ...], plan: Plan | None = None) -> nn.Module:
    """The configured model, seeded; wrapped by the plug-in holding the "model" role, if any."""

    def make() -> nn.Module:
        if cfg.model.type == "lr":
            from fedplug.models.lr import LogisticRegression

            return LogisticRegression(math.prod(input_shape), cfg.model.out_channels)
        if cfg.model.type == "convnet2":
            from fedplug.models.convnet2 import ConvNet2

            side = math.isqrt(math.prod(input_shape))  # flat square grey images (784 -> 28 x 28)
            return ConvNet2(1, cfg.model.out_channels, cfg.model.hidden, side)
        raise AssertionError(f"model.type '{cfg.model.type}' passed validation but has no builder")

    # Initialise under the run's own seed without touching the global RNG of the caller.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.seed, MODEL_INIT))
        model = make()
        for plugin in plan.plugins if plan else ():
            model = plugin.wrap_model(model, make)
    return model
