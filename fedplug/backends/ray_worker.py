"""One Ray worker of the Ray backend: a process holding one model and an inner backend (sequential or vectorized).

The worker rebuilds everything from the config it is given: the plan (user plug-ins are imported
from `plugins`, so they must be importable on every node), the data (from the node's own cache,
see ray_backend.py for why) and the seeded model, so its initial tensors equal the driver's. It
keeps no client's state between calls: each call brings the state of the clients it concerns and
the training call hands the updated state back. A worker Ray restarts after its process was killed
therefore needs nothing but its constructor, and a task Ray re-runs gives the same result.

What crosses between driver and workers is NumPy arrays, not tensors (`to_wire`, `from_wire`), and a
block's uploads are stacked, one array per parameter (`pack_uploads`): Ray serializes a few arrays
in well under a millisecond, where pickling 100 uploads' tensors one by one took about 90 ms.

This module imports Ray only through ray_backend.py, which makes `RayWorker` a Ray actor class.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np
import torch

from fedplug.config import dotted, load_config
from fedplug.core.messages import Upload
from fedplug.data.federated import FederatedData
from fedplug.device import place_data, to_device
from fedplug.errors import UserError
from fedplug.run.failpoint import failpoint

DataFactory = Callable[[Any], FederatedData]  # config -> the federated data (default: fedplug.data.build_data)


class RayWorker:
    """Trains and evaluates the clients it is handed; `index` names it in failpoints (`ray_worker<index>_train`)."""

    def __init__(self, index: int, config: dict[str, Any], threads: int, data_factory: DataFactory | None) -> None:
        self.index = index
        self.failure: str | None = None  # why this worker could not start: said by ready(), raised by every call
        try:
            self._build(config, threads, data_factory)
        except Exception as error:  # noqa: BLE001  (reported to the driver as one line)
            self.failure = f"{type(error).__name__}: {error}"

    def _build(self, config: dict[str, Any], threads: int, data_factory: DataFactory | None) -> None:
        from fedplug.data import build_data
        from fedplug.models import build_model
        from fedplug.run.plan import build_plan

        torch.set_num_threads(threads)
        self.cfg = load_config(None, dotted(config))
        plan = build_plan(self.cfg)
        # Each worker resolves `device` on its own node: Ray shows an actor the GPUs it reserved for it
        # (ray.gpus_per_worker, through CUDA_VISIBLE_DEVICES), so `auto` takes one of those; a worker reserved
        # none trains on the CPU even where Ray would let it see the node's GPUs.
        spec = "cpu" if self.cfg.device == "auto" and self.cfg.ray.gpus_per_worker == 0 else self.cfg.device
        self.device, data = place_data(self.cfg, (data_factory or build_data)(self.cfg), spec)
        model = build_model(self.cfg, data.input_shape, plan).to(self.device)
        if self.cfg.ray.inner == "vectorized":
            from fedplug.backends.vectorized import VectorizedBackend

            self.backend = VectorizedBackend(self.cfg, model, plan, data)
        else:
            from fedplug.backends.sequential import SequentialBackend

            self.backend = SequentialBackend(self.cfg, model, plan, data)

    def pid(self) -> int:
        return os.getpid()

    def ready(self) -> str | None:
        """None once built; else why not, in one line."""
        return self.failure

    def _take(self, state: Any) -> None:
        """Hold only the given clients' state (anything from an earlier call is dropped)."""
        if self.failure is not None:  # a replacement that could not start (its node lacks the data)
            raise UserError(f"a Ray worker could not start: {self.failure}")
        self.backend.import_client_state(*from_wire(state))

    def train(self, clients: list[int], round_num: int, sent: Any, state: Any) -> tuple[dict[str, Any], Any]:
        """The uploads of `clients` (in their order, packed) and their updated state, on the wire."""
        failpoint(f"ray_worker{self.index}_train", round_num)
        self._take(state)
        global_params, extras = (to_device(tree, self.device) for tree in from_wire(sent))
        # Copied as they come: the sequential backend's tensors are views of its one model.
        trained = self.backend.train_cohort(clients, round_num, global_params, extras)
        uploads = pack_uploads([u.copied() for u in trained])
        kept, states = self.backend.export_client_state()
        return uploads, to_wire(({c: kept[c] for c in clients if c in kept},
                                 {c: states[c] for c in clients if c in states}))

    def evaluate(self, clients: range, sent: Any, split: str, state: Any) -> list[dict[str, Any]]:
        """The results of the clients in `clients` on `split`, in client order."""
        self._take(state)
        return self.backend.evaluate(to_device(from_wire(sent), self.device), split, clients)


def to_wire(tree: Any) -> Any:
    """`tree` (dicts, lists, tuples) with every CPU tensor NumPy can hold as a NumPy array (a copy: a view of a
    bigger tensor would otherwise ship that tensor's whole storage)."""
    if isinstance(tree, torch.Tensor):
        try:
            return tree.detach().cpu().numpy().copy()
        except TypeError:  # a dtype NumPy lacks (bfloat16): sent as a tensor
            return tree.detach().clone()
    if isinstance(tree, dict):
        return {k: to_wire(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(to_wire(v) for v in tree)
    return tree


def from_wire(tree: Any) -> Any:
    """The inverse of `to_wire`: NumPy arrays back to tensors (writable copies of read-only ones)."""
    if isinstance(tree, np.ndarray):
        return torch.from_numpy(tree if tree.flags.writeable else tree.copy())
    if isinstance(tree, dict):
        return {k: from_wire(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(from_wire(v) for v in tree)
    return tree


def pack_uploads(uploads: list[Upload]) -> dict[str, Any]:
    """A block's uploads as one array per parameter and per extra tensor, stacked in client order."""
    first = uploads[0]
    return {"clients": [u.client for u in uploads], "metrics": [dict(u.metrics) for u in uploads],
            "params": to_wire({n: torch.stack([u.params[n] for u in uploads]) for n in first.params}),
            "extras": to_wire({p: {n: torch.stack([u.extras[p][n] for u in uploads]) for n in tensors}
                               for p, tensors in first.extras.items()})}


def unpack_uploads(packed: dict[str, Any]) -> list[Upload]:
    """The uploads `pack_uploads` packed; each tensor is a row of its parameter's stacked array."""
    params, extras = from_wire(packed["params"]), from_wire(packed["extras"])
    return [Upload(client, {n: t[i] for n, t in params.items()}, metrics,
                   {p: {n: t[i] for n, t in tensors.items()} for p, tensors in extras.items()})
            for i, (client, metrics) in enumerate(zip(packed["clients"], packed["metrics"]))]
