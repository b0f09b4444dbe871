"""Regularizers by name: penalties added to the training loss (the seed's `get_regularizer`).

A regularizer takes the Context of a training batch and returns a scalar tensor. FedProx uses
"proximal_regularizer"; register others the same way and add them with a hook of your own.
"""
from __future__ import annotations

from typing import Callable

import torch

from fedplug.core.context import Context

Regularizer = Callable[[Context], torch.Tensor]
_REGULARIZERS: dict[str, Regularizer] = {}


def register_regularizer(name: str) -> Callable[[Regularizer], Regularizer]:
    def add(fn: Regularizer) -> Regularizer:
        if name in _REGULARIZERS:
            raise ValueError(f"a regularizer named '{name}' is already registered")
        _REGULARIZERS[name] = fn
        return fn

    return add


def get_regularizer(name: str) -> Regularizer:
    try:
        return _REGULARIZERS[name]
    except KeyError:
        raise KeyError(f"no regularizer named '{name}' (registered: {', '.join(sorted(_REGULARIZERS))})") from None


def proximal_regularizer(ctx: Context) -> torch.Tensor:
    """1/2 * ||w - w_received||^2 over the parameters the client received."""
    received = ctx.global_params
    return 0.5 * sum(((p - received[n]) ** 2).sum() for n, p in ctx.model.named_parameters() if n in received)


# registered by a call rather than a decorator, so that mutation testing (mutmut skips decorated functions) reaches it
register_regularizer("proximal_regularizer")(proximal_regularizer)
