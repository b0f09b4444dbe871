"""The Trainer: runs a Context through the eight trigger points.

One Trainer (and one model object) serves every client of a worker: the caller loads a client's
parameters into `model` in place, calls `train` or `evaluate` with that client's tensors, and reads
the parameters back. No model is copied per client.

Local work follows the seed's schedule: with `batch_or_epoch: batch`, a client with fewer batches
than `local_update_steps` cycles over freshly reshuffled epochs until it has taken exactly that many
steps (the last epoch is cut short); with `epoch`, it runs that many full epochs.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch

from fedplug.config import ConfigNode
from fedplug.core.context import Context
from fedplug.core.dropout import SeededDropout
from fedplug.core.default_hooks import default_eval_hooks, default_train_hooks
from fedplug.core.fused import fusable, train_batches
from fedplug.core.hooks import HookFn, HookTable
from fedplug.errors import DataError


def schedule(num_data: int, batch_size: int, drop_last: bool, steps: int, unit: str) -> tuple[int, int, int]:
    """(batches per epoch, epochs, batches in the last epoch) for one routine."""
    per_epoch = num_data // batch_size + int(not drop_last and num_data % batch_size > 0)
    if per_epoch == 0:
        raise DataError(f"a client has {num_data} samples: not one batch of {batch_size} (drop_last={drop_last})")
    if unit == "batch":
        return per_epoch, math.ceil(steps / per_epoch), steps % per_epoch or per_epoch
    return per_epoch, steps, per_epoch


class Trainer:
    def __init__(self, model: torch.nn.Module, cfg: ConfigNode, criterion: Callable | None = None) -> None:
        self.model = model
        self.cfg = cfg
        self.criterion = criterion or torch.nn.CrossEntropyLoss()
        self._dropouts = [m for m in model.modules() if isinstance(m, SeededDropout)]  # fed each update's generator
        self.hooks: dict[str, HookTable] = {"train": default_train_hooks(), "eval": default_eval_hooks()}

    @property
    def device(self) -> torch.device:
        """Where the model is (fedplug/device.py put it there); batches are moved here when the data are not."""
        return next(self.model.parameters()).device

    # -- running ---------------------------------------------------------------------------------
    def train(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator, *, table: HookTable | None = None,
              local_update_steps: int | None = None, lr: float | None = None, **extra: Any) -> dict[str, Any]:
        """One local update on (x, y); returns `train_total` (samples processed) and `train_loss`.

        `table`, `local_update_steps` and `lr` override the configured ones (e.g. Ditto's personal update).
        """
        train = self.cfg.train
        loader = self.cfg.dataloader
        steps = local_update_steps if local_update_steps is not None else train.local_update_steps
        per_epoch, epochs, last = schedule(x.shape[0], loader.batch_size, loader.drop_last, steps,
                                           train.batch_or_epoch)
        for dropout in self._dropouts:
            dropout.generator = generator
        ctx = self._context("train", "train", x, y, loader.batch_size, per_epoch, epochs, last,
                            generator=generator, lr=lr if lr is not None else train.optimizer.lr, **extra)
        self.run_routine(table or self.hooks["train"], ctx)
        return ctx.results

    def evaluate(self, x: torch.Tensor, y: torch.Tensor, split: str, **extra: Any) -> dict[str, Any]:
        """Loss sum, correct count and total of the model on (x, y), batched, without gradients."""
        size = self.cfg.eval.batch_size
        per_epoch, epochs, last = schedule(x.shape[0], size, False, 1, "epoch")
        ctx = self._context("eval", split, x, y, size, per_epoch, epochs, last, **extra)
        with torch.no_grad():
            self.run_routine(self.hooks["eval"], ctx)
        return ctx.results

    def _context(self, mode: str, split: str, x: torch.Tensor, y: torch.Tensor, batch_size: int, per_epoch: int,
                 epochs: int, last: int, **extra: Any) -> Context:
        return Context(model=self.model, cfg=self.cfg, criterion=self.criterion, cur_mode=mode, cur_split=split,
                       device=self.device, x=x, y=y, batch_size_cfg=batch_size, num_batch=per_epoch, num_epoch=epochs,
                       num_batch_last_epoch=last, **extra)

    @staticmethod
    def run_routine(table: HookTable, ctx: Context) -> None:
        fit_start, epoch_start, batch_start, forward, backward, batch_end, epoch_end, fit_end = table.functions()

        def run_forward() -> None:  # for hooks that re-evaluate the loss after changing the model (pFedMe)
            for hook in forward:
                hook(ctx)

        ctx.run_forward = run_forward
        # Only the default train hooks at the batch points: their fused loop (fedplug/core/fused.py), same arithmetic.
        fused = fusable(batch_start, forward, backward, batch_end)
        # Else a batch's four trigger points run back to back: one loop over their hooks in that order.
        batch_hooks = () if fused else batch_start + forward + backward + batch_end
        variables, end_scope = ctx.__dict__, ctx.end_scope  # the indices are plain values: no __setattr__ needed
        for hook in fit_start:
            hook(ctx)
        for epoch_i in range(ctx.num_epoch):
            variables["cur_epoch_i"] = epoch_i
            for hook in epoch_start:
                hook(ctx)
            batches = ctx.num_batch_last_epoch if epoch_i == ctx.num_epoch - 1 else ctx.num_batch
            if fused:
                train_batches(ctx, batches)
            else:
                for batch_i in range(batches):
                    variables["cur_batch_i"] = batch_i
                    for hook in batch_hooks:
                        hook(ctx)
                    end_scope("batch")
            for hook in epoch_end:
                hook(ctx)
            end_scope("epoch")
        for hook in fit_end:
            hook(ctx)
        end_scope("routine")

    # -- hook API ---------------------------------------------------------------------------------
    def add_hook(self, routine: str, trigger: str, fn: HookFn, name: str | None = None, *,
                 before: str | None = None, after: str | None = None) -> None:
        self._table(routine).add(trigger, fn, name, before=before, after=after)

    def replace_hook(self, routine: str, trigger: str, name: str, fn: HookFn) -> None:
        self._table(routine).replace(trigger, name, fn)

    def remove_hook(self, routine: str, trigger: str, name: str | None = None) -> None:
        self._table(routine).remove(trigger, name)

    def _table(self, routine: str) -> HookTable:
        if routine not in self.hooks:
            raise ValueError(f"unknown routine '{routine}'; routines are {', '.join(self.hooks)}")
        return self.hooks[routine]

    # -- the seed's names, kept for its users --------------------------------------------------------
    def register_hook_in_train(self, new_hook: HookFn, trigger: str, insert_pos: int | None = None,
                               base_hook: HookFn | str | None = None, insert_mode: str = "before") -> None:
        self._register("train", new_hook, trigger, insert_pos, base_hook, insert_mode)

    def register_hook_in_eval(self, new_hook: HookFn, trigger: str, insert_pos: int | None = None,
                              base_hook: HookFn | str | None = None, insert_mode: str = "before") -> None:
        self._register("eval", new_hook, trigger, insert_pos, base_hook, insert_mode)

    def replace_hook_in_train(self, new_hook: HookFn, target_trigger: str, target_hook_name: str) -> None:
        self.replace_hook("train", target_trigger, target_hook_name, new_hook)

    def replace_hook_in_eval(self, new_hook: HookFn, target_trigger: str, target_hook_name: str) -> None:
        self.replace_hook("eval", target_trigger, target_hook_name, new_hook)

    def reset_hook_in_train(self, target_trigger: str, target_hook_name: str | None = None) -> None:
        self.remove_hook("train", target_trigger, target_hook_name)

    def reset_hook_in_eval(self, target_trigger: str, target_hook_name: str | None = None) -> None:
        self.remove_hook("eval", target_trigger, target_hook_name)

    def _register(self, routine: str, new_hook: HookFn, trigger: str, insert_pos: int | None,
                  base_hook: HookFn | str | None, insert_mode: str) -> None:
        table = self._table(routine)
        if base_hook is None:
            if insert_pos is None:
                table.add(trigger, new_hook)
            else:
                table.insert_at(trigger, insert_pos, new_hook)
            return
        base = base_hook if isinstance(base_hook, str) else base_hook.__name__
        if insert_mode == "before":
            table.add(trigger, new_hook, before=base)
        elif insert_mode == "after":
            table.add(trigger, new_hook, after=base)
        elif insert_mode == "replace":
            table.replace(trigger, base, new_hook)
        elif insert_mode == "remove":
            table.remove(trigger, base)
        else:
            raise ValueError(f"insert_mode must be before, after, replace or remove; got '{insert_mode}'")
