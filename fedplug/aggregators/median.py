"""Coordinate-wise median: Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed Learning:
Towards Optimal Statistical Rates", ICML 2018 (the median-based algorithm).

Every coordinate of the aggregate is the median of that coordinate over the n uploads (an even n:
the mean of the two middle values). Sound while the Byzantine uploads are a minority: n > 2f.

Uploads or updates: the median commutes with subtracting the global model, so the rule reads the
uploads. It uses no weights (each upload counts once, as in the paper), hence a weighting plug-in
(FedNova), whose normalized weights it would ignore, is refused with it. The extras are reduced over
every upload.
"""
from __future__ import annotations

import torch

from fedplug.aggregators.base import RobustRule, coordinatewise
from fedplug.config import ConfigNode
from fedplug.core.messages import RoundFacts, Upload
from fedplug.core.plugin import Params
from fedplug.errors import ConfigError


def coordinate_median(values: torch.Tensor) -> torch.Tensor:
    """The median over the leading axis; an even count: the mean of the two middle values."""
    n = values.shape[0]
    ordered = torch.sort(values, dim=0).values
    if n % 2:
        return ordered[n // 2]
    return (ordered[n // 2 - 1] + ordered[n // 2]) / 2


class Median(RobustRule):
    method = "Median"
    summary = "coordinate-wise median of the uploads (unweighted)"

    def __init__(self, cfg: ConfigNode) -> None:
        if cfg.fednova.use:  # also set by `federate.method FedNova` (config/load.py)
            raise ConfigError("aggregator.rule median and fednova cannot be combined: the median uses no weights, so "
                              "FedNova's normalized weights would be ignored; use trimmedmean or multikrum, which "
                              "average with them")
        super().__init__(cfg)

    def refusal(self, n: int) -> str:
        return f"the median needs a majority of honest uploads, n > 2f = {2 * self.f}" if n <= 2 * self.f else ""

    def aggregate(self, uploads: list[Upload], facts: RoundFacts) -> Params:
        return {name: coordinatewise(uploads, name, coordinate_median) for name in uploads[0].params}
