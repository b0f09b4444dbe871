"""Aggregation: the weighted mean of client parameters, weight = samples processed.

This is FedAvg (McMahan et al., "Communication-Efficient Learning of Deep Networks from
Decentralized Data", AISTATS 2017), the default: with no algorithm switched on, the global model
becomes this mean. Plug-ins transform it or move the global model from it (see core/compose.py).
"""
from __future__ import annotations

import torch

from fedplug.core.params import Params



class WeightedMean:
    """Streaming weighted mean: one running sum, however many clients report."""

    def __init__(self, like: Params) -> None:
        self._sum = {name: torch.zeros_like(t) for name, t in like.items()}
        self._weight = 0.0

    def add(self, params: Params, weight: float) -> None:
        if weight <= 0:
            raise ValueError(f"aggregation weight must be positive, got {weight}")
        for name, total in self._sum.items():
            total.add_(params[name], alpha=weight)
        self._weight += weight

    @property
    def total_weight(self) -> float:
        return self._weight

    def result(self) -> Params:
        if self._weight == 0:
            raise ValueError("no client result to aggregate")
        return {name: total / self._weight for name, total in self._sum.items()}
