"""fedplug's round loop for the speed benchmarks: the simulation's sample -> train_cohort -> aggregate -> update.

The same calls as fedplug/run/simulation.py's round (minus the run folder and checkpoints), on
data handed in directly, on the config's device: `FedplugRounds` is the round stream (one round per
`next()`, for round_timing.paired), `fedplug_rounds` times a run of them.
"""
from __future__ import annotations

import time
from typing import Callable

import torch

from round_timing import timed

from fedplug.backends import build_backend
from fedplug.config import ConfigNode
from fedplug.core.messages import RoundFacts
from fedplug.data.federated import FederatedData
from fedplug.device import place_data
from fedplug.models import build_model
from fedplug.run.plan import build_plan
from fedplug.seeding import CLIENT_SAMPLING, generator
from fedplug.server.round import RoundAggregation
from fedplug.server.sampling import clients_per_round, sample_clients


def synchronize(device: str | torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously: a timer must not stop before it)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def fedplug_rounds(cfg: ConfigNode, data: FederatedData, rounds: int, evaluate: bool = False,
                   data_factory: Callable[[ConfigNode], FederatedData] | None = None,
                   evaluate_last: bool = False) -> dict:
    """Seconds of each round (training and aggregation; evaluation too when `evaluate`), final parameters.
    `data_factory`: how Ray workers build `data` (federate.backend ray); `evaluate_last`: one evaluation after the
    last round, timed apart ("eval")."""
    stream = FedplugRounds(cfg, data, evaluate, data_factory)
    try:
        result = {**timed(stream, rounds), "vectorized": getattr(stream.backend, "vectorized", False)}
        if evaluate_last:
            started = time.perf_counter()
            for split in ("val", "test"):
                stream.backend.evaluate(result["params"], split)
            synchronize(stream.device)
            result["eval"] = time.perf_counter() - started
        return result
    finally:
        stream.close()


class FedplugRounds:
    """fedplug's rounds on `data`, one per `next()`: (the new global parameters, the samples trained on)."""

    def __init__(self, cfg: ConfigNode, data: FederatedData, evaluate: bool = False,
                 data_factory: Callable[[ConfigNode], FederatedData] | None = None) -> None:
        self.cfg, self.evaluate = cfg, evaluate
        self.plan = build_plan(cfg)
        self.device, self.data = place_data(cfg, data)  # the config's device (auto: CPU on a machine without a GPU)
        self.backend = build_backend(cfg, build_model(cfg, self.data.input_shape, self.plan).to(self.device), self.plan,
                                     self.data, data_factory)
        self.global_params = {n: t.clone() for n, t in self.backend.shared_parameters().items()}
        self.messages = self.plan.messages(self.global_params)
        self.per_round = clients_per_round(cfg, self.data.num_clients)
        self.round_num = 0

    def __iter__(self) -> FedplugRounds:
        return self

    def __next__(self) -> tuple[dict, int]:
        self.round_num += 1
        plan, num_clients = self.plan, self.data.num_clients
        sampled = sample_clients(num_clients, self.per_round, generator(self.cfg.seed, CLIENT_SAMPLING, self.round_num))
        facts = RoundFacts(self.round_num, num_clients, tuple(sampled), self.global_params)
        aggregation = RoundAggregation(plan, facts, self.messages)
        samples = 0
        for upload in self.backend.train_cohort(sampled, self.round_num, self.global_params,
                                                plan.broadcast(facts, self.messages)):
            aggregation.add(upload)
            samples += upload.samples
        self.global_params = plan.update_global(self.global_params, aggregation.aggregate(), facts)
        if self.evaluate:
            for split in ("val", "test"):
                self.backend.evaluate(self.global_params, split)
        synchronize(self.device)
        return self.global_params, samples

    def close(self) -> None:
        if hasattr(self.backend, "close"):
            self.backend.close()
