"""Model replacement: an attacker boosts its update so that it replaces the global model.

Bagdasaryan, Veit, Hua, Estrin, Shmatikov, "How To Backdoor Federated Learning", AISTATS 2020
(section 4: "model replacement"). The attacker wants the global model to become its own model X,
trained here on flipped labels (y -> C - 1 - y, as `labelflip`: the poisoned objective stands for
the paper's backdoor task). It uploads x + gamma * (X - x) with gamma = n / eta, n the clients
whose updates the server averages and eta the server's step on their mean: averaged with n - 1
honest updates that nearly cancel, the result is about X. FedAvg's eta is 1, so the default gamma
(`attack.scale 0`) is the clients sampled per round; give `attack.scale` for another server step.
With several attackers in a round their boosts add up (the paper assumes one).
"""
from __future__ import annotations

from fedplug.attacks.base import moved, update
from fedplug.attacks.labelflip import LabelFlip
from fedplug.core.params import Params
from fedplug.core.plugin import LocalView
from fedplug.errors import ConfigError
from fedplug.server.sampling import clients_per_round


def boosted(params: Params, received: Params, gamma: float) -> Params:
    """x + gamma * (X - x)."""
    return moved(received, {n: gamma * d for n, d in update(params, received).items()})


class Replacement(LabelFlip):
    method = "ReplacementAttack"

    def setup(self, num_clients: int) -> None:
        super().setup(num_clients)
        if not self.section.scale and not num_clients:
            raise ConfigError("attack.type replacement boosts by n/eta, the clients per round, which a client "
                              "reading its own data file does not know: set attack.scale")
        self.gamma = self.section.scale or float(clients_per_round(self.cfg, num_clients))

    def transform_upload(self, params: Params, view: LocalView) -> Params:
        if view.client not in self.attackers:
            return params
        return boosted(params, view.received, self.gamma)

    def describe_server(self) -> list[str]:
        gamma = f"{self.section.scale:g}" if self.section.scale else "n/eta (clients per round)"
        return [f"{'attack':<19}replacement by {self.who()}: train on labels C - 1 - y, upload x + {gamma} * (y - x)"]
