"""DP-FedAvg: McMahan, Ramage, Talwar, Zhang, "Learning Differentially Private Recurrent Language
Models", ICLR 2018 (Algorithm 1, user-level differential privacy; the fixed-denominator estimator).

Each sampled client k clips its update to L2 norm S, on the client before it sends anything:
    Delta_k = upload_k - global,   Delta_k <- Delta_k * min(1, S / ||Delta_k||)
(the norm over every shared parameter together). The server sums the clipped updates of the
clients received, R, adds Gaussian noise of std sigma = z * S per coordinate, and divides by the
fixed denominator m = q * N, the clients planned per round (fedplug samples exactly m):
    global <- global + (sum_{k in R} Delta_k + N(0, sigma^2 I)) / m.
Weights are uniform (w_k = 1, the paper's capped weights with a cap every client reaches), so one
client moves the sum by at most S: the sensitivity the noise is calibrated to.

Choices: the noise's std does not depend on how many clients arrive (the sum's sensitivity is S
whatever |R| is); when fewer than m arrive the update shrinks by |R| / m, as if the missing
clients had sent a zero update. The sum is read from the round's aggregate as |R| * (aggregate -
global): the uniform mean when no aggregator plug-in is on; after an aggregator (a robust mean) its
output is taken as that mean, and the guarantee then holds only if one client moves it by at most
S / |R|. With z = 0 and all m clients received the aggregate passes through unchanged (FedAvg
with uniform weights, bit for bit). The noise comes from its own generator per (seed, round), so
runs repeat bit for bit and a resumed or distributed run draws the same noise with nothing to save;
the adaptive clip (adaptive_clip.py) is server state, checkpointed. Epsilon: dp_accountant.py.
Keys: `dp.clip`, `dp.noise_multiplier`, `dp.delta`, `dp.accountant`, `dp.adaptive_clip.*`.
"""
from __future__ import annotations

from typing import Any

import torch

from fedplug.algorithms.adaptive_clip import AdaptiveClip
from fedplug.algorithms.dp_accountant import epsilon, require_opacus
from fedplug.core.messages import Messages, RoundFacts, Upload, UpSpec, scalar
from fedplug.core.plugin import LocalView, Params, Plugin
from fedplug.errors import ConfigError
from fedplug.seeding import DP_NOISE, generator


def update_norm(params: Params, received: Params) -> torch.Tensor:
    """||upload - global||_2 over every shared parameter together."""
    squares = [torch.linalg.vector_norm(params[n] - received[n], dtype=torch.float64) ** 2 for n in params]
    return torch.stack(squares).sum().sqrt()


def clip_update(params: Params, received: Params, clip: float) -> Params:
    """The upload whose update is clipped to L2 norm `clip`; an update within the bound goes as it is."""
    norm = float(update_norm(params, received))
    if norm <= clip:
        return params
    scale = clip / norm
    return {n: received[n] + (params[n] - received[n]) * scale for n in params}


def noised_mean(old: Params, aggregate: Params, received: int, expected: int, sigma: float,
                noise: torch.Generator) -> Params:
    """old + (sum of clipped updates + N(0, sigma^2)) / expected, the sum being received * (aggregate - old)."""
    new = aggregate if received == expected else {n: old[n] + (received / expected) * (aggregate[n] - old[n])
                                                   for n in aggregate}
    if sigma == 0:
        return new
    # drawn on the CPU generator, then moved: the same noise on every device
    return {n: t + torch.randn(t.shape, generator=noise, dtype=t.dtype).to(t.device) * (sigma / expected)
            for n, t in new.items()}


class DPFedAvg(Plugin):
    name = "dp"
    method = "DP-FedAvg"
    roles = ("weighting",)  # uniform weights: the sensitivity analysis needs every client to count the same
    vectorizes = True  # only pure points

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        s = self.section
        if not s.clip > 0:
            raise ConfigError(f"dp.clip must be > 0 with dp.use (the L2 bound on each client's update), got {s.clip}")
        if s.accountant == "prv" and s.noise_multiplier == 0:
            raise ConfigError("dp.accountant prv cannot account a noise multiplier of 0 (no guarantee at all); "
                              "use dp.accountant rdp, which reports epsilon inf")
        require_opacus()
        self.z: float = s.noise_multiplier
        a = s.adaptive_clip
        self.adaptive = AdaptiveClip(a.target_quantile, a.lr, a.count_noise, self.z) if a.use else None
        self.update_z = self.adaptive.update_z if self.adaptive else self.z
        self.clip = {"value": torch.tensor(float(s.clip), dtype=torch.float64)}  # server state, updated in place

    def messages(self, shared: Params) -> Messages:
        up = {"unclipped": UpSpec(scalar(), "sum")} if self.adaptive else {}
        return Messages(down={"clip": scalar()}, up=up)

    def refuses(self, other: Plugin) -> str:
        ups = other.messages({"<parameter>": torch.zeros(())}).up
        if ups:
            return (f"{other.name} sends {', '.join(sorted(ups))} up besides the model, which DP-FedAvg neither clips "
                    "nor noises: the server would see them in the clear")
        return ""

    # -- client ------------------------------------------------------------------------------------
    def transform_upload(self, params: Params, view: LocalView) -> Params:
        return clip_update(params, view.received, float(view.extras["clip"]))

    def client_upload(self, view: LocalView) -> Params:
        """Adaptive clipping: b_k - 1/2, b_k = 1 when the update was within the round's clip."""
        if not self.adaptive:
            return {}
        within = float(update_norm(view.params, view.received)) <= float(view.extras["clip"])
        return {"unclipped": torch.tensor(float(within) - 0.5, dtype=torch.float64)}

    # -- server ------------------------------------------------------------------------------------
    def broadcast(self, facts: RoundFacts) -> Params:
        return {"clip": self.clip["value"].clone()}

    def client_weight(self, upload: Upload) -> float:
        return 1.0

    def transform_aggregate(self, old: Params, aggregate: Params, facts: RoundFacts) -> Params:
        expected, clip = len(facts.sampled), float(self.clip["value"])
        noise = generator(self.cfg.seed, DP_NOISE, facts.round_num)
        new = noised_mean(old, aggregate, len(facts.received), expected, self.update_z * clip, noise)
        if self.adaptive:  # after the model's noise, from the same generator
            count = float(facts.extras(self.name)["unclipped"])
            following = self.adaptive.next_clip(clip, count, expected, noise)
            self.clip["value"] = torch.tensor(following, dtype=torch.float64)
        return new

    def server_state(self) -> dict[str, Any]:
        return {"clip": self.clip}

    def report(self, facts: RoundFacts) -> dict[str, float]:
        s = self.section
        q = len(facts.sampled) / facts.num_clients
        figures = {"epsilon": epsilon(s.accountant, q, self.z, facts.round_num, s.delta)}
        if self.adaptive:
            figures["dp_clip"] = float(self.clip["value"])  # the clip the next round will use
        return figures

    def describe_server(self) -> list[str]:
        lines = [f"{'weights':<19}uniform (1 per client: DP-FedAvg's sensitivity)",
                 f"{'transform':<19}new = old + (|received| * (aggregate - old) + N(0, (z * clip)^2)) / expected "
                 f"clients, z = {self.update_z:.4g}, clip {self.section.clip} (after the aggregate, before the update)"]
        if self.adaptive:
            lines.append(f"{'transform':<19}{self.adaptive.describe()}")
        return lines
