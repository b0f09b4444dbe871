"""The fused batch loop (fedplug/core/fused.py) equals the default hooks it stands for, bit for bit.

Each case trains once through the fused loop (the default train table) and once through the hooks (the same
table plus a no-op hook at on_batch_end, which turns fusion off) and compares the parameters, the results and
what an epoch_end hook sees in the Context.
"""
from __future__ import annotations

import pytest
import torch
from torch.nn.modules.module import register_module_forward_hook

from fedplug.backends.sequential import SequentialBackend
from fedplug.core import default_hooks, fused, module_calls, trainer as trainer_module
from fedplug.core.context import Context, CtxVar
from fedplug.core.hooks import HookTable
from fedplug.core.messages import RoundFacts
from fedplug.core.trainer import Trainer
from fedplug.data import build_data
from fedplug.models import build_model
from fedplug.run.plan import build_plan


def unfused(table: HookTable) -> HookTable:
    """The same routine run through its hooks: any extra hook at a batch point turns fusion off."""
    table = table.copy()
    table.add("on_batch_end", lambda ctx: None, "noop")
    return table


def batch_points(table: HookTable) -> tuple:
    return table.functions()[2:6]


@pytest.fixture
def fused_calls(monkeypatch) -> list[int]:
    """The batch counts the fused loop ran, to check which path a routine took."""
    calls: list[int] = []

    def spy(ctx: Context, batches: int) -> None:
        calls.append(batches)
        fused.train_batches(ctx, batches)

    monkeypatch.setattr(trainer_module, "train_batches", spy)
    return calls


def snapshot(ctx: Context) -> dict:
    """What an epoch_end or fit_end hook may read: the names set, their scopes, the counters and indices."""
    return {"names": sorted(ctx.__dict__), "scoped": {s: sorted(n) for s, n in ctx._scoped.items()},
            "values": [ctx.get(n) for n in ("cur_epoch_i", "cur_batch_i", "num_samples", "loss_total")]}


def train_both(cfg, n: int = 23, transforms: list | None = None, device: torch.device | None = None,
               model_type: type = torch.nn.Linear, criterion_type: type = torch.nn.CrossEntropyLoss) -> list[dict]:
    """(fused, hooks): the parameters, the results and the epoch_end snapshots of one local update each way."""
    x, y = torch.randn(n, 5, generator=torch.Generator().manual_seed(1)), torch.arange(n) % 3
    runs = []
    for make_table in (lambda t: t, unfused):
        model = model_type(5, 3)
        with torch.no_grad():
            for i, p in enumerate(model.parameters()):
                p.copy_(torch.linspace(-1, 1, p.numel()).view_as(p) * (i + 1))
        trainer = Trainer(model, cfg, criterion_type())
        seen: list[dict] = []
        table = make_table(trainer.hooks["train"])
        table.add("on_epoch_start", lambda ctx: setattr(ctx, "mine", CtxVar(1, "batch")), "scoped_at_epoch_start")
        table.add("on_epoch_end", lambda ctx: seen.append(snapshot(ctx)), "see")
        extra = {}
        if transforms is not None:
            extra = {"gradient_transforms": transforms, "global_params": {n: p.detach().clone()
                                                                         for n, p in model.named_parameters()}}
        loader, train = cfg.dataloader, cfg.train
        per_epoch, epochs, last = trainer_module.schedule(n, loader.batch_size, loader.drop_last,
                                                          train.local_update_steps, train.batch_or_epoch)
        ctx = trainer._context("train", "train", x, y, loader.batch_size, per_epoch, epochs, last,
                               generator=torch.Generator().manual_seed(7), lr=train.optimizer.lr, **extra)
        if device is not None:
            ctx.device = device
        trainer.run_routine(table, ctx)
        runs.append({"params": [p.detach().clone() for p in model.parameters()], "results": ctx.results,
                     "seen": seen, "after": snapshot(ctx)})
    return runs


def assert_same(runs: list[dict]) -> None:
    by_fused, by_hooks = runs
    assert all(torch.equal(a, b) for a, b in zip(by_fused["params"], by_hooks["params"]))
    assert by_fused["results"] == by_hooks["results"]  # train_loss to the last bit
    assert by_fused["seen"] == by_hooks["seen"] and by_fused["after"] == by_hooks["after"]


CASES = {
    "plain": {},
    "grad_clip": {"grad__grad_clip": 0.05},
    "momentum_weight_decay": {"train__optimizer__momentum": 0.9, "train__optimizer__weight_decay": 0.01},
    "drop_last": {"dataloader__drop_last": True},
    "batch_schedule": {"train__batch_or_epoch": "batch", "train__local_update_steps": 11},
    "epoch_schedule": {"train__batch_or_epoch": "epoch", "train__local_update_steps": 3},
}


