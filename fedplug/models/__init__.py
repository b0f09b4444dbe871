"""Models by name (`model.type`), initialised from the run's seed."""
from __future__ import annotations

import math

import torch
from torch import nn

from fedplug.config import ConfigNode
from fedplug.core.compose import Plan
from fedplug.data.federated import FederatedData
from fedplug.data.graph_rows import GraphRows
from fedplug.errors import ConfigError
from fedplug.seeding import MODEL_INIT, derive_seed


def check_fits(cfg: ConfigNode, data: FederatedData) -> None:
    """Refuse a model that cannot read the data or predict all of its classes."""
    if data.num_classes > cfg.model.out_channels:
        raise ConfigError(f"model.out_channels is {cfg.model.out_channels} but the {data.name} data have "
                          f"{data.num_classes} classes; set model.out_channels {data.num_classes}")
    graphs = isinstance(data.splits["train"].x, GraphRows)
    tokens = not data.splits["train"].x.dtype.is_floating_point
    size = math.prod(data.input_shape)
    # ConvNet2 pools twice by 2
    image = not tokens and not graphs and math.isqrt(size) ** 2 == size and math.isqrt(size) >= 4
    kind = ("graphs" if graphs else "character windows" if tokens else "square images" if image
            else f"vectors of {size} features")
    fits = {"lstm": tokens, "lr": not tokens and not graphs, "convnet2": image, "gin": graphs}
    if not fits.get(cfg.model.type, True):
        wanted = "gin" if graphs else "lstm" if tokens else "lr or convnet2" if image else "lr"
        raise ConfigError(f"model.type {cfg.model.type} cannot read the {data.name} data ({kind}); "
                          f"use model.type {wanted}")


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
        if cfg.model.type == "lstm":
            from fedplug.models.lstm import CharLSTM

            return CharLSTM(cfg.model.out_channels, cfg.model.embed_size, cfg.model.hidden)
        if cfg.model.type == "gin":
            from fedplug.models.gin import GIN

            m = cfg.model
            return GIN(input_shape[0], m.out_channels, m.hidden, m.layer, m.dropout, m.graph_pooling)
        raise AssertionError(f"model.type '{cfg.model.type}' passed validation but has no builder")

    # Initialise under the run's own seed without touching the global RNG of the caller.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.seed, MODEL_INIT))
        model = make()
        for plugin in plan.plugins if plan else ():
            model = plugin.wrap_model(model, make)
    return model
