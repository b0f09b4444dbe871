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


class Reduction:
    """One extra tensor's reduction over a round's uploads (core/messages.REDUCTIONS), streaming."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.value: torch.Tensor | None = None
        self.weight = 0.0
        self.count = 0

    def add(self, tensor: torch.Tensor, weight: float) -> None:
        if self.value is None:
            self.value = tensor * weight if self.kind == "weighted_mean" else tensor.clone()
        elif self.kind == "weighted_mean":
            self.value.add_(tensor, alpha=weight)
        elif self.kind in ("mean", "sum"):
            self.value.add_(tensor)
        elif self.kind == "min":
            torch.minimum(self.value, tensor, out=self.value)
        else:
            torch.maximum(self.value, tensor, out=self.value)
        self.weight += weight
        self.count += 1

    def result(self) -> torch.Tensor:
        if self.kind == "weighted_mean":
            return self.value / self.weight
        return self.value / self.count if self.kind == "mean" else self.value
