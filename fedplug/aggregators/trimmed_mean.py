"""Coordinate-wise trimmed mean: Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed
Learning: Towards Optimal Statistical Rates", ICML 2018 (the trimmed-mean-based algorithm).

For every coordinate, the k largest and the k smallest of the n uploads' values are excluded and the
rest averaged, with k = max(f, floor(beta * n)): the paper's beta (`aggregator.excluded_ratio`), and
never fewer than f, since the f Byzantine values may all sit at one end. Needs 2k < n.

Uploads or updates: trimming commutes with subtracting the global model, so the rule reads the
uploads. The values kept are averaged with their clients' aggregation weights (uniform in the paper:
`aggregator.weighting uniform`); a weight cannot pull the mean outside the kept values, which the
trimming bounds by honest ones. With k = 0 nothing is excluded and the result is FedAvg bit for bit.
The extras are reduced over every upload (each client is kept in some coordinates).
"""
from __future__ import annotations

import torch

from fedplug.aggregators.base import RobustRule, coordinatewise, row_weighted_mean, weighted_mean, weights_of
from fedplug.config import ConfigNode
from fedplug.core.messages import RoundFacts, Upload
from fedplug.core.plugin import Params

EPSILON = 1e-9  # floor(beta * n) of a product a rounding error below an integer (0.29 * 100)


def trimmed_coordinates(values: torch.Tensor, weights: torch.Tensor, k: int) -> torch.Tensor:
    """Per coordinate over the leading axis: the weighted mean of the values left after excluding the k
    largest and k smallest (ties in the order given). `weights` broadcasts against `values`."""
    n = values.shape[0]
    ordered, order = torch.sort(values, dim=0, stable=True)
    kept = ordered[k: n - k].double()
    w = torch.gather(weights.expand(values.shape), 0, order[k: n - k])
    return row_weighted_mean(kept, w).to(values.dtype)


class TrimmedMean(RobustRule):
    method = "TrimmedMean"

    def __init__(self, cfg: ConfigNode) -> None:
        self.beta: float = cfg.aggregator.excluded_ratio
        super().__init__(cfg)  # checks the round size, which needs beta
        self.summary = (f"coordinate-wise trimmed mean: k = max(f, floor({self.beta} * n)) values excluded at each "
                        "end, the rest averaged by weight")

    def excluded(self, n: int) -> int:
        return max(self.f, int(self.beta * n + EPSILON))

    def refusal(self, n: int) -> str:
        k = self.excluded(n)
        return f"it excludes k = {k} values at each end of every coordinate, so it needs 2k < n" if 2 * k >= n else ""

    def aggregate(self, uploads: list[Upload], facts: RoundFacts) -> Params:
        k = self.excluded(len(uploads))
        if k == 0:
            return weighted_mean(uploads, facts)  # nothing excluded: the server's own mean
        weights = weights_of(uploads, facts, 2)  # (n, 1): against (n, k) slices of coordinates
        return {name: coordinatewise(uploads, name, lambda values: trimmed_coordinates(values, weights, k))
                for name in uploads[0].params}
