"""fedplug's round loop for the speed benchmarks: the simulation's sample -> train_cohort -> aggregate -> update.

The same calls as fedplug/run/simulation.py's round (minus the run folder and checkpoints), on
data handed in directly, timed per round, on the config's device.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import torch

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
    plan = build_plan(cfg)
    device, data = place_data(cfg, data)  # the config's device (auto: CPU on a machine without a GPU)
    backend = build_backend(cfg, build_model(cfg, data.input_shape, plan).to(device), plan, data, data_factory)
    try:
        result = _rounds(cfg, plan, backend, data, rounds, evaluate, device)
        if evaluate_last:
            started = time.perf_counter()
            for split in ("val", "test"):
                backend.evaluate(result["params"], split)
            synchronize(device)
            result["eval"] = time.perf_counter() - started
        return result
    finally:
        if hasattr(backend, "close"):
            backend.close()


def _rounds(cfg: ConfigNode, plan: Any, backend: Any, data: FederatedData, rounds: int, evaluate: bool,
            device: torch.device) -> dict:
    global_params = {n: t.clone() for n, t in backend.shared_parameters().items()}
    messages = plan.messages(global_params)
    k = clients_per_round(cfg, data.num_clients)
    seconds, samples = [], 0
    for round_num in range(1, rounds + 1):
        started = time.perf_counter()
        sampled = sample_clients(data.num_clients, k, generator(cfg.seed, CLIENT_SAMPLING, round_num))
        facts = RoundFacts(round_num, data.num_clients, tuple(sampled), global_params)
        aggregation = RoundAggregation(plan, facts, messages)
        for upload in backend.train_cohort(sampled, round_num, global_params, plan.broadcast(facts, messages)):
            aggregation.add(upload)
            samples += upload.samples
        global_params = plan.update_global(global_params, aggregation.aggregate(), facts)
        if evaluate:
            for split in ("val", "test"):
                backend.evaluate(global_params, split)
        synchronize(device)
        seconds.append(time.perf_counter() - started)
    return {"seconds": seconds, "samples": samples, "params": global_params,
            "vectorized": getattr(backend, "vectorized", False)}
