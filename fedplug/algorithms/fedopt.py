"""FedOpt: Reddi, Charles, Zaheer, Garrett, Rush, Konečný, Kumar, McMahan, "Adaptive Federated
Optimization", ICLR 2021 (Algorithm 2: FedAdagrad, FedYogi, FedAdam; FedAvgM for SGD with momentum).

The server treats delta = average - global as a pseudo-gradient step and applies a persistent
server optimizer to it:
    SGD:     m = momentum * m + delta;                 global += lr * m
    Adam:    m = b1 * m + (1 - b1) * delta;  v = b2 * v + (1 - b2) * delta^2
    Adagrad: m as Adam;                      v = v + delta^2
    Yogi:    m as Adam;                      v = v - (1 - b2) * delta^2 * sign(v - delta^2)
    adaptive ones: global += lr * m / (sqrt(v) + eps),  v starts at eps^2 (the paper's tau)
The adaptive forms are the paper's (no bias correction, tau outside the root), not torch.optim's.
SGD with lr 1 and no momentum gives global = average: FedAvg.
Keys: `fedopt.optimizer.type`, `.lr`, `.momentum`, `.betas`, `.eps`.
"""
from __future__ import annotations

from typing import Any

import torch

from fedplug.core.messages import RoundFacts
from fedplug.core.plugin import Params, Plugin


class FedOpt(Plugin):
    name = "fedopt"
    method = "FedOpt"
    roles = ("server_update",)
    vectorizes = True  # server side only

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.opt = self.section.optimizer
        self.first_moment: Params = {}  # persistent across rounds
        self.second_moment: Params = {}

    def server_update(self, old: Params, aggregate: Params, facts: RoundFacts) -> Params:
        opt, new = self.opt, {}
        b1, b2 = opt.betas
        for name, current in old.items():
            delta = aggregate[name] - current
            if opt.type == "SGD":
                if opt.momentum > 0:
                    m = self.first_moment.get(name)
                    delta = delta if m is None else opt.momentum * m + delta
                    self.first_moment[name] = delta
                # = current + lr * step, written from the aggregate so that lr 1 without momentum
                # returns the aggregate bit for bit (FedAvg), not current + (aggregate - current).
                new[name] = aggregate[name] + (opt.lr * delta - (aggregate[name] - current))
                continue
            m = self.first_moment.get(name, torch.zeros_like(current))
            v = self.second_moment.get(name, torch.full_like(current, opt.eps ** 2))
            m = b1 * m + (1 - b1) * delta
            squared = delta * delta
            if opt.type == "Adam":
                v = b2 * v + (1 - b2) * squared
            elif opt.type == "Adagrad":
                v = v + squared
            else:  # Yogi
                v = v - (1 - b2) * squared * torch.sign(v - squared)
            self.first_moment[name], self.second_moment[name] = m, v
            new[name] = current + opt.lr * m / (v.sqrt() + opt.eps)
        return new

    def server_state(self) -> dict[str, Any]:
        return {"first_moment": self.first_moment, "second_moment": self.second_moment}

    def describe_server(self) -> list[str]:
        o = self.opt
        extra = f", momentum {o.momentum}" if o.type == "SGD" else f", betas {o.betas}, eps {o.eps}"
        return [f"update             global <- {o.type}(lr {o.lr}{extra}) step on delta = aggregate - global"]
