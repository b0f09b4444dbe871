"""The fused batch loop: an epoch's batches of the default train routine in one function, no hook calls.

`Trainer.run_routine` runs `train_batches` instead of the batch-level hooks when a routine's four
batch-level trigger points (on_batch_start, on_batch_forward, on_batch_backward, on_batch_end)
hold exactly the built-in train hooks, the same function objects as `default_hooks`, one each.
Then nothing but those hooks could read or write the Context between batches, so this loop may
keep the batch's values in local variables: it does the hooks' arithmetic in their order (the
hooks' own `gather` and `backward_step` around `ctx.model` and `ctx.criterion`, then the sample
count and the loss sum in the same Python float arithmetic) and leaves the Context as the hooks
leave it after an epoch's batches (`cur_batch_i` the last batch, the counters added to, the batch
scope ended). Any other hook at one of those points, a plug-in's or a user's, and the hooks run as
written. Epoch- and fit-level hooks always run as hooks.

Two shortcuts, the same values: while no hook is registered on `ctx.model` or `ctx.criterion` (nor
a global module hook, nor compiled, nor traced), the loop calls their `forward` directly, which is
all `nn.Module.__call__` does then (fedplug/core/module_calls.py; asked at every batch, so a hook
registered at any time runs). On CPU each batch's loss is read at once with `.item()` (no device to
wait for, cheaper than stacking the epoch's losses); elsewhere once per epoch. Whether batches must be
moved to the device and whether a step has gradient transforms or clipping is asked once per epoch
(nothing that runs between the batches changes either); when neither, the loop makes `gather`'s two
index ops and `backward_step`'s three calls itself. Its zero_grad and step come from `optimizer_calls`, once per
epoch: the optimizer's, or SGD's arithmetic alone while nothing needs SGD's wrappers (fedplug/core/optimizer_calls.py).
"""
from __future__ import annotations

import torch

from fedplug.core.context import Context
from fedplug.core.default_hooks import (_hook_on_batch_backward, _hook_on_batch_end, _hook_on_batch_forward,
                                        _hook_on_batch_start_gather, backward_step, gather)
from fedplug.core.hooks import HookFn
from fedplug.core.module_calls import callee, plain_callable
from fedplug.core.optimizer_calls import optimizer_calls


def fusable(batch_start: tuple[HookFn, ...], forward: tuple[HookFn, ...], backward: tuple[HookFn, ...],
            batch_end: tuple[HookFn, ...]) -> bool:
    """Whether the batch-level hooks are exactly the default train ones (identity, not names: a replaced
    hook keeping a default's name is not fused)."""
    return (len(batch_start) == len(forward) == len(backward) == len(batch_end) == 1
            and batch_start[0] is _hook_on_batch_start_gather and forward[0] is _hook_on_batch_forward
            and backward[0] is _hook_on_batch_backward and batch_end[0] is _hook_on_batch_end)


def train_batches(ctx: Context, batches: int) -> None:
    """The epoch's `batches` batches, as the four default train hooks run them (see the module docstring).

    The values the hooks read from the Context are read once per epoch: between batches only those
    hooks run, and they write none of them.
    """
    x, y, order, size = ctx.x, ctx.y, ctx.batch_order, ctx.batch_size_cfg
    model, criterion, optimizer = ctx.model, ctx.criterion, ctx.optimizer
    device, clip = ctx.get("device"), ctx.cfg.grad.grad_clip
    # `forward` itself when calling the module would do nothing more (fedplug/core/module_calls.py), asked per call
    model_plain, criterion_plain = plain_callable(model), plain_callable(criterion)
    read_now = reads_each_loss(device)
    # Asked once per epoch, what `gather` and `backward_step` would find at every batch: rows of tensors on the
    # model's device stay there (two index ops), and with no gradient transform and no clipping a step is
    # zero_grad, backward, step.
    in_place = (type(x) is torch.Tensor and type(y) is torch.Tensor
                and (device is None or x.device == device == y.device))
    bare_step = not ctx.get("gradient_transforms") and not clip > 0
    zero_grad, step = optimizer_calls(optimizer)  # SGD's own, or its arithmetic alone (optimizer_calls.py)
    losses, sizes = [], []  # losses: floats when read_now, else the 0-d tensors, read after the last batch
    for batch_i in range(batches):
        start = batch_i * size
        index = order[start:start + size]
        x_batch, y_batch = (x[index], y[index]) if in_place else gather(x, y, index, device)
        y_prob = (callee(model) if model_plain else model)(x_batch)
        loss = (callee(criterion) if criterion_plain else criterion)(y_prob, y_batch)
        if bare_step:
            zero_grad()
            loss.backward()
            step()
        else:
            backward_step(ctx, zero_grad, step, loss, clip)
        losses.append(loss.item() if read_now else loss.detach())
        sizes.append(index.shape[0])
    # Either way the same float32 values, summed in the same order as `_hook_on_batch_end` sums them.
    num_samples, loss_total = ctx.num_samples, ctx.loss_total
    for value, n in zip(losses if read_now else torch.stack(losses).reshape(-1).tolist(), sizes):
        num_samples += n
        loss_total += value * n
    variables = ctx.__dict__
    variables["num_samples"], variables["loss_total"], variables["cur_batch_i"] = num_samples, loss_total, batches - 1
    ctx.end_scope("batch")  # what an epoch_start hook scoped to the batch is gone, as after the hooks' first batch


def reads_each_loss(device: torch.device | None) -> bool:
    """Whether to read each batch's loss at once (`.item()`): on CPU, where that waits for no device and costs
    less than stacking the epoch's losses; elsewhere one read per epoch, not a device sync per batch."""
    return device is not None and torch.device(device).type == "cpu"
