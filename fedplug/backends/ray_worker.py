"""One Ray worker of the Ray backend: a process holding one model and an inner backend (sequential or vectorized).

The worker rebuilds everything from the config it is given: the plan (user plug-ins are imported
from `plugins`, so they must be importable on every node), the data (from the node's own cache,
see ray_backend.py for why) and the seeded model, so its initial tensors equal the driver's. It
keeps no client's state between calls: each call brings the state of the clients it concerns and
the training call hands the updated state back. A worker Ray restarts after its process was killed
therefore needs nothing but its constructor, and a task Ray re-runs gives the same result.

This module imports Ray only through ray_backend.py, which makes `RayWorker` a Ray actor class.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import torch

from fedplug.config import dotted, load_config
from fedplug.core.messages import Upload
from fedplug.core.params import Params
from fedplug.data.federated import FederatedData
from fedplug.run.failpoint import failpoint

ClientState = tuple[dict[int, Params], dict[int, dict[str, Params]]]  # (kept tensors, plug-in states) per client
DataFactory = Callable[[Any], FederatedData]  # config -> the federated data (default: fedplug.data.build_data)


class RayWorker:
    """Trains and evaluates the clients it is handed; `index` names it in failpoints (`ray_worker<index>_train`)."""

    def __init__(self, index: int, config: dict[str, Any], threads: int, data_factory: DataFactory | None) -> None:
        from fedplug.data import build_data
        from fedplug.models import build_model
        from fedplug.run.plan import build_plan

        torch.set_num_threads(threads)
        self.index = index
        self.cfg = load_config(None, dotted(config))
        plan = build_plan(self.cfg)
        data = (data_factory or build_data)(self.cfg)
        # The device: CPU for now. A worker given GPUs (ray.gpus_per_worker) is where it would pick its own,
        # from Ray's CUDA_VISIBLE_DEVICES (ray.get_gpu_ids()), once the `device` key exists.
        model = build_model(self.cfg, data.input_shape, plan)
        if self.cfg.ray.inner == "vectorized":
            from fedplug.backends.vectorized import VectorizedBackend

            self.backend = VectorizedBackend(self.cfg, model, plan, data)
        else:
            from fedplug.backends.sequential import SequentialBackend

            self.backend = SequentialBackend(self.cfg, model, plan, data)

    def pid(self) -> int:
        return os.getpid()

    def _take(self, state: ClientState) -> None:
        """Hold only the given clients' state (anything from an earlier call is dropped)."""
        self.backend.import_client_state(*state)

    def train(self, clients: list[int], round_num: int, sent: tuple[Params, dict[str, Params]],
              state: ClientState) -> tuple[list[Upload], ClientState]:
        """The uploads of `clients` (in their order), copied out of the model, and their updated state."""
        failpoint(f"ray_worker{self.index}_train", round_num)
        global_params, extras = sent
        self._take(state)
        uploads = [Upload(u.client, _copied(u.params), dict(u.metrics),
                          {p: _copied(e) for p, e in u.extras.items()})
                   for u in self.backend.train_cohort(clients, round_num, global_params, extras)]
        kept, states = self.backend.export_client_state()
        return uploads, ({c: kept[c] for c in clients if c in kept}, {c: states[c] for c in clients if c in states})

    def evaluate(self, clients: range, global_params: Params, split: str, state: ClientState) -> list[dict[str, Any]]:
        """The results of the clients in `clients` on `split`, in client order."""
        self._take(state)
        return self.backend.evaluate(global_params, split, clients)


def _copied(tensors: Params) -> Params:
    """Own copies: an upload may be a view of the model or of a stacked cohort tensor (whose whole storage
    would otherwise be serialized)."""
    return {n: t.detach().clone() for n, t in tensors.items()}