@pytest.mark.parametrize("case", CASES)
def test_fused_equals_the_hooks(small_cfg, fused_calls, case: str) -> None:
    cfg = small_cfg(dataloader__batch_size=4, **CASES[case])
    runs = train_both(cfg)
    assert fused_calls, "the default table must take the fused loop"
    assert sum(fused_calls) == runs[0]["results"]["train_steps"]
    assert len(runs[0]["seen"]) == len(fused_calls)  # one epoch_end per fused epoch
    assert_same(runs)


@pytest.mark.parametrize("clip", [0.0, 0.3])
def test_gradient_transforms_and_clip_in_the_fused_loop(small_cfg, fused_calls, clip: float) -> None:
    def halve_and_pull(grads, values):
        return {n: 0.5 * g + 0.1 * values[n] for n, g in grads.items()}

    runs = train_both(small_cfg(dataloader__batch_size=4, grad__grad_clip=clip), transforms=[halve_and_pull] * 2)
    assert fused_calls
    assert_same(runs)


def test_batches_moved_to_the_device_in_the_fused_loop(small_cfg, fused_calls, monkeypatch) -> None:
    # On CPU `cpu:0` differs from the data's `cpu`: the move runs (a copy-free `.to`), the code path of pinned data.
    # Both paths gather through default_hooks.gather: x and y moved per batch, in the fused run and the hooks' run.
    moves: list[int] = []
    monkeypatch.setattr(default_hooks, "on_device", lambda t, d: moves.append(1) or t.to(d))
    runs = train_both(small_cfg(dataloader__batch_size=4), device=torch.device("cpu", 0))
    assert fused_calls and len(moves) == 2 * 2 * sum(fused_calls)
    assert_same(runs)


def test_any_other_batch_hook_turns_fusion_off(small_cfg) -> None:
    table = Trainer(torch.nn.Linear(5, 3), small_cfg()).hooks["train"]
    assert fused.fusable(*batch_points(table))
    for trigger in ("on_batch_start", "on_batch_forward", "on_batch_backward", "on_batch_end"):
        other = table.copy()
        other.add(trigger, lambda ctx: None, "noop")
        assert not fused.fusable(*batch_points(other)), trigger
    renamed = table.copy()  # a user's function under a default's name is not the default
    renamed.replace("on_batch_forward", "_hook_on_batch_forward", lambda ctx: None, "_hook_on_batch_forward")
    assert not fused.fusable(*batch_points(renamed))
    assert not fused.fusable(*batch_points(Trainer(torch.nn.Linear(5, 3), small_cfg()).hooks["eval"]))


@pytest.mark.parametrize("plugin", ["fedavg", "scaffold", "fedprox"])
def test_sequential_visits_equal_the_hooks(small_cfg, fused_calls, plugin: str) -> None:
    """A runner's visits (download, plug-in gradient transforms, uploads): the fused loop where the plan's batch
    points hold only the defaults (FedAvg, SCAFFOLD), the hooks where a plug-in adds one (FedProx)."""
    cfg = small_cfg(**({} if plugin == "fedavg" else {f"{plugin}__use": True}))
    uploads = []
    for hooks in (False, True):
        data, plan = build_data(cfg), build_plan(cfg)
        backend = SequentialBackend(cfg, build_model(cfg, data.input_shape, plan), plan, data)
        if hooks:
            backend.trainer.hooks["train"] = unfused(backend.trainer.hooks["train"])
        global_params = {n: t.clone() for n, t in backend.shared_parameters().items()}
        messages = plan.messages(global_params)
        runs = []
        for round_num, client in ((1, 0), (1, 3), (2, 0)):
            facts = RoundFacts(round_num, data.num_clients, (0, 3), global_params)
            result = backend.train_client(client, round_num, global_params, plan.broadcast(facts, messages))
            runs.append(({n: t.clone() for n, t in result["params"].items()}, result["train_loss"],
                         {k: {n: t.clone() for n, t in v.items()} for k, v in result["extras"].items()}))
        uploads.append(runs)
    assert bool(fused_calls) == (plugin != "fedprox")
    for (p1, loss1, e1), (p2, loss2, e2) in zip(*uploads):
        assert loss1 == loss2
        assert all(torch.equal(p1[n], p2[n]) for n in p1)
        assert e1.keys() == e2.keys() and all(torch.equal(e1[k][n], e2[k][n]) for k in e1 for n in e1[k])


