"""What every attack shares: the fixed, seeded set of attacking clients, and updates as differences.

The attackers are drawn once per run (a fixed set of malicious clients, as the papers assume),
from the run's seed alone: round(fraction * N) distinct ids from a permutation of 0..N-1, or the
ids in `attack.client_ids`. So every process of a distributed run, and a resumed run, agrees on
them without being told. An "update" is what a client moved the model by: y - x, with x the
global model it received and y its trained model.
"""
from __future__ import annotations

import math

import torch

from fedplug.config import ConfigNode
from fedplug.core.messages import Upload
from fedplug.core.params import Params
from fedplug.core.plugin import Plugin
from fedplug.errors import ConfigError
from fedplug.seeding import ATTACKERS, generator
from fedplug.server.sampling import clients_from_config


def choose_attackers(seed: int, num_clients: int, fraction: float) -> frozenset[int]:
    """round(fraction * N) clients (halves up), the first of a permutation drawn from the run's seed."""
    count = math.floor(fraction * num_clients + 0.5)
    order = torch.randperm(num_clients, generator=generator(seed, ATTACKERS))
    return frozenset(order[:count].tolist())


def update(params: Params, received: Params) -> Params:
    return {n: params[n] - received[n] for n in params}


def moved(received: Params, step: Params) -> Params:
    return {n: received[n] + step[n] for n in step}


def replaced(uploads: list[Upload], attackers: frozenset[int], global_params: Params, lie: Params) -> list[Upload]:
    """The uploads with every attacker's parameters replaced by x + lie (order kept)."""
    params = moved(global_params, lie)
    return [Upload(u.client, dict(params), u.metrics, u.extras) if u.client in attackers else u for u in uploads]


class Attack(Plugin):
    """Base of the attacks: `attack.type` picks the subclass (fedplug/attacks/schemas.py)."""

    name = "attack"

    def __init__(self, cfg: ConfigNode) -> None:
        super().__init__(cfg)
        a = self.section
        if a.client_ids and a.fraction:
            raise ConfigError("attack.fraction and attack.client_ids both name the attackers: give one of them")
        if not a.client_ids and not a.fraction:
            raise ConfigError(f"attack.type {a.type} has no attackers: set attack.fraction (in (0, 1)) or "
                              "attack.client_ids")
        self.attackers: frozenset[int] = frozenset()  # set by setup(), once N is known
        if clients_from_config(cfg):
            self.setup(clients_from_config(cfg))  # the config alone says N: refuse bad input before any work

    def setup(self, num_clients: int) -> None:
        a = self.section
        if a.client_ids:
            outside = [c for c in a.client_ids if num_clients and c >= num_clients]
            if outside:
                raise ConfigError(f"attack.client_ids: client {outside[0]} is not one of the federation's "
                                  f"{num_clients} clients (0..{num_clients - 1})")
            self.attackers = frozenset(a.client_ids)
            return
        if not num_clients:
            raise ConfigError("attack.fraction needs the number of clients, which a client reading its own data "
                              "file (distribute.data_path) does not know: name the attackers with attack.client_ids")
        self.attackers = choose_attackers(self.cfg.seed, num_clients, a.fraction)
        if not self.attackers:
            raise ConfigError(f"attack.fraction {a.fraction} of {num_clients} clients is no attacker: "
                              "round(fraction * N) must be at least 1")

    def who(self) -> str:
        a = self.section
        return f"clients {a.client_ids}" if a.client_ids else f"a seeded {a.fraction:g} of the clients"
