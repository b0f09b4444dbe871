"""What the robust rules share: the config they read, the start-up check of the round size, and
the tensor helpers (pairwise distances, norms, the weighted mean).

Weights: where a rule averages (Multi-Krum's selection, the values a trimmed mean or Bulyan keeps,
the clipped updates of norm bounding and centered clipping), it averages with the round's
aggregation weights (`aggregator.weighting`, or a weighting plug-in such as FedNova), so that a rule
that excludes nothing is FedAvg; the papers' uniform mean is `aggregator.weighting uniform`. Order
statistics (the median, the Krum scores, what is trimmed) count each upload once: a client's own
sample count, which it reports, cannot buy it a larger share there.

Extras (tensors plug-ins send up, e.g. SCAFFOLD's delta c_i, FedNova's normalizers) keep their
declared reduction. A rule that selects uploads (Krum, Multi-Krum, Bulyan) sets `facts.selected`,
and the extras are reduced over the selected clients only; the coordinate-wise and clipping rules
keep no client out, so the extras are reduced over every upload.
"""
from __future__ import annotations

from typing import Callable, ClassVar

import torch

from fedplug.config import ConfigNode
from fedplug.core.messages import RoundFacts, Upload
from fedplug.core.plugin import Params, Plugin
from fedplug.errors import ConfigError
from fedplug.server.aggregation import WeightedMean
from fedplug.server.sampling import clients_from_config, clients_per_round


class RobustRule(Plugin):
    """Base of the rules; a rule gives `method`, `refusal(n)`, `aggregate` and its `describe_server` text."""

    roles = ("aggregator",)
    vectorizes = True  # server side only: cohorts train as with the mean
    summary: ClassVar[str] = ""  # what the rule does, for `fedplug plan`
    reads_f: ClassVar[bool] = True  # whether the rule uses aggregator.byzantine_node_num (the plan then shows f)

    def __init__(self, cfg: ConfigNode) -> None:
        self.cfg, self.section = cfg, cfg.aggregator  # the rule's keys live in the core section `aggregator`
        self.name = cfg.aggregator.rule  # the plug-in's name is the rule's: `fedplug plan` shows who set it
        self.f: int = cfg.aggregator.byzantine_node_num
        known = clients_from_config(cfg)
        if known:
            self.setup(known)  # refused before any work when the config tells N

    def refusal(self, n: int) -> str:
        """Why the rule cannot aggregate n uploads ('' when it can)."""
        return ""

    def setup(self, num_clients: int) -> None:
        """Refuse a round size the rule cannot serve: the sampled count, or in distributed mode the fewest
        uploads a round may aggregate (federate.min_received_num), when that is fewer."""
        if num_clients <= 0:  # a distributed client process: the server checks
            return
        fed = self.cfg.federate
        n = clients_per_round(self.cfg, num_clients)
        where = f"{n} clients sampled per round"
        if fed.mode == "distributed" and fed.min_received_num < n:
            n, where = fed.min_received_num, (f"a distributed round of federate.min_received_num {fed.min_received_num} "
                                              "uploads")
        why = self.refusal(n)
        if why:
            raise ConfigError(f"aggregator.rule {self.name} cannot aggregate {where}: {why} "
                              f"(f = aggregator.byzantine_node_num {self.f})")

    def describe_server(self) -> list[str]:
        f = f", f = {self.f}" if self.reads_f else ""
        return [f"{'aggregate':<19}{self.summary} (aggregator.rule {self.name}{f}; uploads held until the round ends)"]


def weighted_mean(uploads: list[Upload], facts: RoundFacts, params: list[Params] | None = None) -> Params:
    """The weighted mean of the uploads' parameters (or of `params`, one per upload) in the order given: the
    server's own streaming mean, so that selecting every upload is FedAvg bit for bit."""
    mean = WeightedMean(facts.previous_global)
    for i, upload in enumerate(uploads):
        mean.add(upload.params if params is None else params[i], facts.weights[upload.client])
    return mean.result()


def stacked(uploads: list[Upload], name: str) -> torch.Tensor:
    """One parameter of every upload, on a leading client axis."""
    return torch.stack([u.params[name] for u in uploads])


COORDINATES_AT_ONCE = 1 << 18  # a sort of n x 262k values: its int64 order and float64 copies stay tens of MB


def coordinatewise(uploads: list[Upload], name: str, rule: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """`rule` (values (n, k) -> (k,), each coordinate on its own) over one parameter, a slice of coordinates at a
    time: the whole parameter stacked n times with its sort order would cost n x 12 bytes per coordinate (770 MB
    for ConvNet2's first dense layer at n = 10) on top of the uploads."""
    first = uploads[0].params[name]
    flat = [u.params[name].reshape(-1) for u in uploads]
    out = torch.empty(first.numel(), dtype=first.dtype, device=first.device)
    for start in range(0, first.numel(), COORDINATES_AT_ONCE):
        part = slice(start, start + COORDINATES_AT_ONCE)
        out[part] = rule(torch.stack([f[part] for f in flat]))
    return out.reshape(first.shape)


def row_weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_i w_i v_i / sum_i w_i over the leading axis of (r, k) tensors, added one row after the other: the same
    bits for a coordinate however many coordinates are taken at once (a reduction over dim 0 is not)."""
    total, weight = values[0] * weights[0], weights[0].clone()
    for i in range(1, values.shape[0]):
        total += values[i] * weights[i]
        weight += weights[i]
    return total / weight


def squared_distances(uploads: list[Upload]) -> torch.Tensor:
    """(n, n) squared L2 distances between the uploads over all shared parameters, summed in float64. Distances
    of uploads equal those of updates (upload - global): the global model cancels."""
    n = len(uploads)
    total = torch.zeros(n, n, dtype=torch.float64, device=next(iter(uploads[0].params.values())).device)
    for name in uploads[0].params:
        flat = stacked(uploads, name).reshape(n, -1)
        # Each pair's differences directly, not through a Gram matrix: no cancellation, an exact 0 for equal
        # uploads and an exactly symmetric matrix, so equal scores tie exactly.
        total += torch.cdist(flat, flat, compute_mode="donot_use_mm_for_euclid_dist").double() ** 2
    return total


def norm(tensors: Params) -> float:
    """L2 norm over every tensor of a dict, in float64."""
    return float(torch.sqrt(sum((t.double() ** 2).sum() for t in tensors.values())))


def weights_of(uploads: list[Upload], facts: RoundFacts, dims: int) -> torch.Tensor:
    """The uploads' aggregation weights as a (n, 1, ..., 1) tensor of `dims` dimensions on the uploads' device:
    it broadcasts against a stacked parameter."""
    device = next(iter(uploads[0].params.values())).device
    w = torch.tensor([facts.weights[u.client] for u in uploads], dtype=torch.float64, device=device)
    return w.reshape((len(uploads),) + (1,) * (dims - 1))
