"""A little is enough (ALIE): colluding attackers upload the honest updates' mean minus z stds.

Baruch, Baruch, Goldberg, "A Little Is Enough: Circumventing Defenses For Distributed Learning",
NeurIPS 2019. Every attacker of the round uploads x + (mu - z * sigma), with mu and sigma the
coordinate-wise mean and (population) standard deviation of the round's honest updates y - x. A
small z keeps the lie inside the spread of honest updates, where median- and distance-based
defences accept it, while it pulls every coordinate the same way. The default z is the paper's
z_max: with n uploads in the round and f attackers among them, s = floor(n/2 + 1) - f honest
workers must look further from the mean than the lie, and z = Phi^-1((n - s) / n).

Colluding attackers read the honest uploads of the round: in the simulation through the server-side
point `transform_uploads`, which sees every upload before the aggregation. A distributed run refuses
it (no process there sees other clients' uploads).
"""
from __future__ import annotations

import math
from statistics import NormalDist

import torch

from fedplug.attacks.base import Attack, replaced, update
from fedplug.core.messages import RoundFacts, Upload
from fedplug.core.params import Params


def paper_z(n: int, f: int) -> float:
    """z_max of the paper for n workers of which f are attackers (s at least 1: attackers in the majority)."""
    s = max(math.floor(n / 2 + 1) - f, 1)
    return NormalDist().inv_cdf((n - s) / n)


def alie_update(honest: list[Params], z: float) -> Params:
    """mu - z * sigma, coordinate-wise over the honest updates (population std)."""
    out = {}
    for name in honest[0]:
        stacked = torch.stack([u[name] for u in honest])
        out[name] = stacked.mean(0) - z * stacked.std(0, unbiased=False)
    return out


class ALittleIsEnough(Attack):
    method = "ALIEAttack"

    def transform_uploads(self, uploads: list[Upload], facts: RoundFacts) -> list[Upload]:
        f = sum(u.client in self.attackers for u in uploads)
        honest = [update(u.params, facts.previous_global) for u in uploads if u.client not in self.attackers]
        if not f or not honest:
            return uploads  # no attacker in the round, or nothing honest to imitate
        z = self.section.alie_z or paper_z(len(uploads), f)
        return replaced(uploads, self.attackers, facts.previous_global, alie_update(honest, z))

    def describe_server(self) -> list[str]:
        z = f"{self.section.alie_z:g}" if self.section.alie_z else "z_max(n, f)"
        return [f"{'attack':<19}alie by {self.who()}: upload x + mean - {z} * std of the round's honest updates"]
