"""The arithmetic of a cohort step on parameters stacked along a leading client axis.

Forward: `functional_call` of the one model object under `vmap`, so each client's slice of the
stacked tensors is its own model (BatchNorm statistics included: buffers are stacked too and
updated in place, per client). Backward: one autograd pass of the sum of the clients' losses;
clients share no parameter, so each slice of the gradient is that client's own gradient. The
optimizer step is torch.optim.SGD's arithmetic (weight decay, momentum, gradient-norm clipping),
written per client.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from fedplug.backends.masked_norm import row_mask
from fedplug.core.params import Params

Forward = Callable[[Params, Params, torch.Tensor], torch.Tensor]


def make_forward(model: nn.Module) -> Forward:
    """(stacked params, stacked buffers, (C, B, ...) inputs) -> (C, B, classes) outputs."""

    def one(params: Params, buffers: Params, x: torch.Tensor) -> torch.Tensor:
        return functional_call(model, (params, buffers), (x,))

    return vmap(one)


def make_masked_forward(model: nn.Module) -> Callable[[Params, Params, torch.Tensor, torch.Tensor], torch.Tensor]:
    """The same with a (C, B) row mask that BatchNorm layers (masked_norm) take their statistics under."""

    def one(params: Params, buffers: Params, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        with row_mask(mask):
            return functional_call(model, (params, buffers), (x,))

    return vmap(one)


def stack(per_client: list[Params], names: list[str], device: torch.device | None = None) -> Params:
    """{name: (C, ...)} from one dict per client, on `device` if given (kept tensors may be in host memory)."""
    return {n: torch.stack([p[n] for p in per_client]).to(device) for n in names}


def masked_losses(logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None,
                  counts: torch.Tensor) -> torch.Tensor:
    """Per-client mean cross-entropy over the real rows: (C,), as CrossEntropyLoss on each client's batch."""
    per_row = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(y.shape)
    if mask is None:
        return per_row.mean(dim=1)
    return (per_row * mask).sum(dim=1) / counts.clamp(min=1)


def per_client_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """(C,) 2-norms over all tensors of each client, as clip_grad_norm_ computes them."""
    # Reduce over the non-client dims in place: flatten(1) would copy an in-major weight.
    norms = torch.stack([torch.linalg.vector_norm(t, dim=_rest(t)) for t in tensors], dim=1)
    return norms.norm(dim=1)


class SGDStep:
    """torch.optim.SGD (dampening 0, no Nesterov) per client, with per-client gradient clipping."""

    def __init__(self, lr: float, momentum: float, weight_decay: float, grad_clip: float) -> None:
        self.lr, self.momentum, self.weight_decay, self.grad_clip = lr, momentum, weight_decay, grad_clip
        self.buffers: list[torch.Tensor] | None = None  # momentum, fresh per local update

    def __call__(self, params: list[torch.Tensor], grads: list[torch.Tensor], k: int) -> None:
        """Update `params`, the first k clients' rows of the stacked tensors, in place."""
        if self.grad_clip > 0 and not (self.weight_decay or self.momentum):  # one fused pass per tensor
            coef = clip_coefficients(grads, self.grad_clip)
            with torch.no_grad():
                for p, g in zip(params, grads):
                    p.addcmul_(g, _per_client(coef, g), value=-self.lr)
            return
        if self.grad_clip > 0:
            grads = clip(grads, self.grad_clip)
        with torch.no_grad():
            if self.weight_decay:
                grads = [g.add(p, alpha=self.weight_decay) for g, p in zip(grads, params)]
            if self.momentum:
                if self.buffers is None:
                    self.buffers = [g.clone() for g in grads]
                else:  # clients drop out from the end of the cohort, never rejoin
                    for b, g in zip(self.buffers, grads):
                        b[:k].mul_(self.momentum).add_(g)
                grads = [b[:k] for b in self.buffers]
            for p, g in zip(params, grads):
                p.sub_(g, alpha=self.lr)


def _rest(t: torch.Tensor) -> tuple[int, ...]:
    """Every dim but the leading client axis."""
    return tuple(range(1, t.dim()))


def _per_client(scale: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(C,) -> broadcastable against a stacked (C, ...) tensor."""
    return scale.view(-1, *[1] * (like.dim() - 1))


def clip_coefficients(grads: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """(C,) clip_grad_norm_'s factor per client: min(1, max_norm / (norm + 1e-6))."""
    return (max_norm / (per_client_norm(grads) + 1e-6)).clamp(max=1.0)


def clip(grads: list[torch.Tensor], max_norm: float) -> list[torch.Tensor]:
    """clip_grad_norm_ per client: scale by min(1, max_norm / (norm + 1e-6))."""
    coef = clip_coefficients(grads, max_norm)
    return [g * _per_client(coef, g) for g in grads]


def proximal(params: Params, received: Params) -> torch.Tensor:
    """(C,): 1/2 ||w_c - w_received||^2 over the received names (the proximal regularizer, stacked)."""
    terms = [((params[n] - r) ** 2).sum(dim=_rest(params[n])) for n, r in received.items() if n in params]
    return 0.5 * torch.stack(terms, dim=1).sum(dim=1)
