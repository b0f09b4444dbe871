"""SCAFFOLD: Karimireddy, Kale, Mohri, Reddi, Stich, Suresh, "SCAFFOLD: Stochastic Controlled
Averaging for Federated Learning", ICML 2020 (Algorithm 1, option II).

The server keeps a control variate c, each client its own c_i (both zero at the start). A client
receives x and c, takes its K local steps on corrected gradients

    y <- y - lr * (g(y) - c_i + c)            (the gradient point: a correction, not a loss term)

then (option II) sets c_i+ = c_i - c + (x - y) / (K * lr) and uploads y and delta c_i = c_i+ - c_i
(`scaffold/<parameter>`, summed by the server). The server moves x from the aggregate of the y's
and sets c <- c + (1/N) * sum over the round's clients of delta c_i (N: every client).
In round 1 every correction is zero: that round is FedAvg's exactly.

Choices:
- K is the number of steps the client actually took (they differ per client when local work is
  counted in epochs); lr is the client learning rate.
- x moves by fedplug's aggregate (weighted by samples processed, `aggregator.weighting`) and any
  server step (FedOpt). The paper's x <- x + eta_g * mean(y - x) is `aggregator.weighting uniform`
  with FedOpt's SGD at lr eta_g.
- c and the c_i cover the shared parameters (those that travel): FedBN's local ones are not corrected.
- With client momentum or weight decay, option II still divides the change by K * lr, an
  approximation the paper does not cover.
"""
from __future__ import annotations

from typing import Any

import torch

from fedplug.core.messages import Messages, RoundFacts, UpSpec, like
from fedplug.core.plugin import LocalView, Params, Plugin


class Scaffold(Plugin):
    name = "scaffold"
    method = "SCAFFOLD"
    vectorizes = True  # only pure points: the same code runs on stacked cohorts

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.control: Params = {}  # the server's c, persistent across rounds (checkpointed)

    def messages(self, shared: Params) -> Messages:
        specs = like(shared)
        return Messages(down=specs, up={name: UpSpec(spec, "sum") for name, spec in specs.items()})

    # -- server ------------------------------------------------------------------------------------
    def broadcast(self, facts: RoundFacts) -> Params:
        if not self.control:
            self.control.update({n: torch.zeros_like(t) for n, t in facts.previous_global.items()})
        return dict(self.control)

    def receive(self, facts: RoundFacts) -> None:
        """c <- c + (1/N) * sum of the round's delta c_i."""
        total = facts.extras(self.name)
        self.control.update({n: c + total[n] / facts.num_clients for n, c in self.control.items()})

    def server_state(self) -> dict[str, Any]:
        return {"control": self.control}

    def describe_server(self) -> list[str]:
        return [f"{'receive':<19}c <- c + (1/N) * sum of the clients' delta c_i (sent: c down, delta c_i up)"]

    # -- client ------------------------------------------------------------------------------------
    def init_client_state(self, received: Params) -> dict[str, torch.Tensor]:
        return {n: torch.zeros_like(t) for n, t in received.items()}  # c_i

    def transform_gradients(self, grads: Params, view: LocalView) -> Params:
        return {n: g + (view.extras[n] - view.state[n]) for n, g in grads.items()}

    def client_upload(self, view: LocalView) -> Params:
        """Option II: c_i+ = c_i - c + (x - y) / (K * lr); keep c_i+, send c_i+ - c_i."""
        scale = 1.0 / (view.metrics["train_steps"] * view.lr)
        delta = {}
        for name, old in view.state.items():
            new = old - view.extras[name] + (view.received[name] - view.params[name]) * scale
            delta[name] = new - old
            view.state[name] = new
        return delta
