"""A cohort: a chunk of a round's sampled clients, trained together on stacked tensors.

`Cohort.train` is the Trainer's default train routine (shuffle, gather, forward, loss, backward,
SGD step, counting) for every client of the chunk at once. Plug-ins that vectorize reach it through
their cohort_* methods: Ditto calls `train` a second time for its personal model, pFedMe swaps the
step, FedProx adds a penalty.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import torch

from fedplug.backends.functional import SGDStep, masked_losses
from fedplug.backends.schedule import CohortBatches, cohort_batches
from fedplug.core.default_hooks import on_device
from fedplug.core.params import Params
from fedplug.seeding import CLIENT_TRAINING, generator

if TYPE_CHECKING:
    from fedplug.backends.vectorized import VectorizedBackend

Penalty = Callable[[Params], torch.Tensor]  # stacked params -> (C,)
# forward_loss() -> (loss_task (k,) for backward, loss_batch (k,) detached, for the reported train loss)
ForwardLoss = Callable[[], tuple[torch.Tensor, torch.Tensor]]
# step(params, forward_loss, k) -> loss_batch (k,): one batch's update, in place, of the first k clients'
# stacked parameters (`params` are already those k rows)
Step = Callable[[Params, ForwardLoss, int], torch.Tensor]
# gradient(grads, params, k) -> grads: the gradient point for the first k clients (stacked, shared names only)
Gradient = Callable[[Params, Params, int], Params]


class Cohort:
    """The clients of one chunk, their generators, stacked parameters and buffers, and plug-in scratch."""

    def __init__(self, backend: VectorizedBackend, clients: list[int], round_num: int, received: Params) -> None:
        split = backend.data.splits["train"]
        # Largest first: a client's step count grows with its size, so the clients still training
        # at any step are a prefix of the cohort, and a step works on views of that prefix.
        self.clients = sorted(clients, key=lambda c: (split.offsets[c] - split.offsets[c + 1], c))
        self.backend, self.round_num, self.received = backend, round_num, received
        self.generators = [generator(backend.cfg.seed, CLIENT_TRAINING, round_num, c) for c in self.clients]
        self.sizes = [split.offsets[c + 1] - split.offsets[c] for c in self.clients]
        self.offsets = [split.offsets[c] for c in self.clients]
        self.params, self.buffers = backend.stacked_start(self.clients, received)
        self.extra: dict[str, Any] = {}  # plug-ins' scratch for this local update (pFedMe's w)

    def __len__(self) -> int:
        return len(self.clients)

    def states(self, plugin: str) -> list[dict[str, torch.Tensor]]:
        """The plug-in's kept state of each client (empty dicts on a first visit); write into them."""
        return [self.backend.client_states(c)[plugin] for c in self.clients]

    def train(self, params: Params, steps: int, lr: float, penalty: Penalty | None = None,
              step: Step | None = None, gradient: Gradient | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One local update of `params` (stacked leaves, updated in place) and of the cohort's buffers.

        Returns per client the summed batch losses (float64), the samples processed and the steps taken.
        """
        cfg = self.backend.cfg
        drawn = cohort_batches(self.sizes, self.offsets, self.generators, cfg.dataloader.batch_size,
                               cfg.dataloader.drop_last, steps, cfg.train.batch_or_epoch)  # on CPU, like the draws
        device = self.backend.device
        batches, rows_index = drawn.to(device), drawn.index.to(self.backend.data.splits["train"].y.device)
        opt = cfg.train.optimizer
        sgd = SGDStep(lr, opt.momentum, opt.weight_decay, cfg.grad.grad_clip)
        loss_sum = torch.zeros(len(self), dtype=torch.float64, device=device)
        self.backend.model.train()
        for s in range(batches.num_steps):
            counts = drawn.counts[s]  # read on the host: no device synchronisation per step
            k = int((counts > 0).sum())  # the clients still training: a prefix
            if not bool((counts[:k] > 0).all()):  # cannot happen with the Trainer's schedule; never guess
                raise RuntimeError(f"step {s}: the clients still training are not the cohort's first {k}")
            rows = params if k == len(self) else {n: p[:k] for n, p in params.items()}

            def forward_loss(s: int = s, k: int = k, rows: Params = rows) -> tuple[torch.Tensor, torch.Tensor]:
                task, loss_batch = self._batch_losses(rows, batches, rows_index[s, :k], s, k)
                task = task if penalty is None else task + penalty(rows)
                return task, loss_batch.detach()

            if step is None:
                task, loss_batch = forward_loss()
                leaves = list(rows.values())
                grads = list(torch.autograd.grad(task.sum(), leaves))
                if gradient is not None:
                    grads = self._gradient_point(gradient, rows, grads, k)
                sgd(leaves, grads, k)
            else:
                loss_batch = step(rows, forward_loss, k)
            loss_sum[:k] += loss_batch.double() * batches.counts[s, :k]
        return loss_sum, drawn.counts.sum(dim=0), (drawn.counts > 0).sum(dim=0)

    def _gradient_point(self, gradient: Gradient, rows: Params, grads: list[torch.Tensor],
                        k: int) -> list[torch.Tensor]:
        """Apply the gradient transforms to the shared parameters' gradients (the others pass through)."""
        names = list(rows)
        shared = {n: g for n, g in zip(names, grads) if n in self.received}
        values = {n: rows[n].detach() for n in shared}
        shared = gradient(shared, values, k)
        return [shared.get(n, g) for n, g in zip(names, grads)]

    def _batch_losses(self, params: Params, batches: CohortBatches, rows: torch.Tensor, s: int,
                      k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss_task, loss_batch), each (k,), of the first k clients' batches at step `s` (`rows`: their
        indices, on the data's device)."""
        split = self.backend.data.splits["train"]
        index, mask, counts = batches.index[s, :k], batches.mask[s, :k], batches.counts[s, :k]
        x, y = on_device(split.x[rows], index.device), on_device(split.y[rows], index.device)
        buffers = self.buffers if k == len(self) else {n: b[:k] for n, b in self.buffers.items()}
        for plugin in self.backend.loss_plugins:  # FedEM: the q-weighted mixture losses
            local = index - torch.tensor(self.offsets[:k], device=index.device).view(-1, 1)
            return plugin.cohort_losses(self, params, buffers, x, y, mask, local)
        if bool(mask.all()):
            loss = masked_losses(self.backend.forward(params, buffers, x), y, None, counts)
        elif not self.backend.batch_dependent:  # rows are independent: pad and mask the loss
            loss = masked_losses(self.backend.forward(params, buffers, x), y, mask, counts)
        else:  # BatchNorm's batch statistics must not see the padding: its layers take the mask too
            loss = masked_losses(self.backend.masked_forward(params, buffers, x, mask.float()), y, mask, counts)
        return loss, loss

    def stacked(self, per_client: list[Params]) -> Params:
        """Leaves for `train`, stacked from one dict per client, in the backend's memory layout."""
        return self.backend.leaves({n: torch.stack([p[n] for p in per_client]) for n in per_client[0]})
