"""The sequential backend: one model object, loaded in place with each client's tensors.

A client visit: download (global parameters, plus the client's own local parameters such as
FedBN's), run the routine with the client's plug-in states, the plug-ins' broadcast tensors and
the gradient point's transforms in the Context, then read back what it uploads (the shared
parameters and the plug-ins' `client_upload` tensors) and what it keeps (its local parameters).
Per-client state lives in plain dicts of tensors, never in model objects.
"""
from __future__ import annotations

import contextlib
from functools import partial
from itertools import chain
from types import MappingProxyType
from typing import Any, Iterable, Iterator

import torch
from torch import nn

from fedplug.config import ConfigNode
from fedplug.core.compose import Plan
from fedplug.core.messages import Upload
from fedplug.core.params import Params
from fedplug.core.plugin import LocalView, Plugin
from fedplug.core.trainer import Trainer
from fedplug.data.federated import FederatedData
from fedplug.device import to_device
from fedplug.seeding import CLIENT_TRAINING, generator


class SequentialBackend:
    def __init__(self, cfg: ConfigNode, model: nn.Module, plan: Plan, data: FederatedData) -> None:
        self.cfg, self.model, self.plan, self.data = cfg, model, plan, data
        self.trainer = Trainer(model, cfg)
        self.trainer.hooks = plan.hook_tables()
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.local_names = set().union(*(p.local_parameters(names) for p in plan.plugins))
        self.shared_names = [n for n in names if n not in self.local_names]
        # Kept per client: local parameters and every buffer (BatchNorm statistics never travel).
        self.kept_names = sorted(self.local_names) + [n for n, _ in model.named_buffers()]
        self.device = next(model.parameters()).device
        # federate.client_state: between visits, clients' tensors stay on the device or go to host memory
        on_device = cfg.federate.client_state == "device"
        self.state_device = self.device if on_device else torch.device("cpu")
        self._initial_kept = self._read(self.kept_names)
        self._kept: dict[int, Params] = {}  # client -> its kept tensors
        self._states: dict[int, dict[str, dict[str, torch.Tensor]]] = {}  # client -> plug-in -> state
        self.per_client_eval = bool(self.kept_names) or any("personalization" in p.roles for p in plan.plugins)

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {**dict(self.model.named_parameters()), **dict(self.model.named_buffers())}

    def _read(self, names: list[str]) -> Params:
        tensors = self._tensors()
        return {n: tensors[n].detach().to(self.state_device, copy=True) for n in names}

    def shared_parameters(self) -> Params:
        params = dict(self.model.named_parameters())
        return {n: params[n].detach() for n in self.shared_names}

    def client_states(self, client: int) -> dict[str, dict[str, torch.Tensor]]:
        states = self._states.setdefault(client, {})
        return {p.name: states.setdefault(p.name, {}) for p in self.plan.plugins}

    @contextlib.contextmanager
    def visiting(self, clients: Iterable[int]) -> Iterator[None]:
        """The clients' plug-in states on the device during a visit, back in host memory after (when they live
        there: `federate.client_state host` on a GPU). The states' dicts stay the same objects."""
        if self.state_device == self.device:
            yield
            return
        held = [self.client_states(c) for c in clients]
        for per_plugin in held:
            for state in per_plugin.values():
                state.update(to_device(state, self.device))
        try:
            yield
        finally:
            for per_plugin in held:
                for state in per_plugin.values():
                    state.update(to_device(state, self.state_device))

    def download(self, client: int, global_params: Params) -> None:
        kept = self._kept.get(client, self._initial_kept)
        with torch.no_grad():  # the tensors of `_tensors()`, in its order, without building its dicts
            for name, t in chain(self.model.named_parameters(), self.model.named_buffers()):
                if name in global_params:
                    t.copy_(global_params[name])
                elif name in kept:
                    t.copy_(kept[name])

    def init_states(self, client: int, global_params: Params) -> dict[str, dict[str, torch.Tensor]]:
        """The client's plug-in states, those still empty filled by `init_client_state` (first visit)."""
        states = self.client_states(client)
        for plugin in self.plan.with_method("init_client_state"):
            if not states[plugin.name]:
                states[plugin.name].update(plugin.init_client_state(global_params))
        return states

    def train_client(self, client: int, round_num: int, global_params: Params,
                     extras: dict[str, Params] | None = None) -> dict[str, Any]:
        """One local update; the uploaded tensors are views, read them before the next visit."""
        if self.state_device == self.device:  # the states stay where they are: no context manager per visit
            return self._train_client(client, round_num, global_params, extras or {})
        with self.visiting([client]):
            return self._train_client(client, round_num, global_params, extras or {})

    def _train_client(self, client: int, round_num: int, global_params: Params,
                      extras: dict[str, Params]) -> dict[str, Any]:
        self.download(client, global_params)
        states = self.init_states(client, global_params)
        lr = self.cfg.train.optimizer.lr
        transforms = [partial(_transform, plugin, global_params, extras.get(plugin.name, {}), states[plugin.name], lr)
                      for plugin in self.plan.with_method("transform_gradients")]
        result = self.trainer.train(*self.data.splits["train"].client(client),
                                    generator=generator(self.cfg.seed, CLIENT_TRAINING, round_num, client),
                                    client_id=client, client_states=states, global_params=global_params,
                                    received_extras=extras, gradient_transforms=transforms, trainer=self.trainer)
        if self.kept_names:
            self._kept[client] = self._read(self.kept_names)
        metrics = {k: result[k] for k in ("train_total", "train_steps", "train_loss")}
        params, uploads = self._uploads(client, round_num, self.shared_parameters(), global_params, extras, metrics)
        return {**result, "params": params, "extras": uploads}

    def _uploads(self, client: int, round_num: int, params: Params, received: Params, extras: dict[str, Params],
                 metrics: dict[str, float]) -> tuple[Params, dict[str, Params]]:
        """What this client sends after its local update: the parameters (its model, unless a `transform_upload`
        changes them, in plan order) and each plug-in's `client_upload` tensors (computed from its model)."""
        states = self.client_states(client)
        lr = self.cfg.train.optimizer.lr

        def view(plugin: Plugin, current: Params) -> LocalView:
            return LocalView(current, received, extras.get(plugin.name, {}), states[plugin.name], lr, metrics,
                             client, round_num)

        uploads = {p.name: p.client_upload(view(p, params)) for p in self.plan.with_method("client_upload")}
        for plugin in self.plan.with_method("transform_upload"):
            params = plugin.transform_upload(params, view(plugin, params))
        return params, uploads

    def train_cohort(self, clients: list[int], round_num: int, global_params: Params,
                     extras: dict[str, Params] | None = None) -> Iterator[Upload]:
        """Each client's upload, in order.

        One client at a time: the tensors yielded are views of the one model, valid until the
        next item is requested (the round's aggregation reads them at once).
        """
        for client in clients:
            result = self.train_client(client, round_num, global_params, extras)
            metrics = {k: result[k] for k in ("train_total", "train_steps", "train_loss")}
            yield Upload(client, result["params"], metrics, result["extras"])

    def export_client_state(self) -> tuple[dict[int, Params], dict[int, dict[str, Params]]]:
        """(kept tensors, plug-in states) per client, for a checkpoint (the backend's own dicts)."""
        return self._kept, self._states

    def import_client_state(self, kept: dict[int, Params], states: dict[int, dict[str, Params]]) -> None:
        """Replace every client's kept tensors and plug-in states (resuming from a checkpoint)."""
        self._kept = {client: to_device(tensors, self.state_device) for client, tensors in kept.items()}
        self._states = {client: {name: to_device(state, self.state_device) for name, state in per_plugin.items()}
                        for client, per_plugin in states.items()}

    def evaluate(self, global_params: Params, split: str, clients: range | None = None) -> list[dict[str, Any]]:
        """Every client on `split` (or those in `clients`, in order), each with the model it is judged by."""
        results = []
        if not self.per_client_eval:
            self.download(0, global_params)
        for client in range(self.data.num_clients) if clients is None else clients:
            if self.per_client_eval:
                self.download(client, global_params)
            with self.visiting([client]):
                results.append(self.trainer.evaluate(*self.data.splits[split].client(client), split=split,
                                                     client_id=client, client_states=self.client_states(client),
                                                     global_params=global_params, trainer=self.trainer))
        return results


def _transform(plugin: Plugin, received: Params, extras: Params, state: dict[str, torch.Tensor], lr: float,
               grads: Params, params: Params) -> Params:
    """One plug-in's gradient transform for one client (bound with partial; the Trainer's backward calls it)."""
    return plugin.transform_gradients(grads, LocalView(params, received, extras, MappingProxyType(state), lr))
