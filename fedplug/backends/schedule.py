"""The batches of a cohort's local update: every client's steps, padded to one (steps, clients, batch) grid.

Each client draws its permutations from its own generator, one per epoch, exactly as the
Trainer's `_hook_on_epoch_start_shuffle` does, and cuts them into batches with the Trainer's
`schedule`; so every client takes the same steps on the same rows as under the sequential backend.
Clients differ in size, so batches differ in length and clients in step count: the grid is padded,
and `mask` says which entries are real rows.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fedplug.core.trainer import schedule


@dataclass(frozen=True)
class CohortBatches:
    index: torch.Tensor  # (steps, clients, batch) int64 rows of the split's x; padding points at a real row
    mask: torch.Tensor  # (steps, clients, batch) bool: a real row of the client's batch
    counts: torch.Tensor  # (steps, clients) rows in each batch (0: the client has finished its steps)

    @property
    def num_steps(self) -> int:
        return self.index.shape[0]

    def to(self, device: torch.device) -> CohortBatches:
        return CohortBatches(self.index.to(device), self.mask.to(device), self.counts.to(device))

    def uniform(self, step: int) -> bool:
        """Every client's batch at `step` is full: no padding, no mask needed."""
        return bool(self.mask[step].all())


def client_batches(size: int, offset: int, gen: torch.Generator, batch_size: int, drop_last: bool, steps: int,
                   unit: str) -> torch.Tensor:
    """(steps_taken, batch_size) global row indices of one client's update, -1 where a batch is short."""
    per_epoch, epochs, last = schedule(size, batch_size, drop_last, steps, unit)
    width = per_epoch * batch_size
    grid = torch.full((epochs, width), -1, dtype=torch.int64)
    for epoch in range(epochs):
        order = torch.randperm(size, generator=gen)[:width]  # drop_last: the tail never forms a batch
        grid[epoch, :order.shape[0]] = order + offset
    batches = grid.view(epochs * per_epoch, batch_size)
    return batches[:(epochs - 1) * per_epoch + last]


def cohort_batches(sizes: list[int], offsets: list[int], generators: list[torch.Generator], batch_size: int,
                   drop_last: bool, steps: int, unit: str) -> CohortBatches:
    """All clients' batches on one grid; draws from `generators` (advancing them) in the Trainer's order."""
    per_client = [client_batches(n, o, g, batch_size, drop_last, steps, unit)
                  for n, o, g in zip(sizes, offsets, generators)]
    most = max(b.shape[0] for b in per_client)
    index = torch.full((most, len(per_client), batch_size), -1, dtype=torch.int64)
    for i, batches in enumerate(per_client):
        index[:batches.shape[0], i] = batches
    mask = index >= 0
    # Padding reads the client's first row (any real row would do): gathers stay in bounds.
    first = torch.tensor(offsets, dtype=torch.int64).view(1, -1, 1).expand_as(index)
    index = torch.where(mask, index, first)
    return CohortBatches(index, mask, mask.sum(dim=2))
