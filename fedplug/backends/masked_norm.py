"""BatchNorm that sees only a client's real rows, so padded cohort batches train it exactly.

Under the vectorized backend a cohort's batches are padded to one length; a client's short last
batch must not let the padding into its batch statistics. The backend gives each BatchNorm layer
of its model object this forward: in training mode, with a row mask set by `row_mask`, the mean
and (biased) variance are taken over the masked rows only and the running statistics are updated
as torch's batch_norm does (unbiased variance, momentum or cumulative average), and not at all for
a client without a real row. Without a mask (the sequential path, evaluation) it is torch's own.
"""
from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Iterator

import torch
from torch import nn

_MASK: ContextVar[torch.Tensor | None] = ContextVar("fedplug_row_mask", default=None)


@contextlib.contextmanager
def row_mask(mask: torch.Tensor) -> Iterator[None]:
    """The (batch,) 0/1 mask of real rows for the BatchNorm layers called inside the block."""
    token = _MASK.set(mask)
    try:
        yield
    finally:
        _MASK.reset(token)


def masked_batch_norm(module: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    mask = _MASK.get()
    batch_stats = module.training or module.running_mean is None
    if mask is None or not batch_stats:
        return type(module).forward(module, x)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    dims = [0] + list(range(2, x.dim()))
    m = mask.to(x.dtype).view(-1, *[1] * (x.dim() - 1))
    n = m.sum() * x[0, 0].numel()  # real values per channel
    n_safe = n.clamp(min=1)
    mean = (x * m).sum(dims) / n_safe
    centered = x - mean.view(shape)
    var = (centered * centered * m).sum(dims) / n_safe
    y = centered * torch.rsqrt(var + module.eps).view(shape)
    if module.affine:
        y = y * module.weight.view(shape) + module.bias.view(shape)
    if module.training and module.track_running_stats:
        with torch.no_grad():
            real = n > 0  # a client past its last step leaves its statistics alone
            module.num_batches_tracked.add_(real.long())
            factor = (module.momentum if module.momentum is not None
                      else 1.0 / module.num_batches_tracked.clamp(min=1).to(x.dtype))
            unbiased = var.detach() * n / (n - 1).clamp(min=1)
            new_mean = (1 - factor) * module.running_mean + factor * mean.detach()
            new_var = (1 - factor) * module.running_var + factor * unbiased
            module.running_mean.copy_(torch.where(real, new_mean, module.running_mean))
            module.running_var.copy_(torch.where(real, new_var, module.running_var))
    return y


def install(model: nn.Module) -> bool:
    """Give every BatchNorm layer of `model` the masked forward; whether there was one."""
    found = False
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.forward = masked_batch_norm.__get__(module)
            found = True
    return found
