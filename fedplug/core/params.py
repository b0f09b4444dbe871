"""Moving parameters between the one model object and plain tensor dicts (per-client state)."""
from __future__ import annotations

import torch
from torch import nn

Params = dict[str, torch.Tensor]


def trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def copy_parameters(model: nn.Module) -> Params:
    """Detached clones of the trainable parameters: safe to keep after the model changes."""
    return {n: p.detach().clone() for n, p in trainable(model).items()}


def load_parameters(model: nn.Module, params: Params) -> None:
    """Write `params` into the model's parameters of the same names, in place."""
    with torch.no_grad():
        for name, p in trainable(model).items():
            if name in params:
                p.copy_(params[name])
