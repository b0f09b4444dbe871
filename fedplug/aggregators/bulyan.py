"""Bulyan: El Mhamdi, Guerraoui, Rouault, "The Hidden Vulnerability of Distributed Learning in
Byzantium", ICML 2018 (Bulyan over Krum).

Of n uploads with f possibly Byzantine (n >= 4f + 3):
1. selection: theta = n - 2f times, Krum picks the best-scored upload of those not yet picked
   (scores over the remaining r uploads, with the r - f - 2 closest neighbours, at least 1);
2. aggregation: for every coordinate, the beta = theta - 2f values of the selected uploads closest
   to their median are averaged (the paper's uniform mean under `aggregator.weighting uniform`; else
   by the aggregation weights).
Ties (equal scores, equal distances to the median) go to the upload received, or selected, first.

Uploads or updates: distances and distances to the median are the same for the uploads and the
updates (upload - global), so the rule reads the uploads. The extras are reduced over the selected
clients.
"""
from __future__ import annotations

import torch

from fedplug.aggregators.base import RobustRule, coordinatewise, row_weighted_mean, squared_distances, weights_of
from fedplug.aggregators.krum import krum_scores, lowest
from fedplug.aggregators.median import coordinate_median
from fedplug.core.messages import RoundFacts, Upload
from fedplug.core.plugin import Params


def bulyan_selection(distances: torch.Tensor, f: int) -> list[int]:
    """Positions of the theta = n - 2f uploads Krum picks one after the other, in the order picked."""
    remaining = list(range(distances.shape[0]))
    picked = []
    for _ in range(distances.shape[0] - 2 * f):
        sub = distances[remaining][:, remaining]
        best = lowest(krum_scores(sub, max(len(remaining) - f - 2, 1)), 1)[0]
        picked.append(remaining.pop(best))
    return picked


def closest_to_median(values: torch.Tensor, weights: torch.Tensor, beta: int) -> torch.Tensor:
    """Per coordinate over the leading axis: the weighted mean of the beta values closest to the median."""
    gap = (values - coordinate_median(values)).abs()
    order = torch.sort(gap, dim=0, stable=True).indices[:beta]
    kept = torch.gather(values, 0, order).double()
    w = torch.gather(weights.expand(values.shape), 0, order)
    return row_weighted_mean(kept, w).to(values.dtype)


class Bulyan(RobustRule):
    method = "Bulyan"
    summary = "Bulyan: Krum picks n - 2f uploads one by one; per coordinate, the mean of the n - 4f closest to their median"

    def refusal(self, n: int) -> str:
        return f"Bulyan needs n >= 4f + 3 = {4 * self.f + 3} uploads" if n < 4 * self.f + 3 else ""

    def aggregate(self, uploads: list[Upload], facts: RoundFacts) -> Params:
        chosen = [uploads[i] for i in bulyan_selection(squared_distances(uploads), self.f)]
        facts.selected = [u.client for u in chosen]
        beta = len(chosen) - 2 * self.f
        weights = weights_of(chosen, facts, 2)  # (n, 1): against (n, k) slices of coordinates
        return {name: coordinatewise(chosen, name, lambda values: closest_to_median(values, weights, beta))
                for name in uploads[0].params}
