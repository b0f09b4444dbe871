"""FedBN: Li, Jiang, Zhang, Kamp, Dou, "FedBN: Federated Learning on Non-IID Features via Local
Batch Normalization", ICLR 2021.

Parameters whose names contain one of the patterns in `personalization.local_param` stay on the
client: never uploaded, never overwritten by the download (each client keeps its own copy, which
starts from the initial model). `fedbn.use: true` adds the usual normalization patterns ("bn",
"norm"). Buffers such as BatchNorm running statistics never travel in any case.
"""
from __future__ import annotations

from fedplug.core.plugin import Plugin

NORM_PATTERNS = ("bn", "norm")


class FedBN(Plugin):
    name = "fedbn"
    method = "FedBN"
    vectorizes = True  # local parameters are kept per client by every backend

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        patterns = list(cfg.personalization.local_param)
        if self.section.use:  # also set by `federate.method FedBN` (config/load.py writes fedbn.use)
            patterns += [p for p in NORM_PATTERNS if p not in patterns]
        self.patterns = tuple(patterns)

    def local_parameters(self, names: list[str]) -> set[str]:
        return {n for n in names if any(pattern in n for pattern in self.patterns)}

    def describe_server(self) -> list[str]:
        return [f"local              parameters matching {list(self.patterns)} stay on each client"]
