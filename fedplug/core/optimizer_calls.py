"""torch.optim.SGD's `zero_grad()` and `step()`, taken a step earlier: when they would do nothing beyond their
arithmetic, the arithmetic alone.

Around its arithmetic `Optimizer.zero_grad` opens a profiler range (a dispatcher op in and one out) behind a
dynamo guard, and `SGD.step` opens another, switches grad mode twice, runs the optimizer step hooks and
gathers its parameter group; on a small model that costs more than the update itself (on CPU, a 60x10
linear layer: about 45 us of a 130 us batch). `optimizer_calls(optimizer)` returns (zero_grad, step): the
optimizer's own, or, when the optimizer is a torch.optim.SGD as torch made it (SGD's own `step` and
`zero_grad`, none set on the instance, as an LR scheduler sets `step`; no tensor learning rate; not
differentiable, not fused; no gradient scaling), functions making the same tensor operations: the gradients
set to None; under no_grad, torch.optim's functional `sgd` on the parameters that have a gradient, with
`foreach` as SGD would pick it and the momentum buffers read from and kept in `optimizer.state` as SGD keeps
them, or, with one group, no momentum, no weight decay, no maximize and one tensor at a time (SGD's pick on
CPU), the update that call makes, `p.add_(grad, alpha=-lr)` per parameter, written here because the call
costs more than the update.

What changes only by code outside an epoch's batches (the class, the instance's methods, the groups'
options but the learning rate) is asked when the functions are made: once per epoch in the fused loop,
at every step through the hooks. What any code may change at any time is asked at every call, as torch
asks it: the step hooks (the optimizer's and the global ones) and a running profiler (whose trace must
show the optimizer's ranges) send the call to the optimizer; the learning rate is read at each step.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.autograd import profiler
from torch.optim import optimizer as torch_optimizer
from torch.optim.sgd import sgd


def _unhooked(step: Callable) -> Callable:
    """SGD.step as the class defines it: the first SGD made wraps the class's `step` once (`hooked`)."""
    return step.__wrapped__ if getattr(step, "hooked", False) else step


_SGD_STEP = _unhooked(torch.optim.SGD.__dict__["step"])
_ZERO_GRAD = torch.optim.Optimizer.zero_grad


def plain_sgd(optimizer: torch.optim.Optimizer) -> bool:
    """Whether `optimizer` is a torch.optim.SGD whose `zero_grad` and `step` would only do their arithmetic (see the
    module docstring); the step hooks and the profiler are asked at each step."""
    cls, own = type(optimizer), vars(optimizer)
    return (cls is torch.optim.SGD and _unhooked(cls.step) is _SGD_STEP and cls.zero_grad is _ZERO_GRAD
            and "step" not in own and "zero_grad" not in own
            and getattr(optimizer, "grad_scale", None) is None and getattr(optimizer, "found_inf", None) is None
            and all(not group["differentiable"] and not group["fused"] and not isinstance(group["lr"], torch.Tensor)
                    for group in optimizer.param_groups))


def optimizer_calls(optimizer: torch.optim.Optimizer) -> tuple[Callable[[], None], Callable[[], None]]:
    """(zero_grad, step): `optimizer.zero_grad` and `optimizer.step`, or, when `plain_sgd(optimizer)`, functions
    doing their arithmetic alone while nothing needs SGD's wrappers (asked at each call)."""
    if not plain_sgd(optimizer):
        return optimizer.zero_grad, optimizer.step
    groups = optimizer.param_groups
    params = [p for group in groups for p in group["params"]]
    # What SGD.step's functional call picks when the group leaves it open: a fact of the parameters' types
    # and devices, which no batch changes.
    foreach = [group["foreach"] if group["foreach"] is not None
               else torch_optimizer._default_to_fused_or_foreach(group["params"], differentiable=False)[1]
               for group in groups]
    # One group, no momentum, no weight decay, no maximize, one tensor at a time (SGD's pick on CPU): then the
    # functional's update is `p.add_(grad, alpha=-lr)` per parameter with a gradient, made here for less.
    only = groups[0]
    single = (len(groups) == 1 and not foreach[0] and only["momentum"] == 0 and only["weight_decay"] == 0
              and not only["maximize"])
    pre_hooks, post_hooks = optimizer._optimizer_step_pre_hooks, optimizer._optimizer_step_post_hooks

    def zero_grad() -> None:
        if profiler._is_profiler_enabled:
            optimizer.zero_grad()
            return
        for p in params:
            p.grad = None

    def step() -> None:
        if (pre_hooks or post_hooks or torch_optimizer._global_optimizer_pre_hooks
                or torch_optimizer._global_optimizer_post_hooks or profiler._is_profiler_enabled):
            optimizer.step()
            return
        with torch.no_grad():
            if single:
                lr = only["lr"]
                for p in params:
                    if p.grad is not None:
                        p.add_(p.grad, alpha=-lr)
                return
            state = optimizer.state
            for group, group_foreach in zip(groups, foreach):
                with_grad = [p for p in group["params"] if p.grad is not None]
                grads = [p.grad for p in with_grad]
                momentum = group["momentum"]
                # SGD.step's list: the buffers with momentum (None before the first step), else none at all
                buffers = [state[p].get("momentum_buffer") for p in with_grad] if momentum != 0 else []
                sgd(with_grad, grads, buffers, has_sparse_grad=any(g.is_sparse for g in grads), foreach=group_foreach,
                    weight_decay=group["weight_decay"], momentum=momentum, lr=group["lr"],
                    dampening=group["dampening"], nesterov=group["nesterov"], maximize=group["maximize"])
                for p, buffer in zip(with_grad, buffers):  # where SGD keeps them (a first step made them new)
                    state[p]["momentum_buffer"] = buffer

    return zero_grad, step
