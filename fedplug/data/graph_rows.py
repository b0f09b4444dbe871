"""Graphs as rows: a split's graphs stored collated once, a batch gathered by graph index.

Graphs differ in size, so a split cannot be one (n, features) tensor. `GraphRows` stores the split
the way a collated PyG batch does (every node's features in one tensor, every edge in one
(2, E) tensor of split-wide node indices, and per-graph offsets into both) and stands in for the
(n_graphs, features) row tensor the Trainer indexes: `rows[index]` (an index tensor, a slice or an
int) returns a `GraphBatch`, `rows.rows(lo, hi)` a lazy sub-range (a client's share) that shares
the storage. Nothing here imports torch_geometric: the base install reads no graphs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GraphBatch:
    """A mini-batch of graphs with PyG's field names, so a PyG model reads it as it reads a `Batch`.

    `batch[i]` is the graph of node i (0..num_graphs-1); `ptr[g]:ptr[g + 1]` are graph g's nodes."""
    x: torch.Tensor
    edge_index: torch.Tensor
    batch: torch.Tensor
    ptr: torch.Tensor
    num_graphs: int

    @property
    def device(self) -> torch.device:
        return self.x.device

    def to(self, device: torch.device, non_blocking: bool = False) -> GraphBatch:
        move = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return GraphBatch(move(self.x), move(self.edge_index), move(self.batch), move(self.ptr), self.num_graphs)


def _ranges(starts: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For ranges starts[g]:starts[g] + counts[g]: every position in order, its range number, and the
    ranges' offsets in the concatenation (len(starts) + 1)."""
    owner = torch.repeat_interleave(torch.arange(counts.shape[0], device=counts.device), counts)
    offsets = torch.zeros(counts.shape[0] + 1, dtype=torch.int64, device=counts.device)
    torch.cumsum(counts, 0, out=offsets[1:])
    positions = starts[owner] + torch.arange(owner.shape[0], device=counts.device) - offsets[owner]
    return positions, owner, offsets


class GraphRows:
    """Stands in for an (n_graphs, num_features) tensor whose row g is graph g.

    `x`: (total nodes, features) float; `edge_index`: (2, total edges), node indices into `x`;
    `node_ptr`, `edge_ptr`: graph g owns nodes node_ptr[g]:node_ptr[g + 1] and edges
    edge_ptr[g]:edge_ptr[g + 1] (absolute, so a sub-range is a slice of the two pointers)."""

    def __init__(self, x: torch.Tensor, edge_index: torch.Tensor, node_ptr: torch.Tensor,
                 edge_ptr: torch.Tensor) -> None:
        self.x, self.edge_index, self.node_ptr, self.edge_ptr = x, edge_index, node_ptr, edge_ptr

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.node_ptr.shape[0] - 1, self.x.shape[1]))

    @property
    def dtype(self) -> torch.dtype:
        return self.x.dtype

    @property
    def device(self) -> torch.device:
        return self.x.device

    def __len__(self) -> int:
        return self.node_ptr.shape[0] - 1

    def __getitem__(self, key: torch.Tensor | slice | int) -> GraphBatch:
        if isinstance(key, int):
            key = slice(key, key + 1)
        if isinstance(key, slice):
            graphs = torch.arange(len(self), device=self.device)[key]
        else:
            graphs = key.to(self.device)
        nodes, node_owner, ptr = _ranges(self.node_ptr[graphs], self.node_ptr[graphs + 1] - self.node_ptr[graphs])
        edges, edge_owner, _ = _ranges(self.edge_ptr[graphs], self.edge_ptr[graphs + 1] - self.edge_ptr[graphs])
        # an edge's nodes, renumbered from the split's numbering into the batch's
        shift = ptr[:-1] - self.node_ptr[graphs]
        edge_index = self.edge_index[:, edges] + shift[edge_owner]
        return GraphBatch(self.x[nodes], edge_index, node_owner, ptr, int(graphs.shape[0]))

    def rows(self, lo: int, hi: int) -> GraphRows:
        return GraphRows(self.x, self.edge_index, self.node_ptr[lo:hi + 1], self.edge_ptr[lo:hi + 1])

    def to(self, device: torch.device, pin: bool = False) -> GraphRows:
        """The same graphs with every tensor on `device` (or pinned in host memory)."""
        move = (lambda t: t.pin_memory()) if pin else (lambda t: t.to(device))
        return GraphRows(move(self.x), move(self.edge_index), move(self.node_ptr), move(self.edge_ptr))

    @property
    def nbytes(self) -> int:
        """Bytes of this range's nodes, edges and pointers (a sub-range counts only its own graphs)."""
        nodes = int(self.node_ptr[-1] - self.node_ptr[0])
        edges = int(self.edge_ptr[-1] - self.edge_ptr[0])
        return (nodes * self.x.shape[1] * self.x.element_size() + edges * 2 * self.edge_index.element_size()
                + self.node_ptr.nbytes + self.edge_ptr.nbytes)


def collate(graphs: list[tuple[torch.Tensor, torch.Tensor]], num_features: int) -> GraphRows:
    """GraphRows of (x, edge_index) pairs, each edge_index numbering its own graph's nodes from 0."""
    counts = torch.tensor([x.shape[0] for x, _ in graphs], dtype=torch.int64)
    edge_counts = torch.tensor([e.shape[1] for _, e in graphs], dtype=torch.int64)
    node_ptr = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
    edge_ptr = torch.cat([torch.zeros(1, dtype=torch.int64), edge_counts.cumsum(0)])
    edge_index = torch.cat([torch.zeros(2, 0, dtype=torch.int64)]
                           + [e + node_ptr[g] for g, (_, e) in enumerate(graphs)], dim=1)
    x = torch.cat([torch.zeros(0, num_features)] + [x for x, _ in graphs])
    return GraphRows(x, edge_index, node_ptr, edge_ptr)
