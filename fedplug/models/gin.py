"""GIN for graph classification: Xu, Hu, Leskovec, Jegelka, "How Powerful are Graph Neural Networks?",
ICLR 2019; with BatchNorm inside each layer's MLP, the model of FederatedScope's graph benchmarks.

encoder Linear(features, hidden) -> `layers` GIN layers, each h' = MLP((1 + eps) h + sum of the
neighbours' h) with MLP = Linear, BatchNorm, ReLU, Linear (eps fixed at 0), ReLU and dropout between
layers (masks drawn from the client's generator: fedplug/core/dropout.py) -> pooling per graph (mean, add or max) -> Linear + ReLU -> dropout -> clf Linear(hidden, classes).

Names follow FederatedScope's split of a multi-domain model: `encoder` and `clf` (sized by each
client's features and classes there, so kept local by its FedBN config), and every BatchNorm named
`norm`, which FedBN's default patterns keep local. torch_geometric is imported only here.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from fedplug.core.dropout import SeededDropout
from fedplug.data.graph_rows import GraphBatch


class GIN(nn.Module):
    def __init__(self, in_features: int, num_classes: int, hidden: int = 64, layers: int = 2, dropout: float = 0.5,
                 pooling: str = "mean") -> None:
        super().__init__()
        from torch_geometric.nn import GINConv, global_add_pool, global_max_pool, global_mean_pool

        self.encoder = nn.Linear(in_features, hidden)
        # the BatchNorm is named `norm` so that FedBN's "norm" pattern matches it (convs.i.nn.norm.*)
        self.convs = nn.ModuleList(
            GINConv(nn.Sequential(OrderedDict(lin1=nn.Linear(hidden, hidden), norm=nn.BatchNorm1d(hidden),
                                              relu=nn.ReLU(), lin2=nn.Linear(hidden, hidden))))
            for _ in range(layers))
        self.dropout = SeededDropout(dropout)  # one module for both places: masks from the client's generator
        self.pool = {"mean": global_mean_pool, "add": global_add_pool, "max": global_max_pool}[pooling]
        self.linear = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU())
        self.clf = nn.Linear(hidden, num_classes)

    def forward(self, data: GraphBatch) -> torch.Tensor:
        x = self.encoder(data.x)
        for i, conv in enumerate(self.convs):
            x = conv(x, data.edge_index)
            if i < len(self.convs) - 1:
                x = F.relu(self.dropout(x))
        x = self.pool(x, data.batch, size=data.num_graphs)  # size given: no device sync to count graphs
        x = self.dropout(self.linear(x))
        return self.clf(x)
