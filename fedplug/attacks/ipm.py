"""Inner-product manipulation (IPM): colluding attackers upload -epsilon times the honest mean.

Xie, Koyejo, Gupta, "Fall of Empires: Breaking Byzantine-tolerant SGD by Inner Product
Manipulation", UAI 2020. Every attacker of the round uploads x - epsilon * mu, with mu the mean of
the round's honest updates y - x: the aggregate's inner product with the true update turns
negative once the attackers carry enough weight, and a small epsilon keeps the lie close to the
honest updates, where Krum and the median pick it.

Colluding attackers read the round's honest uploads: in the simulation through `transform_uploads`
(see alie.py); a distributed run refuses it.
"""
from __future__ import annotations

import torch

from fedplug.attacks.base import Attack, replaced, update
from fedplug.core.messages import RoundFacts, Upload
from fedplug.core.params import Params


def ipm_update(honest: list[Params], epsilon: float) -> Params:
    """-epsilon * mean of the honest updates."""
    return {name: -epsilon * torch.stack([u[name] for u in honest]).mean(0) for name in honest[0]}


class InnerProductManipulation(Attack):
    method = "IPMAttack"

    def transform_uploads(self, uploads: list[Upload], facts: RoundFacts) -> list[Upload]:
        honest = [update(u.params, facts.previous_global) for u in uploads if u.client not in self.attackers]
        if len(honest) == len(uploads) or not honest:
            return uploads  # no attacker in the round, or nothing honest to imitate
        return replaced(uploads, self.attackers, facts.previous_global, ipm_update(honest, self.section.ipm_epsilon))

    def describe_server(self) -> list[str]:
        eps = self.section.ipm_epsilon
        return [f"{'attack':<19}ipm by {self.who()}: upload x - {eps:g} * mean of the round's honest updates"]
