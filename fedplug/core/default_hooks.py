"""The default training and evaluation routines, written as hooks.

Names follow the seed (`_hook_on_<trigger>_<what>`), so plug-ins and users can anchor to them.
Context variables the routines read: `model`, `cfg`, `criterion`, `device` (the model's), `x`/`y` (the current split),
`generator` and `lr` (train only), and the schedule the Trainer sets (`num_batch`,
`batch_size_cfg`, ...). The runner adds `client_id`, `client_states`, `global_params` (what the
client received), `received_extras` (the plug-ins' broadcast tensors), `trainer`, and for the
update of the uploaded model `gradient_transforms` (the gradient point's functions, in plan order).
docs/writing-an-algorithm.md ("Reference: the Context fields") lists every field.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch

from fedplug.core.context import Context, CtxVar
from fedplug.core.hooks import HookTable
from fedplug.core.module_calls import already_training
from fedplug.core.optimizer_calls import optimizer_calls

if TYPE_CHECKING:
    from fedplug.data.graph_rows import GraphBatch


def _hook_on_fit_start_init(ctx: Context) -> None:
    if not already_training(ctx.model):  # else train() would change nothing, and the check costs less
        ctx.model.train()
    opt = ctx.cfg.train.optimizer
    ctx.optimizer = CtxVar(torch.optim.SGD(ctx.model.parameters(), lr=ctx.lr, momentum=opt.momentum,
                                           weight_decay=opt.weight_decay), "routine")
    ctx.num_samples = CtxVar(0, "routine")
    ctx.loss_total = CtxVar(0.0, "routine")


def _hook_on_fit_start_eval_init(ctx: Context) -> None:
    ctx.model.eval()
    ctx.num_samples = CtxVar(0, "routine")
    ctx.loss_total = CtxVar(0.0, "routine")
    ctx.num_correct = CtxVar(0, "routine")


def _hook_on_epoch_start_shuffle(ctx: Context) -> None:
    """A fresh permutation each epoch, drawn from the client's own generator."""
    ctx.batch_order = CtxVar(torch.randperm(ctx.x.shape[0], generator=ctx.generator), "epoch")


def _hook_on_batch_start_gather(ctx: Context) -> None:
    size = ctx.batch_size_cfg
    start = ctx.cur_batch_i * size
    index = ctx.batch_order[start:start + size]
    x_batch, y_batch = gather(ctx.x, ctx.y, index, ctx.get("device"))
    # batch_index: the rows of ctx.x in this batch
    ctx.set_scoped("batch", batch_index=index, x_batch=x_batch, y_batch=y_batch, batch_size=index.shape[0])


def gather(x: torch.Tensor, y: torch.Tensor, index: torch.Tensor,
           device: torch.device | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows `index` of (x, y), on `device` when they are not there (the gather hook's and the fused loop's)."""
    x_batch, y_batch = x[index], y[index]
    # One check per batch, inline (the common case: data already on the model's device, nothing to move).
    if device is not None and (x_batch.device != device or y_batch.device != device):
        x_batch, y_batch = on_device(x_batch, device), on_device(y_batch, device)
    return x_batch, y_batch


def on_device(batch: torch.Tensor | GraphBatch, device: torch.device | None) -> torch.Tensor | GraphBatch:
    """A batch of data kept in (pinned) host memory, copied to the model's device; else the batch itself (also
    when no device is given: a Context built by hand, in a test). A batch of graphs moves the same way."""
    return batch if device is None or batch.device == device else batch.to(device, non_blocking=True)


def _hook_on_batch_start_slice(ctx: Context) -> None:
    """Evaluation reads contiguous views: no shuffling, no copies."""
    start = ctx.cur_batch_i * ctx.batch_size_cfg
    device = ctx.get("device")
    ctx.x_batch = CtxVar(on_device(ctx.x[start:start + ctx.batch_size_cfg], device), "batch")
    ctx.y_batch = CtxVar(on_device(ctx.y[start:start + ctx.batch_size_cfg], device), "batch")
    ctx.batch_size = CtxVar(ctx.y_batch.shape[0], "batch")


def _hook_on_batch_forward(ctx: Context) -> None:
    y_prob = ctx.model(ctx.x_batch)
    loss = ctx.criterion(y_prob, ctx.y_batch)
    # loss_task: what backward uses; regularizers add to it
    ctx.set_scoped("batch", y_prob=y_prob, loss_batch=loss, loss_task=loss)


def _hook_on_batch_backward(ctx: Context) -> None:
    backward_step(ctx, *optimizer_calls(ctx.optimizer), ctx.loss_task, ctx.cfg.grad.grad_clip)


def backward_step(ctx: Context, zero_grad: Callable[[], None], step: Callable[[], None], loss: torch.Tensor,
                  clip: float) -> None:
    """zero_grad, backward, the gradient point's transforms, clip, step (the backward hook's and the fused loop's;
    `zero_grad` and `step` the optimizer's, or their arithmetic alone: fedplug/core/optimizer_calls.py)."""
    zero_grad()
    loss.backward()
    if ctx.get("gradient_transforms"):
        apply_gradient_transforms(ctx)
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(ctx.model.parameters(), clip)
    step()


