"""The 100-client logistic-regression workload of issue 5, as tensor-native federated data.

60 features, 10 classes, 100-200 training samples per client (uniform), each client labelled by
its own random linear teacher plus a shared one (so FedAvg has something to learn). Val and test
splits are small: the speed benchmarks time training rounds. Same seed, same data, everywhere.
"""
from __future__ import annotations

import numpy as np
import torch

from fedplug.data.federated import FederatedData, SplitData

FEATURES, CLASSES = 60, 10


def lr_workload(num_clients: int = 100, low: int = 100, high: int = 200, eval_size: int = 20,
                seed: int = 0) -> FederatedData:
    rng = np.random.default_rng(seed)
    shared = rng.normal(size=(FEATURES, CLASSES))
    splits: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"train": [], "val": [], "test": []}
    for _ in range(num_clients):
        teacher = shared + rng.normal(size=(FEATURES, CLASSES))
        n = int(rng.integers(low, high + 1))
        for name, size in (("train", n), ("val", eval_size), ("test", eval_size)):
            x = rng.normal(size=(size, FEATURES)).astype(np.float32)
            y = (x @ teacher + rng.gumbel(size=(size, CLASSES))).argmax(axis=1)
            splits[name].append((x, y))
    out = {}
    for name, parts in splits.items():
        offsets = np.concatenate([[0], np.cumsum([len(y) for _, y in parts])])
        out[name] = SplitData(torch.from_numpy(np.concatenate([x for x, _ in parts])),
                              torch.from_numpy(np.concatenate([y for _, y in parts]).astype(np.int64)),
                              tuple(int(o) for o in offsets))
    return FederatedData("lr_workload", out, num_classes=CLASSES)


def lr_config(backend: str, num_clients: int = 100, per_round: int = 10, **extra):
    from fedplug.config import load_config

    return load_config(None, {"model.type": "lr", "model.out_channels": CLASSES, "dataloader.batch_size": 20,
                              "train.batch_or_epoch": "epoch", "train.local_update_steps": 1,
                              "train.optimizer.lr": 0.1, "federate.sample_client_num": per_round,
                              "federate.backend": backend, "eval.batch_size": 5000, **extra})
