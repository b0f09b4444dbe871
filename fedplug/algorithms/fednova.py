"""FedNova: Wang, Liu, Liang, Joshi, Poor, "Tackling the Objective Inconsistency Problem in
Heterogeneous Federated Optimization", NeurIPS 2020.

After tau_i local steps a client's change is x - y_i = lr * sum_k a_ik g_ik. Clients that take more
steps (or use momentum) pull the global model toward their own optimum; FedNova normalizes each
change by ||a_i||_1 and rescales by the effective step count:

    x <- x - tau_eff * sum_i p_i (x - y_i) / ||a_i||_1,   tau_eff = sum_i p_i ||a_i||_1,  p_i = n_i / sum_j n_j.

||a_i||_1 is tau_i for plain SGD; with momentum rho and FedProx's mu the client computes it from its
optimizer's linear recursion (`normalizer`), which gives the paper's closed forms
[tau - rho (1 - rho^tau) / (1 - rho)] / (1 - rho) and [1 - (1 - lr mu)^tau] / (lr mu).

Written through the contract as a weighting and a server step: weight w_i = n_i * a_ref / ||a_i||_1
(a_ref: the normalizer of the configured step count), M = the weighted mean of the y_i, then
x <- x + s (M - x) with s = (sum n_i ||a_i||)(sum n_i / ||a_i||) / (sum n_i)^2. When every client's
normalizer is the same, w_i = n_i and s = 1 exactly: FedAvg bit for bit.

Choices: n_i is the number of samples the client processed (fedplug's aggregation weight; the
paper's data size n_i up to a common factor when local work is counted in epochs). Gradient
clipping and weight decay are not part of the normalizer (the paper's analysis has neither).
"""
from __future__ import annotations

import torch

from fedplug.core.messages import Messages, RoundFacts, Upload, UpSpec, scalar
from fedplug.core.plugin import LocalView, Params, Plugin

# Each client's normalizer and the sums the server step needs, all scalars sent up.
UP = {"norm": "max", "norm_min": "min", "samples_x_norm": "sum", "samples_over_norm": "sum", "samples": "sum"}


def normalizer(steps: int, lr: float, momentum: float = 0.0, mu: float = 0.0) -> float:
    """||a||_1 of `steps` SGD steps (torch.optim.SGD momentum, FedProx's mu): the sum over steps of the
    response, at the end, of a unit gradient taken at that step."""
    total, offset, buffer = 0.0, -lr, 1.0  # right after the unit gradient: buffer 1, model moved by -lr
    for _ in range(steps):
        total += -offset / lr
        buffer = momentum * buffer + mu * offset
        offset = offset - lr * buffer
    return total


class FedNova(Plugin):
    name = "fednova"
    method = "FedNova"
    roles = ("weighting",)
    vectorizes = True  # only pure points

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.momentum: float = cfg.train.optimizer.momentum
        # fedprox.use is also set by `federate.method FedProx` (config/load.py)
        self.mu: float = cfg.fedprox.mu if cfg.fedprox.use else 0.0
        self.reference = self.norm(cfg.train.local_update_steps, cfg.train.optimizer.lr)

    def norm(self, steps: int, lr: float) -> float:
        return normalizer(int(steps), lr, self.momentum, self.mu)

    def messages(self, shared: Params) -> Messages:
        return Messages(up={name: UpSpec(scalar(), reduction) for name, reduction in UP.items()})

    def client_upload(self, view: LocalView) -> Params:
        a, n = self.norm(view.metrics["train_steps"], view.lr), float(view.metrics["train_total"])
        values = {"norm": a, "norm_min": a, "samples_x_norm": n * a, "samples_over_norm": n / a, "samples": n}
        return {name: torch.tensor(value, dtype=torch.float64) for name, value in values.items()}

    # -- server ------------------------------------------------------------------------------------
    def client_weight(self, upload: Upload) -> float:
        return upload.samples * (self.reference / float(upload.extras[self.name]["norm"]))

    def transform_aggregate(self, old: Params, aggregate: Params, facts: RoundFacts) -> Params:
        sums = facts.extras(self.name)
        if bool(sums["norm"] == sums["norm_min"]):  # every normalizer equal: s = 1 (Cauchy-Schwarz), exactly
            return aggregate
        s = float(sums["samples_x_norm"] * sums["samples_over_norm"] / sums["samples"] ** 2)
        return {n: old[n] + s * (aggregate[n] - old[n]) for n in aggregate}

    def describe_server(self) -> list[str]:
        return [f"{'weights':<19}n_i * a_ref / ||a_i||_1 (normalized updates; momentum {self.momentum}, mu {self.mu})",
                f"{'transform':<19}new = old + s * (aggregate - old), s = tau_eff * sum(n_i / ||a_i||_1) / sum(n_i)"]
