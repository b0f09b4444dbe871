"""Label flipping: an attacker trains on poisoned labels, y -> C - 1 - y (C classes).

Data poisoning as in Fang, Cao, Jia, Gong, "Local Model Poisoning Attacks to Byzantine-Robust
Federated Learning", USENIX Security 2020 (their label-flipping baseline), and Tolpegin, Truex,
Gursoy, Liu, "Data Poisoning Attacks Against Federated Learning Systems", ESORICS 2020. The
attacker follows the protocol otherwise: only the labels of its local training change (a hook at
the start of the local update replaces the whole training split's labels, so every hook after it
sees the poisoned ones); evaluation keeps the true labels. With a hook, the vectorized backend runs
client routines one client at a time (said at start).
"""
from __future__ import annotations

import torch

from fedplug.attacks.base import Attack
from fedplug.core.context import Context
from fedplug.core.plugin import HookSpec

FLIP_HOOK = "_hook_on_fit_start_attack_flip_labels"


def flipped_labels(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    return num_classes - 1 - y


class LabelFlip(Attack):
    method = "LabelFlipAttack"

    def hooks(self) -> list[HookSpec]:
        return [HookSpec("on_fit_start", self._hook_on_fit_start_attack_flip_labels, FLIP_HOOK,
                         before=("_hook_on_fit_start_init",), writes=("y",))]

    def _hook_on_fit_start_attack_flip_labels(self, ctx: Context) -> None:
        if ctx.client_id in self.attackers:
            ctx.y = flipped_labels(ctx.y, self.cfg.model.out_channels)

    def describe_server(self) -> list[str]:
        return [f"{'attack':<19}labelflip by {self.who()}: local training on labels C - 1 - y"]
