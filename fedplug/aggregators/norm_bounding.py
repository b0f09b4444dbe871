"""Norm bounding: Sun, Kairouz, Suresh, McMahan, "Can You Really Backdoor Federated Learning?",
arXiv:1911.07963, 2019 (norm thresholding of updates).

Each client's update delta_i = x_i - global is scaled down to the L2 norm M (`aggregator.norm_bound`)
when it is longer, delta_i * min(1, M / ||delta_i||) over all shared parameters together, and the
clipped uploads global + delta_i are averaged with the aggregation weights. It assumes nothing of f
(aggregator.byzantine_node_num is not read): it bounds how far any one client can move the model.

Updates, not uploads: the norm that matters is the distance the client moved the model. An upload
within the bound is used as it came (not rebuilt as global + delta), so that with no upload clipped
the result is FedAvg bit for bit. The extras are reduced over every upload.
"""
from __future__ import annotations

from fedplug.aggregators.base import RobustRule, norm, weighted_mean
from fedplug.config import ConfigNode
from fedplug.core.messages import RoundFacts, Upload
from fedplug.core.plugin import Params


def bounded(params: Params, center: Params, bound: float) -> Params:
    """`params` moved back toward `center` until their distance is at most `bound`."""
    delta = {n: params[n] - center[n] for n in params}
    length = norm(delta)
    if length <= bound:
        return params
    scale = bound / length
    return {n: center[n] + delta[n] * scale for n in params}


class NormBounding(RobustRule):
    method = "NormBounding"
    reads_f = False  # it bounds every update; no count of Byzantine clients

    def __init__(self, cfg: ConfigNode) -> None:
        super().__init__(cfg)
        self.bound: float = self.section.norm_bound
        self.summary = f"norm bounding: each update clipped to L2 norm {self.bound}, then the weighted mean"

    def aggregate(self, uploads: list[Upload], facts: RoundFacts) -> Params:
        clipped = [bounded(u.params, facts.previous_global, self.bound) for u in uploads]
        return weighted_mean(uploads, facts, clipped)
