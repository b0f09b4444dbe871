"""Batched evaluation for the vectorized backend: every client's val or test split, without a client loop.

- One global model (no per-client tensors, no personalization): the split's rows in blocks of
  `eval.batch_size`, whatever client they belong to; per-client sums by index_add.
- Per-client models (kept local parameters or buffers, personalized models): chunks of clients,
  stacked parameters under vmap, rows padded to the chunk's longest split and masked.
Results have the sequential backend's shape: per client `<split>_total`, `_loss_sum`, `_correct`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch.func import functional_call

from fedplug.backends.functional import stack
from fedplug.core.default_hooks import on_device
from fedplug.core.params import Params
from fedplug.core.plugin import Plugin

if TYPE_CHECKING:
    from fedplug.backends.vectorized import VectorizedBackend


def _results(split: str, totals: list[int], loss: torch.Tensor, correct: torch.Tensor) -> list[dict[str, Any]]:
    return [{f"{split}_total": n, f"{split}_loss_sum": l, f"{split}_correct": int(c)}
            for n, l, c in zip(totals, loss.tolist(), correct.tolist())]


def evaluate_global(backend: VectorizedBackend, global_params: Params, split: str,
                    clients: range | None = None) -> list[dict[str, Any]]:
    """`clients`: a contiguous range of them (a Ray worker's share), else every client."""
    data = backend.data.splits[split]
    sizes = data.sizes()
    clients = range(len(sizes)) if clients is None else clients
    device = backend.device
    owner = backend.row_owners.get(split)
    if owner is None:  # row -> client, built once per split
        owner = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes)).to(device)
        backend.row_owners[split] = owner
    loss = torch.zeros(len(clients), dtype=torch.float64, device=device)
    correct = torch.zeros(len(clients), dtype=torch.int64, device=device)
    block = backend.cfg.eval.batch_size
    first, last = data.offsets[clients.start], data.offsets[clients.stop]
    backend.model.eval()
    with torch.no_grad():
        for start in range(first, last, block):
            stop = min(start + block, last)
            x, y = on_device(data.x[start:stop], device), on_device(data.y[start:stop], device)
            out = functional_call(backend.model, global_params, (x,))
            rows = owner[start:stop] - clients.start
            loss.index_add_(0, rows, F.cross_entropy(out, y, reduction="none").double())
            correct.index_add_(0, rows, (out.argmax(dim=1) == y).long())
    return _results(split, sizes[clients.start:clients.stop], loss, correct)


def evaluate_per_client(backend: VectorizedBackend, global_params: Params, split: str,
                        clients: range | None = None) -> list[dict[str, Any]]:
    data = backend.data.splits[split]
    everyone = range(len(data.sizes())) if clients is None else clients
    personal = [p for p in backend.plan.plugins if type(p).cohort_eval_params is not Plugin.cohort_eval_params]
    outputs = [p for p in backend.plan.plugins if type(p).cohort_eval_outputs is not Plugin.cohort_eval_outputs]
    results: list[dict[str, Any]] = []
    backend.model.eval()
    for first in range(everyone.start, everyone.stop, backend.chunk_eval):
        chunk = list(range(first, min(first + backend.chunk_eval, everyone.stop)))
        with backend.visiting(chunk):
            results += _evaluate_chunk(backend, global_params, split, chunk, personal, outputs)
    return results


def _evaluate_chunk(backend: VectorizedBackend, global_params: Params, split: str, clients: list[int],
                    personal: list[Plugin], outputs: list[Plugin]) -> list[dict[str, Any]]:
    """One chunk of clients' results on `split`, each with its own (stacked) model."""
    data = backend.data.splits[split]
    sizes, offsets, device = data.sizes(), data.offsets, backend.device
    kept = [backend._kept.get(c, backend._initial_kept) for c in clients]
    params = {n: (global_params[n].unsqueeze(0).expand(len(clients), *global_params[n].shape)
                  if n in global_params else torch.stack([k[n] for k in kept]).to(device))
              for n in backend.trainable_names}
    for plugin in personal:
        params = {n: t.clone() for n, t in params.items()}
        params = plugin.cohort_eval_params([backend.client_states(c)[plugin.name] for c in clients], params)
    buffers = stack(kept, backend.buffer_names, device) if backend.buffer_names else {}
    chunk_sizes = torch.tensor([sizes[c] for c in clients])
    starts = torch.tensor([offsets[c] for c in clients]).view(-1, 1)
    loss = torch.zeros(len(clients), dtype=torch.float64, device=device)
    correct = torch.zeros(len(clients), dtype=torch.int64, device=device)
    block = max(1, min(int(chunk_sizes.max()), backend.cfg.eval.batch_size))
    with torch.no_grad():
        for start in range(0, int(chunk_sizes.max()), block):
            pos = torch.arange(start, start + block).view(1, -1)
            mask = pos < chunk_sizes.view(-1, 1)
            index = torch.where(mask, starts + pos, starts).to(data.y.device)
            x, y = on_device(data.x[index], device), on_device(data.y[index], device)
            mask = mask.to(device)
            out = None
            for plugin in outputs:  # FedEM: each client's mixture, as log-probabilities
                out = plugin.cohort_eval_outputs(backend, clients, params, buffers, x, mask)
            if out is None:
                out = backend.forward(params, buffers, x)
                per_row = F.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="none").view(y.shape)
            else:
                per_row = F.nll_loss(out.flatten(0, 1), y.flatten(), reduction="none").view(y.shape)
            loss += (per_row * mask).sum(dim=1).double()
            correct += ((out.argmax(dim=2) == y) & mask).sum(dim=1)
    return _results(split, chunk_sizes.tolist(), loss, correct)
