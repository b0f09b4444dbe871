"""SGD's arithmetic called directly (fedplug/core/optimizer_calls.py) equals torch.optim.SGD's own calls, bit for bit,
and the optimizer's calls are made whenever something could tell the difference."""
from __future__ import annotations

from typing import Callable

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from fedplug.core import default_hooks, fused, optimizer_calls as calls_module
from fedplug.core.optimizer_calls import optimizer_calls
from fedplug.core.trainer import Trainer
from fedplug.device import deterministic
from test_device import DEVICES


def model_and_batches(device: str = "cpu") -> tuple[torch.nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    """A small net with a parameter that gets no gradient (`unused`), and five batches, on `device`."""
    gen = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))
    model.register_parameter("unused", torch.nn.Parameter(torch.ones(2)))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    batches = [(torch.randn(6, 5, generator=gen), torch.randint(0, 3, (6,), generator=gen)) for _ in range(5)]
    return model.to(device), [(x.to(device), y.to(device)) for x, y in batches]


def make_sgd(model: torch.nn.Module, options: dict) -> torch.optim.SGD:
    groups = options.pop("groups", None)
    if groups:  # one group per layer, each with its own options
        params = [{"params": list(layer.parameters()), **extra} for layer, extra in zip((model[0], model[2]), groups)]
        params.append({"params": [model.unused]})
        return torch.optim.SGD(params, **options)
    return torch.optim.SGD(model.parameters(), **options)


def train(options: dict, direct: bool, register: Callable | None = None, device: str = "cpu") -> list[torch.Tensor]:
    """The parameters and the momentum buffers after five steps; after the second the learning rates halve (read at
    each step, as SGD reads them). `register(optimizer)`, called once the calls are made, returns a handle removed
    after the steps."""
    model, batches = model_and_batches(device)
    optimizer = make_sgd(model, dict(options))
    zero_grad, step = optimizer_calls(optimizer) if direct else (optimizer.zero_grad, optimizer.step)
    handle = register(optimizer) if register else None
    try:
        for i, (x, y) in enumerate(batches):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            zero_grad()
            loss.backward()
            step()
            if i == 1:
                for group in optimizer.param_groups:
                    group["lr"] *= 0.5
    finally:
        if handle is not None:
            handle.remove()
    buffers = [optimizer.state[p]["momentum_buffer"] for p in model.parameters() if optimizer.state[p]]
    return [p.detach().clone() for p in model.parameters()] + buffers


