"""FedDyn: Acar, Zhao, Navarro, Mattina, Whatmough, Saligrama, "Federated Learning Based on Dynamic
Regularization", ICLR 2021 (Algorithm 1).

Client k minimises  L_k(theta) - <grad_k, theta> + alpha/2 * ||theta - theta^{t-1}||^2, where grad_k
(its state, zero at the start) tracks the gradient of L_k at its last local model. Written at the
gradient point: g <- g - grad_k + alpha * (theta - theta^{t-1}). After the update the client sets
grad_k <- grad_k - alpha * (theta_k^t - theta^{t-1}). Nothing but the model travels.
The server keeps h (zero at the start):
    h <- h - alpha * (1/N) * sum_{k in P_t} (theta_k^t - theta^{t-1})
    theta^t = mean_{k in P_t} theta_k^t - h / alpha
with N every client (from the round's facts) and P_t the clients received.

Choices: the sum over P_t is written |P_t| * (aggregate - theta^{t-1}) with the round's aggregate,
which is the paper's uniform mean under `aggregator.weighting uniform` and the sample-weighted mean
under fedplug's default. alpha 0 is FedAvg exactly (the correction adds exact zeros and the server
step is skipped, since the paper's h / alpha is undefined there). Key: `feddyn.alpha`.
"""
from __future__ import annotations

from typing import Any

import torch

from fedplug.core.messages import RoundFacts
from fedplug.core.plugin import LocalView, Params, Plugin


class FedDyn(Plugin):
    name = "feddyn"
    method = "FedDyn"
    vectorizes = True  # only pure points

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.alpha: float = self.section.alpha
        self.h: Params = {}  # the server's state, persistent across rounds (checkpointed)

    # -- client ------------------------------------------------------------------------------------
    def init_client_state(self, received: Params) -> dict[str, torch.Tensor]:
        return {n: torch.zeros_like(t) for n, t in received.items()}  # grad_k

    def transform_gradients(self, grads: Params, view: LocalView) -> Params:
        return {n: (g - view.state[n]) + self.alpha * (view.params[n] - view.received[n]) for n, g in grads.items()}

    def client_upload(self, view: LocalView) -> Params:
        """grad_k <- grad_k - alpha * (theta_k^t - theta^{t-1}); nothing extra is sent."""
        for name, grad in view.state.items():
            view.state[name] = grad - self.alpha * (view.params[name] - view.received[name])
        return {}

    # -- server ------------------------------------------------------------------------------------
    def transform_aggregate(self, old: Params, aggregate: Params, facts: RoundFacts) -> Params:
        if self.alpha == 0:
            return aggregate
        if not self.h:
            self.h.update({n: torch.zeros_like(t) for n, t in old.items()})
        share = self.alpha * len(facts.received) / facts.num_clients
        self.h.update({n: h - share * (aggregate[n] - old[n]) for n, h in self.h.items()})
        return {n: aggregate[n] - self.h[n] / self.alpha for n in aggregate}

    def server_state(self) -> dict[str, Any]:
        return {"h": self.h}

    def describe_server(self) -> list[str]:
        return [f"{'transform':<19}h <- h - alpha * |received|/N * (aggregate - old); new = aggregate - h / alpha, "
                f"alpha = {self.alpha}"]
