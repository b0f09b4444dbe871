"""PyTorch's own shortcuts, taken a step earlier: when an nn.Module call or `train()` would do nothing beyond
one plain step, that step alone.

`callee(module)` is what `module(*args)` reduces to when nothing is registered: `nn.Module._call_impl`
calls `module.forward` directly when the module has no forward or backward hooks (nor pre-hooks), no
global ones are registered, it is not compiled and no JIT trace is running; `callee` makes the same
test and returns the bound `forward` then, else the module itself (the full call, hooks and all). The
test runs at every call, as PyTorch's does, so a hook registered at any time runs from the next call.

`already_training(model)` says whether `model.train()` would change nothing: every module in the tree
is in train mode and none has its own `train` or `__setattr__` (what `train()` runs per module).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn
from torch.nn.modules import module as nn_module

_CALL, _CALL_IMPL = nn.Module.__call__, nn.Module._call_impl
_TRAIN, _SETATTR = nn.Module.train, nn.Module.__setattr__
_tracing = torch._C._get_tracing_state


def plain_callable(obj: Any) -> bool:
    """Whether `obj` is an nn.Module whose call is nn.Module's own (`callee` may then skip it when nothing is
    registered); a class-level fact, checked once per routine."""
    cls = type(obj)
    return (isinstance(obj, nn.Module) and cls.__call__ is _CALL and cls._call_impl is _CALL_IMPL
            and "_call_impl" not in obj.__dict__)


def callee(module: nn.Module) -> Callable:
    """`module.forward` when calling the module would only call it (see the module docstring), else `module`.
    Only for a module that `plain_callable` accepted."""
    if (module._forward_hooks or module._forward_pre_hooks or module._backward_hooks or module._backward_pre_hooks
            or nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks
            or nn_module._global_backward_hooks or nn_module._global_backward_pre_hooks
            or module._compiled_call_impl is not None or _tracing()):
        return module
    return module.forward


def already_training(module: nn.Module) -> bool:
    """Whether `module.train()` would change nothing: `train` and `__setattr__` are nn.Module's own in every
    module of the tree (also not set on the instance) and every `training` flag is already True."""
    cls = type(module)
    if (cls.train is not _TRAIN or cls.__setattr__ is not _SETATTR or module.__dict__.get("training") is not True
            or "train" in module.__dict__):
        return False
    for child in module._modules.values():  # the modules `train()` recurses into
        if child is not None and not already_training(child):
            return False
    return True
