"""Tensor-native federated data: per split, one tensor of all clients' rows plus offsets.

A client's data is a pair of views into those tensors; nothing is copied per client and no
Python list of samples ever exists.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fedplug.errors import DataError


@dataclass(frozen=True)
class SplitData:
    x: torch.Tensor
    y: torch.Tensor
    offsets: tuple[int, ...]  # client c owns rows offsets[c]:offsets[c + 1]

    def client(self, c: int) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = self.offsets[c], self.offsets[c + 1]
        return self.x[lo:hi], self.y[lo:hi]

    def sizes(self) -> list[int]:
        return [b - a for a, b in zip(self.offsets, self.offsets[1:])]


@dataclass(frozen=True)
class FederatedData:
    name: str
    splits: dict[str, SplitData]
    num_classes: int

    @property
    def num_clients(self) -> int:
        return len(self.splits["train"].offsets) - 1

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.splits["train"].x.shape[1:])

    def first_clients(self, k: int) -> FederatedData:
        """The same data restricted to clients 0..k-1 (views, no copy)."""
        if k > self.num_clients:
            raise DataError(f"federate.client_num is {k} but the {self.name} data has {self.num_clients} clients")
        splits = {name: SplitData(s.x[: s.offsets[k]], s.y[: s.offsets[k]], s.offsets[: k + 1])
                  for name, s in self.splits.items()}
        return FederatedData(self.name, splits, self.num_classes)
