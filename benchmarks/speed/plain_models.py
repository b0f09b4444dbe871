"""FedAvg rounds for any model as one plain PyTorch loop: the floor for ConvNet2 and the LSTM.

One model object, clients one after another, torch.optim.SGD, gradient-norm clipping, each
client's BatchNorm statistics kept between its visits (they never travel, as in fedplug).
Batches follow fedplug's schedule (a fresh permutation per epoch from the client's generator;
`batch` unit: cycle epochs until `steps` batches), so the final parameters can be compared.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from plain_lr import seed_for


def plain_loop_model(model: nn.Module, x, y: torch.Tensor, offsets: list[int], rounds: int, per_round: int,
                     batch_size: int, steps: int, unit: str, lr: float, grad_clip: float = 0.0,
                     seed: int = 0) -> dict:
    """`x` may be any row-indexable store (a tensor, or token windows gathered by index)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    global_params = {n: p.detach().clone() for n, p in model.named_parameters()}
    initial_buffers = {n: b.clone() for n, b in model.named_buffers()}
    kept: dict[int, dict[str, torch.Tensor]] = {}
    num_clients = len(offsets) - 1
    seconds, samples = [], 0
    for r in range(1, rounds + 1):
        started = time.perf_counter()
        sampled = sorted(torch.randperm(num_clients, generator=torch.Generator().manual_seed(seed_for(seed, 1, r)))
                         [:per_round].tolist())
        sums, total = {n: torch.zeros_like(p) for n, p in global_params.items()}, 0
        model.train()
        for c in sampled:
            with torch.no_grad():
                for n, p in model.named_parameters():
                    p.copy_(global_params[n])
                for n, b in model.named_buffers():
                    b.copy_(kept.get(c, initial_buffers)[n])
            lo, n_rows = offsets[c], offsets[c + 1] - offsets[c]
            gen = torch.Generator().manual_seed(seed_for(seed, 2, r, c))
            per_epoch = -(-n_rows // batch_size)
            todo = steps * per_epoch if unit == "epoch" else steps
            done = n_done = 0
            while done < todo:
                order = torch.randperm(n_rows, generator=gen) + lo
                for start in range(0, n_rows, batch_size):
                    idx = order[start:start + batch_size]
                    loss = F.cross_entropy(model(x[idx]), y[idx])
                    opt.zero_grad()
                    loss.backward()
                    if grad_clip > 0:
                        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                    opt.step()
                    n_done += idx.shape[0]
                    done += 1
                    if done == todo:
                        break
            kept[c] = {n: b.clone() for n, b in model.named_buffers()}
            for n, p in model.named_parameters():
                sums[n].add_(p.detach(), alpha=n_done)
            total += n_done
        global_params = {n: s / total for n, s in sums.items()}
        samples += total
        seconds.append(time.perf_counter() - started)
    return {"seconds": seconds, "samples": samples, "params": global_params}
