"""FedAvg: McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized
Data", AISTATS 2017. Clients run local SGD from the global model; the server takes the mean of
their parameters weighted by the samples each processed.

Only trainable parameters travel: buffers such as BatchNorm running statistics stay local.
"""
from __future__ import annotations

import torch
from torch import nn

from fedplug.server.aggregation import Params


def shared_parameters(model: nn.Module) -> Params:
    """The tensors that are communicated (views of the live parameters)."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def load_parameters(model: nn.Module, params: Params) -> None:
    """Write `params` into the model in place (no new model, no deepcopy)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in params:
                p.copy_(params[name])

