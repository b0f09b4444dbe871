"""Krum and Multi-Krum: Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine Learning with Adversaries:
Byzantine Tolerant Gradient Descent", NeurIPS 2017.

Of n uploads, f of them possibly Byzantine, each upload i gets the score
    s(i) = sum of ||x_i - x_j||^2 over the n - f - 2 uploads j != i closest to it,
and Krum keeps the upload with the lowest score; Multi-Krum keeps the m lowest and averages them.
Sound when n > 2f + 2 (so every honest upload has more honest neighbours than Byzantine ones);
Multi-Krum also needs m <= n - f (Blanchard et al. average at most the n - f honest).

Uploads or updates: the scores use distances, which are the same for the uploads x_i and the updates
x_i - global (the global model cancels), so the rule reads the uploads and averages them. Ties of
scores go to the upload received first. The kept uploads are averaged with the aggregation weights
in the order received: m = n is FedAvg bit for bit. The extras are reduced over the kept clients.
Keys: `aggregator.byzantine_node_num` (f), `aggregator.krum_agg_num` (m; 0: 1 for krum, n - f for
multikrum).
"""
from __future__ import annotations

import torch

from fedplug.aggregators.base import RobustRule, squared_distances, weighted_mean
from fedplug.config import ConfigNode
from fedplug.core.messages import RoundFacts, Upload
from fedplug.core.plugin import Params


def krum_scores(distances: torch.Tensor, neighbours: int) -> torch.Tensor:
    """Each row's sum of its `neighbours` smallest squared distances to the other rows (Krum: n - f - 2)."""
    n = distances.shape[0]
    others = distances.masked_fill(torch.eye(n, dtype=torch.bool, device=distances.device), float("inf"))  # never one's own neighbour
    closest = torch.sort(others, dim=1).values[:, :neighbours]
    return closest.sum(1)


def lowest(scores: torch.Tensor, m: int) -> list[int]:
    """The positions of the m lowest scores; a tie goes to the lower position (the earlier upload)."""
    return sorted(torch.sort(scores, stable=True).indices[:m].tolist())


class Krum(RobustRule):
    def __init__(self, cfg: ConfigNode) -> None:
        self.multi = cfg.aggregator.rule == "multikrum"
        self.m: int = cfg.aggregator.krum_agg_num
        averages = self.multi or self.m > 1  # krum with m > 1 is Multi-Krum, as FederatedScope's krum.agg_num
        self.method = "Multi-Krum" if averages else "Krum"
        self.summary = (f"Multi-Krum: the mean of the m = {self.m or 'n - f'} uploads with the lowest Krum scores"
                        if averages else "Krum: the upload with the lowest Krum score")
        super().__init__(cfg)

    def kept(self, n: int) -> int:
        return self.m or (n - self.f if self.multi else 1)

    def refusal(self, n: int) -> str:
        if n <= 2 * self.f + 2:
            return f"Krum needs more than 2f + 2 = {2 * self.f + 2} uploads"
        if self.kept(n) > n - self.f:
            return (f"Multi-Krum averages at most n - f = {n - self.f} uploads, but aggregator.krum_agg_num is "
                    f"{self.m}")
        return ""

    def aggregate(self, uploads: list[Upload], facts: RoundFacts) -> Params:
        scores = krum_scores(squared_distances(uploads), len(uploads) - self.f - 2)
        chosen = [uploads[i] for i in lowest(scores, self.kept(len(uploads)))]
        facts.selected = [u.client for u in chosen]
        return weighted_mean(chosen, facts)
