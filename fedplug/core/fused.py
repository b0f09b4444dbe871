"""The fused batch loop: an epoch's batches of the default train routine in one function, no hook calls.

`Trainer.run_routine` runs `train_batches` instead of the batch-level hooks when a routine's four
batch-level trigger points (on_batch_start, on_batch_forward, on_batch_backward, on_batch_end)
hold exactly the built-in train hooks, the same function objects as `default_hooks`, one each.
Then nothing but those hooks could read or write the Context between batches, so this loop may
keep the batch's values in local variables: it does the hooks' arithmetic in their order (the
hooks' own `gather` and `backward_step` around `ctx.model` and `ctx.criterion`, then the sample
count and the loss sum in the same Python float arithmetic) and leaves the Context as the hooks leave it after an epoch's batches (`cur_batch_i` the last batch, the
counters added to, the batch scope ended). Any other hook at one of those points, a plug-in's or
a user's, and the hooks run as written. Epoch- and fit-level hooks always run as hooks.
"""
from __future__ import annotations

import torch

from fedplug.core.context import Context
from fedplug.core.default_hooks import (_hook_on_batch_backward, _hook_on_batch_end, _hook_on_batch_forward,
                                        _hook_on_batch_start_gather, backward_step, gather)
from fedplug.core.hooks import HookFn

_DEFAULT_TRAIN_BATCH = (_hook_on_batch_start_gather, _hook_on_batch_forward, _hook_on_batch_backward,
                        _hook_on_batch_end)


def fusable(batch_start: tuple[HookFn, ...], forward: tuple[HookFn, ...], backward: tuple[HookFn, ...],
            batch_end: tuple[HookFn, ...]) -> bool:
    """Whether the batch-level hooks are exactly the default train ones (identity, not names: a replaced
    hook keeping a default's name is not fused)."""
    hooks = (batch_start, forward, backward, batch_end)
    return all(len(fns) == 1 and fns[0] is default for fns, default in zip(hooks, _DEFAULT_TRAIN_BATCH))


def train_batches(ctx: Context, batches: int) -> None:
    """The epoch's `batches` batches, as the four default train hooks run them (see the module docstring).

    The values the hooks read from the Context are read once per epoch: between batches only those
    hooks run, and they write none of them.
    """
    x, y, order, size = ctx.x, ctx.y, ctx.batch_order, ctx.batch_size_cfg
    model, criterion, optimizer = ctx.model, ctx.criterion, ctx.optimizer
    device, clip = ctx.get("device"), ctx.cfg.grad.grad_clip
    losses, sizes = [], []
    for batch_i in range(batches):
        start = batch_i * size
        index = order[start:start + size]
        x_batch, y_batch = gather(x, y, index, device)
        loss = criterion(model(x_batch), y_batch)
        backward_step(ctx, optimizer, loss, clip)
        losses.append(loss.detach())
        sizes.append(index.shape[0])
    # One read of the losses per epoch, not a `.item()` (a device sync) per batch; the same float32
    # values, summed in the same order as `_hook_on_batch_end` sums them.
    num_samples, loss_total = ctx.num_samples, ctx.loss_total
    for value, n in zip(torch.stack(losses).reshape(-1).tolist(), sizes):
        num_samples += n
        loss_total += value * n
    variables = ctx.__dict__
    variables["num_samples"], variables["loss_total"], variables["cur_batch_i"] = num_samples, loss_total, batches - 1
    ctx.end_scope("batch")  # what an epoch_start hook scoped to the batch is gone, as after the hooks' first batch