HOOKS = {  # where -> (register(model, criterion, calls) -> handle, hook calls per batch)
    "model_forward": (lambda m, c, calls: m.register_forward_hook(lambda mod, i, out: calls.append(1) or out * 0.5), 1),
    "model_pre": (lambda m, c, calls: m.register_forward_pre_hook(lambda mod, args: calls.append(1) or (args[0] * 2,)),
                  1),
    "criterion_forward": (lambda m, c, calls: c.register_forward_hook(lambda mod, i, out: calls.append(1) or out * 3),
                          1),
    "criterion_pre": (lambda m, c, calls: c.register_forward_pre_hook(
        lambda mod, args: calls.append(1) or (args[0] * 0.25, args[1])), 1),
    "global_forward": (lambda m, c, calls: register_module_forward_hook(
        lambda mod, i, out: calls.append(1) or (out * 0.5 if mod is m else None)), 2),
}


def train_with_hook(cfg, where: str | None, table_of) -> tuple[list[torch.Tensor], dict, int]:
    """(parameters, results, hook calls) of one local update, with the hook `where` registered (None: no hook)."""
    x, y = torch.randn(23, 5, generator=torch.Generator().manual_seed(1)), torch.arange(23) % 3
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    trainer = Trainer(model, cfg)
    calls: list[int] = []
    handle = HOOKS[where][0](model, trainer.criterion, calls) if where else None
    try:
        results = trainer.train(x, y, torch.Generator().manual_seed(7), table=table_of(trainer.hooks["train"]))
    finally:
        if handle is not None:
            handle.remove()
    return [p.detach().clone() for p in model.parameters()], results, len(calls)


@pytest.mark.parametrize("where", HOOKS)
def test_a_module_hook_runs_in_the_fused_loop(small_cfg, fused_calls, where: str) -> None:
    """The fused loop calls `forward` itself only while nothing is registered: a forward hook or pre-hook on the
    model or the criterion, or a global one, runs at every batch as through the hooks, bit for bit."""
    cfg = small_cfg(dataloader__batch_size=4)
    fused_params, fused_results, fused_hook_calls = train_with_hook(cfg, where, lambda t: t)
    assert sum(fused_calls) == fused_results["train_steps"]
    assert fused_hook_calls == HOOKS[where][1] * fused_results["train_steps"]
    hooks_params, hooks_results, hooks_calls = train_with_hook(cfg, where, unfused)
    assert hooks_calls == fused_hook_calls
    assert all(torch.equal(a, b) for a, b in zip(fused_params, hooks_params)) and fused_results == hooks_results
    plain_params, _, _ = train_with_hook(cfg, None, lambda t: t)
    assert not all(torch.equal(a, b) for a, b in zip(fused_params, plain_params))  # the hook changed the training


def test_losses_read_once_per_epoch_off_cpu(small_cfg, fused_calls, monkeypatch) -> None:
    """Off CPU the fused loop keeps the losses as tensors and reads them after the epoch: the same sums."""
    monkeypatch.setattr(fused, "reads_each_loss", lambda device: False)
    runs = train_both(small_cfg(dataloader__batch_size=4, train__batch_or_epoch="epoch", train__local_update_steps=2))
    assert fused_calls
    assert_same(runs)


def test_the_fused_loop_skips_the_module_call_when_nothing_is_registered(small_cfg, monkeypatch) -> None:
    asked: list[tuple[str, bool]] = []

    def spy(module):
        target = module_calls.callee(module)
        asked.append((type(module).__name__, target is not module))
        return target

    monkeypatch.setattr(fused, "callee", spy)
    runs = train_both(small_cfg(dataloader__batch_size=4))
    steps = runs[0]["results"]["train_steps"]  # the model's and the criterion's forward, at every batch
    assert sorted(asked) == [("CrossEntropyLoss", True)] * steps + [("Linear", True)] * steps


def counted(base: type) -> type:
    class Counted(base):
        calls = 0

        def __call__(self, *args, **kwargs):  # a call of its own: the loop must make it, never skip to forward
            type(self).calls += 1
            return super().__call__(*args, **kwargs)
    return Counted


def test_a_module_with_a_call_of_its_own_is_called_in_the_fused_loop(small_cfg, fused_calls) -> None:
    model_type, criterion_type = counted(torch.nn.Linear), counted(torch.nn.CrossEntropyLoss)
    runs = train_both(small_cfg(dataloader__batch_size=4), model_type=model_type, criterion_type=criterion_type)
    assert fused_calls and model_type.calls == criterion_type.calls == 2 * runs[0]["results"]["train_steps"]
    assert_same(runs)


def test_each_loss_is_read_at_once_on_cpu_only(small_cfg, monkeypatch) -> None:
    assert fused.reads_each_loss(torch.device("cpu")) and fused.reads_each_loss("cpu")
    assert not fused.reads_each_loss(None) and not fused.reads_each_loss(torch.device("meta"))
    asked: list = []
    monkeypatch.setattr(fused, "reads_each_loss", lambda device: asked.append(device) or True)
    train_both(small_cfg(dataloader__batch_size=4), device=torch.device("cpu"))
    assert asked == [torch.device("cpu")]  # once, by the fused run, with the batches' device
