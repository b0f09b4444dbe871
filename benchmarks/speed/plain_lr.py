"""The 100-client LR workload's rounds as plain PyTorch: a loop over clients, and torch.func.vmap over clients.

No fedplug code in the arithmetic: seeds are derived the same way (NumPy SeedSequence), so both
scripts sample the same clients and draw the same batches as fedplug, and their final parameters
can be compared with fedplug's (the benchmark prints the largest difference).
"""
from __future__ import annotations

import itertools
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from round_timing import timed


def seed_for(root: int, *path: int) -> int:
    return int(np.random.SeedSequence([root, *path]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def _init(features: int, classes: int, seed: int) -> nn.Linear:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_for(seed, 0))
        return nn.Linear(features, classes)


def _sample(num_clients: int, k: int, seed: int, r: int) -> list[int]:
    return sorted(torch.randperm(num_clients, generator=torch.Generator().manual_seed(seed_for(seed, 1, r)))[:k]
                  .tolist())


class HandwrittenSGD:
    """SGD without momentum written out, no torch.optim: the gradients set to None, then p -= lr * grad (on CPU
    torch.optim.SGD's arithmetic, bit for bit, without its profiler ranges, hooks and grad-mode switches)."""

    def __init__(self, params: Iterator[torch.Tensor], lr: float) -> None:
        self.params, self.lr = list(params), lr

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        with torch.no_grad():
            for p in self.params:
                p.add_(p.grad, alpha=-self.lr)


def sgd_epoch(model: nn.Module, opt: torch.optim.Optimizer | HandwrittenSGD, x: torch.Tensor, y: torch.Tensor,
              order: torch.Tensor, batch_size: int) -> None:
    """One client's epoch: the rows of `order` in batches, one SGD step each (also visit_before_after.py's)."""
    for start in range(0, x.shape[0], batch_size):
        idx = order[start:start + batch_size]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()


def plain_rounds(x: torch.Tensor, y: torch.Tensor, offsets: list[int], per_round: int, classes: int,
                 batch_size: int = 20, lr: float = 0.1, seed: int = 0,
                 handwritten_sgd: bool = False) -> Iterator[tuple[dict, int]]:
    """One model, one client after another, one epoch of batches each (torch.optim.SGD, or `HandwrittenSGD`):
    round after round, (the new global parameters, the samples trained on) per round, as long as asked."""
    model = _init(x.shape[1], classes, seed)
    opt = HandwrittenSGD(model.parameters(), lr) if handwritten_sgd else torch.optim.SGD(model.parameters(), lr=lr)
    global_params = [p.detach().clone() for p in model.parameters()]
    for r in itertools.count(1):
        sums, total = [torch.zeros_like(p) for p in global_params], 0
        for c in _sample(len(offsets) - 1, per_round, seed, r):
            with torch.no_grad():
                for p, g in zip(model.parameters(), global_params):
                    p.copy_(g)
            xc, yc = x[offsets[c]:offsets[c + 1]], y[offsets[c]:offsets[c + 1]]
            order = torch.randperm(xc.shape[0], generator=torch.Generator().manual_seed(seed_for(seed, 2, r, c)))
            sgd_epoch(model, opt, xc, yc, order, batch_size)
            for s, p in zip(sums, model.parameters()):
                s.add_(p.detach(), alpha=xc.shape[0])
            total += xc.shape[0]
        global_params = [s / total for s in sums]
        yield dict(zip(["fc.weight", "fc.bias"], global_params)), total


def plain_loop(x: torch.Tensor, y: torch.Tensor, offsets: list[int], rounds: int, per_round: int, classes: int,
               batch_size: int = 20, lr: float = 0.1, seed: int = 0) -> dict:
    """`rounds` rounds of `plain_rounds`, each timed."""
    return timed(plain_rounds(x, y, offsets, per_round, classes, batch_size, lr, seed), rounds)


def plain_vmap_rounds(x: torch.Tensor, y: torch.Tensor, offsets: list[int], per_round: int, classes: int,
                      batch_size: int = 20, lr: float = 0.1, seed: int = 0) -> Iterator[tuple[dict, int]]:
    """The sampled clients together: vmap(grad) over stacked parameters, padded batches with masks (round after
    round, as `plain_rounds`)."""
    model = _init(x.shape[1], classes, seed)
    global_params = {n: p.detach().clone() for n, p in model.named_parameters()}

    def loss_fn(params, xb, yb, mask):
        per_row = F.cross_entropy(functional_call(model, params, (xb,)), yb, reduction="none")
        return (per_row * mask).sum() / mask.sum().clamp(min=1)

    grads_of = vmap(grad(loss_fn))
    for r in itertools.count(1):
        clients = _sample(len(offsets) - 1, per_round, seed, r)
        sizes = [offsets[c + 1] - offsets[c] for c in clients]
        steps = -(-max(sizes) // batch_size)
        index = torch.full((len(clients), steps * batch_size), -1, dtype=torch.int64)
        for i, c in enumerate(clients):
            gen = torch.Generator().manual_seed(seed_for(seed, 2, r, c))
            index[i, :sizes[i]] = torch.randperm(sizes[i], generator=gen) + offsets[c]
        index = index.view(len(clients), steps, batch_size).transpose(0, 1)  # (steps, clients, batch)
        masks = (index >= 0).float()
        index = index.clamp(min=0)
        params = {n: t.unsqueeze(0).repeat(len(clients), *[1] * t.dim()) for n, t in global_params.items()}
        for s in range(steps):
            g = grads_of(params, x[index[s]], y[index[s]], masks[s])
            active = (masks[s].sum(dim=1) > 0).float()
            params = {n: p - lr * g[n] * active.view(-1, *[1] * (p.dim() - 1)) for n, p in params.items()}
        weights = torch.tensor(sizes, dtype=torch.float32)
        global_params = {n: (p * weights.view(-1, *[1] * (p.dim() - 1))).sum(dim=0) / weights.sum()
                         for n, p in params.items()}
        yield {f"fc.{n}": t for n, t in global_params.items()}, sum(sizes)
