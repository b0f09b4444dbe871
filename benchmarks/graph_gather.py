"""A batch of graphs: fedplug's GraphRows gather against torch_geometric's Batch.from_data_list.

FederatedScope (like most PyG code) keeps a client's graphs as a list of `Data` objects and collates
each batch with `Batch.from_data_list`; fedplug stores a split collated once and gathers a batch by
index (fedplug/data/graph_rows.py). Both give the same batch (checked here on every batch, and in
tests/test_graph.py). Graphs shaped like NCI1 (4,110 graphs, about 30 nodes and 32 directed edges
each, 37 atom types), batches of 64 in a random order, the two methods alternating; one GIN training
step on the same batches is timed for scale. Usage: python benchmarks/graph_gather.py [--repeats 5]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch_geometric.data import Batch, Data

from fedplug.data.graph_rows import collate
from fedplug.models.gin import GIN


def make_graphs(count: int, features: int, gen: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    graphs = []
    for _ in range(count):
        n = int(torch.randint(10, 50, (1,), generator=gen))
        x = torch.nn.functional.one_hot(torch.randint(0, features, (n,), generator=gen), features).float()
        parent = (torch.rand(n - 1, generator=gen) * torch.arange(1, n)).long()  # a random tree
        child = torch.arange(1, n)
        graphs.append((x, torch.stack([torch.cat([child, parent]), torch.cat([parent, child])])))
    return graphs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    graphs = make_graphs(4110, 37, gen)
    rows = collate(graphs, 37)
    data_list = [Data(x=x, edge_index=e) for x, e in graphs]
    order = torch.randperm(len(graphs), generator=gen)
    batches = [order[i:i + 64] for i in range(0, len(order), 64)]
    model = GIN(37, 2, hidden=64, layers=2, dropout=0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    y = torch.zeros(64, dtype=torch.long)
    for index in batches[:3]:  # same batch both ways
        ours, pyg = rows[index], Batch.from_data_list([data_list[int(i)] for i in index])
        assert all(torch.equal(getattr(ours, f), getattr(pyg, f)) for f in ("x", "edge_index", "batch", "ptr"))

    def ours() -> None:
        for index in batches:
            rows[index]

    def pyg() -> None:
        for index in batches:
            Batch.from_data_list([data_list[int(i)] for i in index])

    def step() -> None:
        for index in batches:
            optimizer.zero_grad()
            out = model(rows[index])
            torch.nn.functional.cross_entropy(out, y[:out.shape[0]]).backward()
            optimizer.step()

    times: dict[str, list[float]] = {"GraphRows gather": [], "Batch.from_data_list": [], "gather + GIN step": []}
    for _ in range(args.repeats):
        for name, fn in zip(times, (ours, pyg, step)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["GraphRows gather"])
    print(f"| per epoch of {len(batches)} batches of 64 graphs | seconds (median of {args.repeats}) | vs. GraphRows |")
    print("|---|---|---|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.3f} | {statistics.median(values) / base:.1f}x |")


if __name__ == "__main__":
    main()
