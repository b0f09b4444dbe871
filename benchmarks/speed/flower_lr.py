"""Flower's Ray simulation of the LR workload's training, for bench_ray.py (run by a throwaway venv's Python).

Imports Flower, NumPy and PyTorch only (never fedplug). Each sampled client trains the same model as fedplug's
`lr` (one Linear layer, cross-entropy) with SGD (lr 0.1), one epoch in batches of 20, on its rows of the npz that
bench_ray.py wrote from the workload; Flower's FedAvg (weighted by samples) aggregates, no evaluation. The
ServerApp records when each round starts; a round's time is the gap to the next one's start (so the
last round is not timed). Prints one JSON line.

    python flower_lr.py DATA.npz CLIENTS PER_ROUND ROUNDS ACTORS
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch
from flwr.client import ClientApp, NumPyClient
from flwr.common import Context, ndarrays_to_parameters
from flwr.server import ServerApp, ServerAppComponents, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.simulation import run_simulation

PATH, CLIENTS, PER_ROUND, ROUNDS, ACTORS = sys.argv[1], *map(int, sys.argv[2:6])
STARTS: list[float] = []
_DATA: dict[str, np.ndarray] = {}


def data() -> dict[str, np.ndarray]:
    """The workload's training rows, loaded once per Ray actor process."""
    if not _DATA:
        _DATA.update(np.load(PATH))
        torch.set_num_threads(1)
    return _DATA


class LRClient(NumPyClient):
    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, parameters, config):
        d = data()
        lo, hi = int(d["offsets"][self.cid]), int(d["offsets"][self.cid + 1])
        x, y = torch.tensor(d["x"][lo:hi]), torch.tensor(d["y"][lo:hi])
        model = torch.nn.Linear(x.shape[1], int(d["classes"]))
        with torch.no_grad():
            model.weight.copy_(torch.from_numpy(parameters[0]))
            model.bias.copy_(torch.from_numpy(parameters[1]))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        seed = self.cid * 100_003 + int(config["round"])  # a client's own order each round
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
        for start in range(0, len(y), 20):
            batch = order[start:start + 20]
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
        return [model.weight.detach().numpy(), model.bias.detach().numpy()], len(y), {}


def client_fn(context: Context):
    return LRClient(int(context.node_config["partition-id"])).to_client()


class TimedFedAvg(FedAvg):
    def configure_fit(self, server_round, parameters, client_manager):
        STARTS.append(time.perf_counter())
        return super().configure_fit(server_round, parameters, client_manager)


def server_fn(context: Context) -> ServerAppComponents:
    d = data()
    init = [np.zeros((int(d["classes"]), d["x"].shape[1]), np.float32), np.zeros(int(d["classes"]), np.float32)]
    strategy = TimedFedAvg(fraction_fit=PER_ROUND / CLIENTS, min_fit_clients=PER_ROUND, min_available_clients=CLIENTS,
                           fraction_evaluate=0.0, min_evaluate_clients=0, on_fit_config_fn=lambda r: {"round": r},
                           initial_parameters=ndarrays_to_parameters(init))
    return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=ROUNDS))


def main() -> None:
    started = time.perf_counter()
    run_simulation(ServerApp(server_fn=server_fn), ClientApp(client_fn=client_fn), num_supernodes=CLIENTS,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": ACTORS, "include_dashboard": False}})
    ended = time.perf_counter()
    rounds = [b - a for a, b in zip(STARTS, STARTS[1:])]  # the last round ends in Ray's shutdown: not timed
    import flwr
    import ray

    print(json.dumps({"flower": flwr.__version__, "ray": ray.__version__, "seconds": rounds,
                      "total_seconds": ended - started}))


if __name__ == "__main__":
    main()
