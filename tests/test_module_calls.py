"""fedplug/core/module_calls.py: PyTorch's no-hook shortcuts, taken only where PyTorch itself takes them."""
from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.nn.modules.module import (register_module_forward_hook, register_module_forward_pre_hook,
                                     register_module_full_backward_hook, register_module_full_backward_pre_hook)

from fedplug.core.context import Context
from fedplug.core.default_hooks import _hook_on_fit_start_init
from fedplug.core.module_calls import already_training, callee, plain_callable


class OwnCall(nn.Linear):
    def __call__(self, *args, **kwargs):  # a class with its own call: never skipped
        return super().__call__(*args, **kwargs)


class OwnTrain(nn.Linear):
    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.train_calls = 0

    def train(self, mode: bool = True):
        self.train_calls += 1
        return super().train(mode)


def test_callee_is_forward_only_while_nothing_is_registered() -> None:
    m = nn.Linear(3, 2)
    assert callee(m) == m.forward
    registrations = [lambda: m.register_forward_hook(lambda *a: None),
                     lambda: m.register_forward_pre_hook(lambda *a: None),
                     lambda: m.register_full_backward_hook(lambda *a: None),
                     lambda: m.register_full_backward_pre_hook(lambda *a: None),
                     lambda: register_module_forward_hook(lambda *a: None),
                     lambda: register_module_forward_pre_hook(lambda *a: None),
                     lambda: register_module_full_backward_hook(lambda *a: None),
                     lambda: register_module_full_backward_pre_hook(lambda *a: None)]
    for register in registrations:
        handle = register()
        assert callee(m) is m
        handle.remove()
        assert callee(m) == m.forward  # removed: the shortcut again
    m.forward = lambda x: x  # an instance's own forward is what the call would run too
    assert callee(m) is m.forward


def test_a_compiled_module_and_a_jit_trace_take_the_full_call() -> None:
    compiled = nn.Linear(3, 2)
    compiled.compile(backend="eager")  # compiles at its first call, which this test never makes
    assert callee(compiled) is compiled
    plain, seen = nn.Linear(3, 2), []

    class Traced(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = plain

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(callee(self.inner))  # while the trace runs: the module, whose call the trace records
            return self.inner(x)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.trace: still what users' old code runs
        torch.jit.trace(Traced(), torch.zeros(1, 3), check_trace=False)  # one run: the trace itself
    assert seen == [plain] and callee(plain) == plain.forward


def test_only_modules_with_nn_modules_own_call_are_plain() -> None:
    assert plain_callable(nn.Linear(3, 2)) and plain_callable(nn.CrossEntropyLoss())
    assert not plain_callable(torch.nn.functional.cross_entropy)
    assert not plain_callable(OwnCall(3, 2))
    patched = nn.Linear(3, 2)
    patched._call_impl = lambda *a: None
    assert not plain_callable(patched)


def test_already_training_only_when_train_would_change_nothing() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Sequential(nn.ReLU(), nn.Linear(3, 2)))
    assert already_training(model)
    model[1][0].eval()  # one module deep down in eval mode
    assert not already_training(model)
    model.train()
    assert already_training(model)
    assert not already_training(nn.Sequential(OwnTrain(3, 2)))  # a train() of its own must run
    own = nn.Linear(3, 2)
    own.train = lambda mode=True: own
    assert not already_training(own)


def test_the_fit_start_hook_puts_the_model_in_train_mode(small_cfg) -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5), OwnTrain(3, 2))
    model[1].eval()
    ctx = Context(model=model, cfg=small_cfg(), lr=0.1)
    _hook_on_fit_start_init(ctx)
    assert all(m.training for m in model.modules()) and model[2].train_calls == 1
    _hook_on_fit_start_init(ctx)  # OwnTrain's train() runs at every fit, as model.train() runs it
    assert model[2].train_calls == 2