def apply_gradient_transforms(ctx: Context) -> None:
    """The gradient point: each transform maps the shared parameters' gradients to new ones, in plan order
    (before clipping, so that the clip bounds the step actually taken)."""
    with torch.no_grad():
        params = {n: p for n, p in ctx.model.named_parameters() if n in ctx.global_params and p.grad is not None}
        grads = {n: p.grad for n, p in params.items()}
        values = {n: p.detach() for n, p in params.items()}
        for transform in ctx.gradient_transforms:
            grads = transform(grads, values)
        for name, p in params.items():
            p.grad = grads[name]


def _hook_on_batch_end(ctx: Context) -> None:
    ctx.num_samples += ctx.batch_size
    ctx.loss_total += ctx.loss_batch.item() * ctx.batch_size


def _hook_on_batch_end_count_correct(ctx: Context) -> None:
    ctx.num_correct += int((ctx.y_prob.argmax(dim=1) == ctx.y_batch).sum())


def _hook_on_fit_end(ctx: Context) -> None:
    steps = (ctx.num_epoch - 1) * ctx.num_batch + ctx.num_batch_last_epoch
    ctx.results = {"train_total": ctx.num_samples, "train_steps": steps,
                   "train_loss": ctx.loss_total / max(ctx.num_samples, 1)}


def _hook_on_fit_end_eval(ctx: Context) -> None:
    split = ctx.cur_split
    ctx.results = {f"{split}_total": ctx.num_samples, f"{split}_loss_sum": ctx.loss_total,
                   f"{split}_correct": ctx.num_correct}


# Context fields each core hook writes: composition refuses a plug-in hook that writes one of
# them at the same trigger point without declaring its order relative to the core hook.
CORE_WRITES: dict[str, tuple[str, ...]] = {
    "_hook_on_fit_start_init": ("optimizer", "num_samples", "loss_total"),
    "_hook_on_fit_start_eval_init": ("num_samples", "loss_total", "num_correct"),
    "_hook_on_epoch_start_shuffle": ("batch_order",),
    "_hook_on_batch_start_gather": ("batch_index", "x_batch", "y_batch", "batch_size"),
    "_hook_on_batch_start_slice": ("x_batch", "y_batch", "batch_size"),
    "_hook_on_batch_forward": ("y_prob", "loss_batch", "loss_task"),
    "_hook_on_batch_end": ("num_samples", "loss_total"),
    "_hook_on_batch_end_count_correct": ("num_correct",),
    "_hook_on_fit_end": ("results",),
    "_hook_on_fit_end_eval": ("results",),
}


def default_train_hooks() -> HookTable:
    table = HookTable()
    for trigger, fn in [
        ("on_fit_start", _hook_on_fit_start_init),
        ("on_epoch_start", _hook_on_epoch_start_shuffle),
        ("on_batch_start", _hook_on_batch_start_gather),
        ("on_batch_forward", _hook_on_batch_forward),
        ("on_batch_backward", _hook_on_batch_backward),
        ("on_batch_end", _hook_on_batch_end),
        ("on_fit_end", _hook_on_fit_end),
    ]:
        table.add(trigger, fn, owner="core")
    return table


def default_eval_hooks() -> HookTable:
    table = HookTable()
    for trigger, fn in [
        ("on_fit_start", _hook_on_fit_start_eval_init),
        ("on_batch_start", _hook_on_batch_start_slice),
        ("on_batch_forward", _hook_on_batch_forward),
        ("on_batch_end", _hook_on_batch_end),
        ("on_batch_end", _hook_on_batch_end_count_correct),
        ("on_fit_end", _hook_on_fit_end_eval),
    ]:
        table.add(trigger, fn, owner="core")
    return table
