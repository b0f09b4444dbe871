"""Tensor-native federated data: per split, one tensor of all clients' rows plus offsets.

A client's data is a pair of views into those tensors; nothing is copied per client and no
Python list of samples ever exists. Text data keep `x` as `TokenWindows`: each row is a window
into one shared token stream, gathered only when a batch is indexed; graph data keep it as
`GraphRows` (fedplug/data/graph_rows.py), whose batches are `GraphBatch`es of whole graphs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fedplug.data.graph_rows import GraphRows
from fedplug.errors import DataError


class TokenWindows:
    """Stands in for an (n, width) int64 tensor whose row i is tokens[starts[i] : starts[i] + width].

    Overlapping windows of a text would cost `width` times the text if materialised (80x for
    Shakespeare); here the text is stored once and a row costs one start index. Indexing by an
    index tensor, a slice or an int returns a real int64 tensor (a batch); `rows(lo, hi)` returns
    a lazy sub-range (a client's share)."""

    def __init__(self, tokens: torch.Tensor, starts: torch.Tensor, width: int) -> None:
        self.tokens, self.starts, self.width = tokens, starts, width
        self._offsets = torch.arange(width, dtype=torch.int64, device=starts.device)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.starts.shape[0], self.width))

    dtype = torch.int64

    def __len__(self) -> int:
        return self.starts.shape[0]

    def __getitem__(self, key: torch.Tensor | slice | int) -> torch.Tensor:
        return self.tokens[self.starts[key].unsqueeze(-1) + self._offsets].long()

    def rows(self, lo: int, hi: int) -> TokenWindows:
        return TokenWindows(self.tokens, self.starts[lo:hi], self.width)

    def to(self, device: torch.device, pin: bool = False) -> TokenWindows:
        """The same windows with the token stream and start indices on `device` (or pinned in host memory)."""
        move = (lambda t: t.pin_memory()) if pin else (lambda t: t.to(device))
        return TokenWindows(move(self.tokens), move(self.starts), self.width)

    @property
    def device(self) -> torch.device:
        return self.tokens.device

    @property
    def nbytes(self) -> int:
        """Bytes of the start indices (the shared token stream is counted once, by its owner)."""
        return self.starts.nbytes


def rows(x: torch.Tensor | TokenWindows | GraphRows, lo: int, hi: int) -> torch.Tensor | TokenWindows | GraphRows:
    """Rows lo:hi of a data tensor as a view (lazy for TokenWindows and GraphRows)."""
    return x[lo:hi] if isinstance(x, torch.Tensor) else x.rows(lo, hi)


@dataclass(frozen=True)
class SplitData:
    x: torch.Tensor | TokenWindows | GraphRows
    y: torch.Tensor
    offsets: tuple[int, ...]  # client c owns rows offsets[c]:offsets[c + 1]

    def client(self, c: int) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = self.offsets[c], self.offsets[c + 1]
        return rows(self.x, lo, hi), self.y[lo:hi]

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

    def bytes_in_ram(self) -> int:
        """Bytes the splits hold (a token stream shared by TokenWindows counted once)."""
        total, streams = 0, {}
        for split in self.splits.values():
            total += split.x.nbytes + split.y.nbytes
            if isinstance(split.x, TokenWindows):
                streams[split.x.tokens.data_ptr()] = split.x.tokens.nbytes
        return total + sum(streams.values())

    def to(self, device: torch.device, pin: bool = False) -> FederatedData:
        """Every split on `device`; `pin`: in page-locked host memory instead (batches then move on their own)."""
        def move(t: torch.Tensor | TokenWindows | GraphRows) -> torch.Tensor | TokenWindows | GraphRows:
            if not isinstance(t, torch.Tensor):
                return t.to(device, pin)
            return t.pin_memory() if pin else t.to(device)

        splits = {name: SplitData(move(s.x), move(s.y), s.offsets) for name, s in self.splits.items()}
        return FederatedData(self.name, splits, self.num_classes)

    def first_clients(self, k: int) -> FederatedData:
        """The same data restricted to clients 0..k-1 (views, no copy)."""
        if k > self.num_clients:
            raise DataError(f"federate.client_num is {k} but the {self.name} data has {self.num_clients} clients")
        splits = {name: SplitData(rows(s.x, 0, s.offsets[k]), s.y[: s.offsets[k]], s.offsets[: k + 1])
                  for name, s in self.splits.items()}
        return FederatedData(self.name, splits, self.num_classes)
