"""What travels between server and clients besides the model, and what the server knows of a round.

A plug-in declares its extra tensors with `Plugin.messages(shared)`: `down` (sent by the server
with the global model, e.g. SCAFFOLD's c) and `up` (sent back by each client, e.g. SCAFFOLD's
delta c_i or FedNova's normalizer), each up tensor with the reduction the server applies to it.
Every backend carries them the same way; on the wire they travel in the same safetensors payload
as the parameters, named `<plug-in>/<name>`, and are checked like them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from fedplug.core.params import Params

REDUCTIONS = ("weighted_mean", "mean", "sum", "min", "max")
SEPARATOR = "/"  # parameter names use dots, never slashes: `<plug-in>/<name>` cannot clash with one


@dataclass(frozen=True)
class TensorSpec:
    shape: tuple[int, ...]
    dtype: torch.dtype = torch.float32


@dataclass(frozen=True)
class UpSpec:
    spec: TensorSpec
    reduction: str = "weighted_mean"  # one of REDUCTIONS, over the round's received clients

    def __post_init__(self) -> None:
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"unknown reduction '{self.reduction}'; use one of {', '.join(REDUCTIONS)}")


@dataclass(frozen=True)
class Messages:
    down: dict[str, TensorSpec] = field(default_factory=dict)
    up: dict[str, UpSpec] = field(default_factory=dict)

    def up_specs(self) -> dict[str, TensorSpec]:
        return {name: up.spec for name, up in self.up.items()}


def like(tensors: Params) -> dict[str, TensorSpec]:
    """One spec per tensor, same shape and dtype (e.g. a control variate per shared parameter)."""
    return {name: TensorSpec(tuple(t.shape), t.dtype) for name, t in tensors.items()}


def scalar(dtype: torch.dtype = torch.float64) -> TensorSpec:
    return TensorSpec((), dtype)


@dataclass
class Upload:
    """What one client sent back after its local update."""

    client: int
    params: Params
    metrics: dict[str, float]  # train_total (samples processed), train_steps, train_loss
    extras: dict[str, Params] = field(default_factory=dict)  # plug-in -> its `up` tensors

    @property
    def samples(self) -> float:
        return self.metrics["train_total"]

    @property
    def steps(self) -> float:
        return self.metrics["train_steps"]

    def copied(self) -> Upload:
        """The same upload in tensors of its own: a backend reuses its tensors for the next client."""
        return Upload(self.client, {n: t.detach().clone() for n, t in self.params.items()}, dict(self.metrics),
                      {p: {n: t.detach().clone() for n, t in e.items()} for p, e in self.extras.items()})


@dataclass
class RoundFacts:
    """What server-side plug-in code knows of the round; never read from globals or data sections."""

    round_num: int
    num_clients: int  # N, every client of the federation
    sampled: tuple[int, ...]
    previous_global: Params
    received: list[int] = field(default_factory=list)  # in the order their uploads were folded in
    weights: dict[int, float] = field(default_factory=dict)  # client -> aggregation weight
    reduced: dict[str, Params] = field(default_factory=dict)  # plug-in -> its reduced `up` tensors
    # Set by an aggregator that keeps only some uploads (Krum, Bulyan): the extras are then reduced over
    # these clients alone, so an upload left out of the model is left out of the extras too.
    selected: list[int] | None = None

    @property
    def total_weight(self) -> float:
        return sum(self.weights[c] for c in self.received)

    def extras(self, plugin: str) -> Params:
        return self.reduced.get(plugin, {})


def flatten_extras(extras: dict[str, Params]) -> Params:
    """{plug-in: {name: t}} -> {"plug-in/name": t} for the wire or a checkpoint."""
    return {f"{plugin}{SEPARATOR}{name}": t for plugin, tensors in extras.items() for name, t in tensors.items()}


def split_payload(tensors: Params) -> tuple[Params, dict[str, Params]]:
    """Parameters and {plug-in: extras} from one payload (inverse of params + flatten_extras)."""
    params: Params = {}
    extras: dict[str, Params] = {}
    for name, t in tensors.items():
        if SEPARATOR in name:
            plugin, rest = name.split(SEPARATOR, 1)
            extras.setdefault(plugin, {})[rest] = t
        else:
            params[name] = t
    return params, extras


def payload_layout(params: dict[str, Any], extras: dict[str, dict[str, TensorSpec]]) -> dict[str, tuple]:
    """The expected {name: (dtype, shape)} of a payload: parameters' layout plus declared extras."""
    out = dict(params)
    for plugin, specs in extras.items():
        for name, spec in specs.items():
            out[f"{plugin}{SEPARATOR}{name}"] = (spec.dtype, spec.shape)
    return out
