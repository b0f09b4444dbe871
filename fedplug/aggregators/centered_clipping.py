"""Centered clipping: Karimireddy, He, Jaggi, "Learning from History for Byzantine Robust
Optimization", ICML 2021 (centered clipping, CC).

The server keeps v, the previous round's aggregated update (zero at the start), and clips every
client's update delta_i = x_i - global around it, L times (`aggregator.clip_iters`):
    v <- v + sum_i w_i * (delta_i - v) * min(1, tau / ||delta_i - v||) / sum_i w_i
with tau = `aggregator.clip_tau`; the aggregate is global + v, and v is kept for the next round (in
the checkpoint: `server_state`). In the paper the workers send momenta and v is the previous
aggregate of them; here the clients' updates play the momenta's part and the round's v starts from
the last one, so an update far from the history moves the model by at most tau. Weights: the
aggregation weights (the paper's 1/n under `aggregator.weighting uniform`). Sound while the honest
are a majority, n > 2f (the paper's analysis wants a fraction of Byzantine workers well below 1/2).

Updates, not uploads: clipping is about how far from the center each client moved the model. The
extras are reduced over every upload.
"""
from __future__ import annotations

from typing import Any

import torch

from fedplug.aggregators.base import RobustRule, norm
from fedplug.config import ConfigNode
from fedplug.core.messages import RoundFacts, Upload
from fedplug.core.plugin import Params


def clip_step(deltas: list[Params], weights: list[float], center: Params, tau: float) -> Params:
    """One iteration: the center moved by the weighted mean of the updates' offsets from it, each clipped to tau."""
    step = {n: torch.zeros_like(t) for n, t in center.items()}
    for delta, weight in zip(deltas, weights):
        offset = {n: delta[n] - center[n] for n in center}
        length = norm(offset)
        scale = min(1.0, tau / length) if length > 0 else 1.0
        for n, total in step.items():
            total.add_(offset[n], alpha=weight * scale)
    total_weight = sum(weights)
    return {n: center[n] + step[n] / total_weight for n in center}


class CenteredClipping(RobustRule):
    method = "CenteredClip"

    def __init__(self, cfg: ConfigNode) -> None:
        super().__init__(cfg)
        self.tau: float = self.section.clip_tau
        self.iterations: int = self.section.clip_iters
        self.center: Params = {}  # v, the last aggregated update: filled at the first round, then updated in place
        self.summary = (f"centered clipping: {self.iterations} x v <- v + weighted mean of clip_{self.tau}(update - v) "
                        "from the last round's v; global + v")

    def refusal(self, n: int) -> str:
        return f"centered clipping needs a majority of honest uploads, n > 2f = {2 * self.f}" if n <= 2 * self.f else ""

    def aggregate(self, uploads: list[Upload], facts: RoundFacts) -> Params:
        old = facts.previous_global
        if not self.center:
            self.center.update({n: torch.zeros_like(t) for n, t in old.items()})
        deltas = [{n: u.params[n] - old[n] for n in old} for u in uploads]
        weights = [facts.weights[u.client] for u in uploads]
        v = dict(self.center)
        for _ in range(self.iterations):
            v = clip_step(deltas, weights, v, self.tau)
        self.center.update(v)
        return {n: old[n] + v[n] for n in old}

    def server_state(self) -> dict[str, Any]:
        return {"center": self.center}
