"""Backends: how the clients of a round are run (sequential is the reference semantics).

All implement `train_cohort(clients, round_num, global_params)` (yielding uploaded parameters,
weight and train loss per client), `evaluate(global_params, split)` and `shared_parameters()`.
The Ray backend runs one of the other two on each of its workers; Ray is imported only then.
"""
from __future__ import annotations

from typing import Any, Callable

from torch import nn

from fedplug.config import ConfigNode
from fedplug.core.compose import Plan
from fedplug.data.federated import FederatedData
from fedplug.data.graph_rows import GraphRows
from fedplug.errors import ConfigError


def build_backend(cfg: ConfigNode, model: nn.Module, plan: Plan, data: FederatedData,
                  data_factory: Callable[[ConfigNode], FederatedData] | None = None) -> Any:
    """The backend named by `federate.backend`. `data_factory`: how a Ray worker builds `data` for itself
    (default: fedplug.data.build_data from the node's cache)."""
    ray = cfg.federate.backend == "ray"
    key = "ray.inner" if ray else "federate.backend"
    stacks = (cfg.ray.inner if ray else cfg.federate.backend) == "vectorized"
    if stacks and isinstance(data.splits["train"].x, GraphRows):  # vmap needs equal shapes; graphs differ in size
        raise ConfigError(f"{key} vectorized cannot stack clients' batches of graphs ({data.name}); "
                          f"use {key} sequential")
    if ray:
        from fedplug.backends.ray_backend import RayBackend

        return RayBackend(cfg, model, plan, data, data_factory)
    if cfg.federate.backend == "vectorized":
        from fedplug.backends.vectorized import VectorizedBackend

        return VectorizedBackend(cfg, model, plan, data)
    from fedplug.backends.sequential import SequentialBackend

    return SequentialBackend(cfg, model, plan, data)
