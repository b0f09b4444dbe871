"""Ditto under `ditto.semantics federatedscope`: FederatedScope's schedule (trainer_Ditto.py), as listed in
fedplug/algorithms/ditto.py's docstring; the loader both models draw from, and the hooks that use it."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from fedplug.core.context import Context, CtxVar
from fedplug.core.default_hooks import on_device
from fedplug.core.params import copy_parameters, load_parameters
from fedplug.core.plugin import HookSpec


class BatchStream:
    """One shuffled loader per visit, as FederatedScope's ReIterator: `new_pass` at each epoch start, and a
    new pass whenever one runs out of batches; v's and w's batches are taken from it in turn."""

    def __init__(self, size: int, batch_size: int, drop_last: bool, generator: torch.Generator) -> None:
        self.size, self.batch_size, self.generator = size, batch_size, generator
        self.per_pass = size // batch_size + int(not drop_last and size % batch_size > 0)
        self.order, self.used = torch.empty(0, dtype=torch.int64), 0

    def new_pass(self) -> None:
        self.order, self.used = torch.randperm(self.size, generator=self.generator), 0

    def next_batch(self) -> torch.Tensor:
        if self.used == self.per_pass:
            self.new_pass()
        start = self.used * self.batch_size
        self.used += 1
        return self.order[start:start + self.batch_size]


def _hook_on_batch_start_stream(ctx: Context) -> None:
    """The next batch of the visit's loader (replaces the per-epoch permutation's gather)."""
    index = ctx.ditto_visit["stream"].next_batch()
    device = ctx.get("device")
    ctx.batch_index = CtxVar(index, "batch")
    ctx.x_batch = CtxVar(on_device(ctx.x[index], device), "batch")
    ctx.y_batch = CtxVar(on_device(ctx.y[index], device), "batch")
    ctx.batch_size = CtxVar(index.shape[0], "batch")


class FederatedScopeDitto:
    """Ditto's hooks under `ditto.semantics federatedscope` (fedplug.algorithms.ditto.Ditto mixes them in)."""

    def _federatedscope_hooks(self) -> list[HookSpec]:
        return [
            HookSpec("on_fit_start", self._hook_on_fit_start_visit, "_hook_on_fit_start_ditto_visit",
                     after=("_hook_on_fit_start_init",), writes=("ditto_visit",)),
            HookSpec("on_epoch_start", self._hook_on_epoch_start_personal, "_hook_on_epoch_start_ditto_personal",
                     replaces="_hook_on_epoch_start_shuffle"),
            HookSpec("on_batch_start", _hook_on_batch_start_stream, "_hook_on_batch_start_ditto_stream",
                     replaces="_hook_on_batch_start_gather"),
            HookSpec("on_fit_start", self._hook_on_fit_start_load_personal, "_hook_on_fit_start_ditto_load_personal",
                     routine="eval", before=("_hook_on_fit_start_eval_init",), writes=("model",)),
        ]

    def wrap_model(self, model: nn.Module, make: Callable[[], nn.Module]) -> nn.Module:
        """Keep the freshly initialised parameters: v's start and a never-trained client's model."""
        if self.federatedscope:
            self.initial = copy_parameters(model)
        return model

    def _hook_on_fit_start_visit(self, ctx: Context) -> None:
        state = self.state(ctx)
        if not state:
            state.update({n: t.clone() for n, t in self.initial.items()})
        loader = ctx.cfg.dataloader
        stream = BatchStream(ctx.x.shape[0], loader.batch_size, loader.drop_last, ctx.generator)
        ctx.ditto_visit = CtxVar({"stream": stream, "optimizer": None}, "routine")

    def _hook_on_epoch_start_personal(self, ctx: Context) -> None:
        """A fresh pass of the loader, then this epoch's personal batches (w's follow in the epoch)."""
        ctx.ditto_visit["stream"].new_pass()
        per_pass = ctx.ditto_visit["stream"].per_pass
        last = ctx.cur_epoch_i == ctx.num_epoch - 1
        count = (self.personal_steps % per_pass or per_pass) if last else per_pass
        state = self.state(ctx)
        w = copy_parameters(ctx.model)
        load_parameters(ctx.model, state)
        ctx.trainer.train(ctx.x, ctx.y, ctx.generator, table=self.personal_table, local_update_steps=count,
                          lr=self.personal_lr, global_params=ctx.global_params, client_id=ctx.client_id,
                          client_states=ctx.client_states, ditto_visit=ctx.ditto_visit)
        state.update(copy_parameters(ctx.model))
        load_parameters(ctx.model, w)
        ctx.model.train()

    def _hook_on_fit_start_keep_optimizer(self, ctx: Context) -> None:
        """v's optimizer (its momentum) lives for the whole visit, across the epochs' personal batches."""
        visit = ctx.ditto_visit
        if visit["optimizer"] is None:
            visit["optimizer"] = ctx.optimizer
        else:
            ctx.optimizer = CtxVar(visit["optimizer"], "routine")
