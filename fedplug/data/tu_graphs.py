"""`graph_multi_domain_mol`: one client per molecular TU data set (graph classification).

FederatedScope's multi-domain graph data (after GCFL: Xie, Ma, Liu, Yang, "Federated Graph
Classification over Non-IID Graphs", NeurIPS 2021): client i holds the i-th of MUTAG, BZR, COX2,
DHFR, PTC_MR, AIDS, NCI1 (Morris et al., "TUDataset: A collection of benchmark datasets for learning
with graphs", 2020), each split at random into train/val/test (`data.splits`).

The files are read with torch_geometric's TU reader (`read_tu_data`, what `TUDataset` runs), imported
only here; before that each file is checked, so a missing or malformed one is one line naming it.
Node features are the one-hot node labels (atom types), as `TUDataset` gives them by default
(`use_node_attr=False`). The data sets have different numbers of atom types; every client's features
are zero-padded to the widest, which leaves a model with a per-client first layer (FederatedScope's
`encoder`, kept local) computing exactly what it computes on the unpadded features.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fedplug.data.federated import FederatedData, SplitData
from fedplug.data.graph_rows import collate
from fedplug.errors import DataError

MOL_DATASETS = ("MUTAG", "BZR", "COX2", "DHFR", "PTC_MR", "AIDS", "NCI1")
SPLITS = ("train", "val", "test")
Graph = tuple[torch.Tensor, torch.Tensor]  # (node features, edge_index numbering the graph's nodes from 0)


def find_folder(root: Path, name: str) -> Path:
    """The folder holding NAME_A.txt: root/NAME/raw (where TUDataset keeps it) or root/NAME (TU's zip)."""
    for folder in (root / name / "raw", root / name):
        if (folder / f"{name}_A.txt").is_file():
            return folder
    raise DataError(f"{root / name / 'raw' / (name + '_A.txt')}: no such file (nor in {root / name}); put the TU data "
                    f"set {name} under data.root (docs/data.md says where it comes from)")


def _read_ints(path: Path) -> np.ndarray:
    """A TU text file as an (n, k) int array; one line naming the file when it is missing or malformed."""
    if not path.is_file():
        raise DataError(f"{path}: no such file (a TU data set needs _A, _graph_indicator, _graph_labels and "
                        f"_node_labels)")
    try:
        values = np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)
    except ValueError as error:
        raise DataError(f"{path}: malformed, expected comma-separated integers per line ({error})") from None
    if values.size == 0:
        raise DataError(f"{path}: empty")
    return values


def check_folder(folder: Path, name: str) -> None:
    """The checks torch_geometric's reader does not make, each failure naming the file at fault."""
    file = lambda kind: folder / f"{name}_{kind}.txt"  # noqa: E731
    edges, indicator = _read_ints(file("A")), _read_ints(file("graph_indicator"))[:, 0]
    labels, node_labels = _read_ints(file("graph_labels")), _read_ints(file("node_labels"))
    nodes, graphs = indicator.shape[0], labels.shape[0]
    if edges.shape[1] != 2:
        raise DataError(f"{file('A')}: expected 'row, col' per line, found {edges.shape[1]} values")
    if node_labels.shape[0] != nodes:
        raise DataError(f"{file('node_labels')}: {node_labels.shape[0]} lines, but {file('graph_indicator')} has "
                        f"{nodes} nodes")
    if (np.diff(indicator) < 0).any() or indicator[0] != 1 or indicator[-1] != graphs \
            or (np.diff(indicator) > 1).any():
        raise DataError(f"{file('graph_indicator')}: graph ids must run 1..{graphs} in order ({file('graph_labels')} "
                        f"has {graphs} graphs)")
    if edges.min() < 1 or edges.max() > nodes:
        raise DataError(f"{file('A')}: node ids must be in 1..{nodes}, found {edges.min()}..{edges.max()}")
    if (indicator[edges[:, 0] - 1] != indicator[edges[:, 1] - 1]).any():
        raise DataError(f"{file('A')}: an edge joins nodes of two graphs")


def read_tu(folder: Path, name: str) -> tuple[list[Graph], torch.Tensor, int]:
    """The graphs of one TU data set (one-hot node labels, edges without self loops, sorted and
    deduplicated as torch_geometric makes them), their class indices and the feature count."""
    check_folder(folder, name)
    from torch_geometric.io import read_tu_data

    data, slices, sizes = read_tu_data(str(folder), name)
    x = data.x[:, sizes["num_node_attributes"]:]  # TUDataset's default: node labels only
    node, edge = slices["x"], slices["edge_index"]
    graphs = [(x[node[g]:node[g + 1]], data.edge_index[:, edge[g]:edge[g + 1]]) for g in range(len(node) - 1)]
    return graphs, data.y, x.shape[1]


def split_indices(n: int, fractions: tuple[float, ...], rng: np.random.Generator) -> list[np.ndarray]:
    """A random permutation cut into train, val, test: floor(n f_train), floor(n f_val), the rest (as
    FederatedScope splits a client's graphs)."""
    order = rng.permutation(n)
    train, val = int(n * fractions[0]), int(n * fractions[1])
    return [order[:train], order[train:train + val], order[train + val:]]


def load_multi_domain(root: Path, names: list[str], fractions: tuple[float, ...], seed: int) -> FederatedData:
    """One client per TU data set in `names`, in that order; features zero-padded to the widest."""
    clients = [read_tu(find_folder(root, name), name) for name in names]
    width = max(features for _, _, features in clients)
    parts: dict[str, list[list[Graph]]] = {s: [] for s in SPLITS}
    labels: dict[str, list[torch.Tensor]] = {s: [] for s in SPLITS}
    for c, (graphs, y, features) in enumerate(clients):
        padded = [(torch.nn.functional.pad(x, (0, width - features)), e) for x, e in graphs]
        for split, index in zip(SPLITS, split_indices(len(graphs), fractions, np.random.default_rng([seed, c]))):
            parts[split].append([padded[i] for i in index])
            labels[split].append(y[torch.from_numpy(index)])
    splits = {}
    for split in SPLITS:
        sizes = [len(p) for p in parts[split]]
        offsets = tuple(int(o) for o in np.concatenate([[0], np.cumsum(sizes)]))
        splits[split] = SplitData(collate([g for p in parts[split] for g in p], width),
                                  torch.cat(labels[split]), offsets)
    num_classes = max(int(y.max()) + 1 for _, y, _ in clients)
    return FederatedData("graph_multi_domain_mol", splits, num_classes=num_classes)