OPTIONS = {
    "plain": {"lr": 0.1},
    "weight_decay": {"lr": 0.1, "weight_decay": 0.05},
    "maximize": {"lr": 0.01, "maximize": True},
    "foreach": {"lr": 0.1, "foreach": True},
    "no_foreach": {"lr": 0.1, "foreach": False},
    "groups": {"lr": 0.1, "groups": [{"lr": 0.3, "weight_decay": 0.1}, {"lr": 0.05, "momentum": 0.5}]},
    "momentum": {"lr": 0.1, "momentum": 0.9},
    "nesterov": {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01},
    "dampening": {"lr": 0.1, "momentum": 0.9, "dampening": 0.3, "foreach": True},
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", OPTIONS)
def test_direct_calls_equal_sgds_own(case: str, device: str) -> None:
    """On each device (on CUDA SGD picks `foreach`): the same parameters, to the bit (deterministic kernels)."""
    model, _ = model_and_batches(device)
    zero_grad, step = optimizer_calls(make_sgd(model, dict(OPTIONS[case])))
    assert getattr(step, "__self__", None) is None, "a plain SGD takes the direct calls"
    with deterministic(True, torch.device(device)):
        direct, own = train(OPTIONS[case], True, device=device), train(OPTIONS[case], False, device=device)
    assert len(direct) == len(own) and all(torch.equal(a, b) for a, b in zip(direct, own))
    assert not torch.equal(direct[0], model[0].weight)  # it trained


def scheduled(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    torch.optim.lr_scheduler.StepLR(optimizer, step_size=2)  # wraps `step` on the instance
    return optimizer


class MySGD(torch.optim.SGD):
    pass


KEPT = {  # an optimizer whose own calls must be made
    "adam": lambda m: torch.optim.Adam(m.parameters()),
    "subclass": lambda m: MySGD(m.parameters(), lr=0.1),
    "lr_scheduler": lambda m: scheduled(torch.optim.SGD(m.parameters(), lr=0.1)),
    "differentiable": lambda m: torch.optim.SGD(m.parameters(), lr=0.1, differentiable=True),
    "tensor_lr": lambda m: torch.optim.SGD(m.parameters(), lr=torch.tensor(0.1)),
}


@pytest.mark.parametrize("case", KEPT)
def test_the_optimizers_own_calls_where_it_does_more(case: str) -> None:
    optimizer = KEPT[case](model_and_batches()[0])
    zero_grad, step = optimizer_calls(optimizer)
    assert zero_grad == optimizer.zero_grad and step == optimizer.step


@pytest.mark.parametrize("method", ["zero_grad", "step"])
def test_the_optimizers_own_calls_where_torchs_are_patched(monkeypatch, method: str) -> None:
    """A method of torch's SGD replaced (as tools that instrument optimizers do) is called."""
    own = getattr(torch.optim.SGD, method)
    monkeypatch.setattr(torch.optim.SGD, method, lambda self, *args, **kwargs: own(self, *args, **kwargs))
    optimizer = torch.optim.SGD(model_and_batches()[0].parameters(), lr=0.1)
    zero_grad, step = optimizer_calls(optimizer)
    assert zero_grad == optimizer.zero_grad and step == optimizer.step


@pytest.mark.parametrize("where", ["pre", "post", "global_pre", "global_post"])
def test_a_step_hook_registered_later_runs(where: str) -> None:
    """A step hook registered after the calls were made (on the optimizer or globally) runs at every step."""
    seen: list[int] = []
    hook = lambda opt, args, kwargs: seen.append(1)  # noqa: E731
    register = {"pre": lambda opt: opt.register_step_pre_hook(hook),
                "post": lambda opt: opt.register_step_post_hook(hook),
                "global_pre": lambda opt: register_optimizer_step_pre_hook(hook),
                "global_post": lambda opt: register_optimizer_step_post_hook(hook)}[where]
    params = train(OPTIONS["plain"], direct=True, register=register)
    assert len(seen) == len(model_and_batches()[1])
    assert all(torch.equal(a, b) for a, b in zip(params, train(OPTIONS["plain"], direct=False)))


def test_a_running_profiler_sees_the_optimizers_ranges(small_cfg) -> None:
    """Under torch.profiler a local update shows each step's `Optimizer.step` and `Optimizer.zero_grad` ranges,
    as it would without the direct calls."""
    cfg = small_cfg(dataloader__batch_size=4)
    x, y = torch.randn(23, 5, generator=torch.Generator().manual_seed(1)), torch.arange(23) % 3
    trainer = Trainer(torch.nn.Linear(5, 3), cfg)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        results = trainer.train(x, y, torch.Generator().manual_seed(7))
    names = [event.name for event in prof.events()]
    assert names.count("Optimizer.step#SGD.step") == results["train_steps"] > 0
    assert names.count("Optimizer.zero_grad#SGD.zero_grad") == results["train_steps"]


UPDATES = {  # how a local update steps: the fused loop, with transforms, with clipping, or through the hooks
    "fused": ({}, False, False),
    "transforms": ({}, True, False),
    "grad_clip": ({"grad__grad_clip": 0.05}, False, False),
    "weight_decay": ({"train__optimizer__weight_decay": 0.01}, False, False),
    "momentum": ({"train__optimizer__momentum": 0.9}, False, False),
    "hooks": ({}, False, True),
}


@pytest.mark.parametrize("case", UPDATES)
def test_a_local_update_equals_one_with_sgds_own_calls(small_cfg, monkeypatch, case: str) -> None:
    overrides, transforms, through_hooks = UPDATES[case]
    cfg = small_cfg(dataloader__batch_size=4, **overrides)
    x, y = torch.randn(23, 5, generator=torch.Generator().manual_seed(1)), torch.arange(23) % 3
    made: list[bool] = []

    def spy(optimizer):
        pair = optimizer_calls(optimizer)
        made.append(getattr(pair[1], "__self__", None) is None)
        return pair

    runs = []
    for own in (False, True):
        with monkeypatch.context() as patch:
            chosen = (lambda opt: (opt.zero_grad, opt.step)) if own else spy
            patch.setattr(fused, "optimizer_calls", chosen)
            patch.setattr(default_hooks, "optimizer_calls", chosen)
            torch.manual_seed(0)
            model = torch.nn.Linear(5, 3)
            trainer = Trainer(model, cfg)
            table = trainer.hooks["train"].copy()
            if through_hooks:
                table.add("on_batch_end", lambda ctx: None, "noop")
            extra = {}
            if transforms:
                extra = {"gradient_transforms": [lambda grads, values: {n: 0.5 * g + 0.1 * values[n]
                                                                        for n, g in grads.items()}],
                         "global_params": {n: p.detach().clone() for n, p in model.named_parameters()}}
            results = trainer.train(x, y, torch.Generator().manual_seed(7), table=table, **extra)
            runs.append(([p.detach().clone() for p in model.parameters()], results))
    assert made and all(made), "the direct calls were taken"
    (direct_params, direct_results), (own_params, own_results) = runs
    assert all(torch.equal(a, b) for a, b in zip(direct_params, own_params)) and direct_results == own_results


def test_the_default_routine_builds_a_plain_sgd(small_cfg) -> None:
    """The direct calls pay only if the optimizer the default hooks build is one they accept."""
    trainer = Trainer(torch.nn.Linear(5, 3), small_cfg())
    seen: list[bool] = []
    table = trainer.hooks["train"].copy()
    table.add("on_epoch_start", lambda ctx: seen.append(calls_module.plain_sgd(ctx.optimizer)), "see")
    trainer.train(torch.randn(8, 5), torch.arange(8) % 3, torch.Generator().manual_seed(0), table=table)
    assert seen and all(seen)
