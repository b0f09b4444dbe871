"""Backends: how the clients of a round are run (sequential is the reference semantics).

Both implement `train_cohort(clients, round_num, global_params)` (yielding uploaded parameters,
weight and train loss per client), `evaluate(global_params, split)` and `shared_parameters()`.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from fedplug.config import ConfigNode
from fedplug.core.compose import Plan
from fedplug.data.federated import FederatedData


def build_backend(cfg: ConfigNode, model: nn.Module, plan: Plan, data: FederatedData) -> Any:
    """The backend named by `federate.backend`."""
    if cfg.federate.backend == "vectorized":
        from fedplug.backends.vectorized import VectorizedBackend

        return VectorizedBackend(cfg, model, plan, data)
    from fedplug.backends.sequential import SequentialBackend

    return SequentialBackend(cfg, model, plan, data)
