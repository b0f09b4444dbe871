"""The hook engine: the order hooks fire in is a contract, pinned here whole."""
from __future__ import annotations

import pytest
import torch

from fedplug.core.context import Context, CtxVar
from fedplug.core.hooks import TRIGGERS
from fedplug.core.trainer import Trainer, schedule
from fedplug.errors import DataError


def make_trainer(small_cfg, **overrides) -> Trainer:
    cfg = small_cfg(dataloader__batch_size=2, train__local_update_steps=4, **overrides)
    return Trainer(torch.nn.Linear(3, 2), cfg)


def data(n: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(n, 3), torch.arange(n) % 2


def record_every_hook(trainer: Trainer, routine: str, calls: list[str]) -> None:
    """Wrap each hook so that it logs `trigger:name` (with epoch/batch indices) before running."""
    table = trainer.hooks[routine]
    for trigger in TRIGGERS:
        for name in table.names(trigger):
            fn = next(h.fn for t, hooks in table for h in hooks if t == trigger and h.name == name)

            def wrapped(ctx, fn=fn, trigger=trigger, name=name):
                where = f"e{ctx.cur_epoch_i}" if "epoch" in trigger or "batch" in trigger else ""
                where += f"b{ctx.cur_batch_i}" if "batch" in trigger else ""
                calls.append(f"{trigger}{'@' + where if where else ''}:{name}")
                fn(ctx)

            table.replace(trigger, name, wrapped, new_name=name)


def test_full_hook_sequence_of_one_local_update(small_cfg) -> None:
    # 5 samples, batch 2 -> 3 batches per epoch (2, 2, 1); 4 steps -> a full epoch, then 1 batch.
    trainer = make_trainer(small_cfg)
    calls: list[str] = []
    record_every_hook(trainer, "train", calls)
    result = trainer.train(*data(), generator=torch.Generator().manual_seed(0))
    batch = ["on_batch_start@{w}:_hook_on_batch_start_gather", "on_batch_forward@{w}:_hook_on_batch_forward",
             "on_batch_backward@{w}:_hook_on_batch_backward", "on_batch_end@{w}:_hook_on_batch_end"]
    expected = ["on_fit_start:_hook_on_fit_start_init", "on_epoch_start@e0:_hook_on_epoch_start_shuffle"]
    expected += [c.format(w=f"e0b{b}") for b in range(3) for c in batch]
    expected += ["on_epoch_start@e1:_hook_on_epoch_start_shuffle"]
    expected += [c.format(w="e1b0") for c in batch]
    expected += ["on_fit_end:_hook_on_fit_end"]
    assert calls == expected
    assert result["train_total"] == 2 + 2 + 1 + 2  # samples processed, the aggregation weight


def test_eval_sequence_has_no_backward_and_counts_correct(small_cfg) -> None:
    trainer = make_trainer(small_cfg, eval__batch_size=4)
    calls: list[str] = []
    record_every_hook(trainer, "eval", calls)
    x, y = data()
    result = trainer.evaluate(x, y, split="test")
    assert [c for c in calls if "backward" in c] == []
    assert sum("on_batch_forward" in c for c in calls) == 2  # 4 + 1 samples
    with torch.no_grad():
        logits = trainer.model(x)
    assert result["test_correct"] == int((logits.argmax(1) == y).sum())
    assert result["test_total"] == 5
    assert result["test_loss_sum"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, y)) * 5, rel=1e-5)


@pytest.mark.parametrize("n, bs, drop_last, steps, unit, expected", [
    (60, 64, False, 10, "batch", (1, 10, 1)),  # a small client cycles over 10 reshuffled epochs
    (200, 64, False, 10, "batch", (4, 3, 2)),
    (128, 64, False, 4, "batch", (2, 2, 2)),
    (130, 64, True, 3, "epoch", (2, 3, 2)),
])
def test_schedule(n, bs, drop_last, steps, unit, expected) -> None:
    assert schedule(n, bs, drop_last, steps, unit) == expected


def test_client_too_small_for_one_batch_is_a_clear_error() -> None:
    with pytest.raises(DataError, match="a client has 3 samples: not one batch of 4"):
        schedule(3, 4, True, 1, "batch")


def test_add_replace_remove_by_name(small_cfg) -> None:
    trainer = make_trainer(small_cfg)
    noop = lambda ctx: None  # noqa: E731
    trainer.add_hook("train", "on_batch_backward", noop, "before_bwd", before="_hook_on_batch_backward")
    trainer.add_hook("train", "on_batch_backward", noop, "after_bwd", after="_hook_on_batch_backward")
    trainer.add_hook("train", "on_batch_backward", noop, "last")
    assert trainer.hooks["train"].names("on_batch_backward") == ["before_bwd", "_hook_on_batch_backward",
                                                                 "after_bwd", "last"]
    trainer.replace_hook("train", "on_batch_backward", "after_bwd", noop)
    assert trainer.hooks["train"].names("on_batch_backward")[2] == "<lambda>"
    trainer.remove_hook("train", "on_batch_backward", "last")
    assert "last" not in trainer.hooks["train"].names("on_batch_backward")
    with pytest.raises(KeyError, match="no hook named 'nope' at on_batch_end .present: _hook_on_batch_end"):
        trainer.add_hook("train", "on_batch_end", noop, before="nope")
    with pytest.raises(ValueError, match="already at on_batch_backward"):
        trainer.add_hook("train", "on_batch_backward", noop, "before_bwd")
    with pytest.raises(ValueError, match="unknown trigger point 'on_step'"):
        trainer.add_hook("train", "on_step", noop)
    with pytest.raises(ValueError, match="unknown routine 'finetune'"):
        trainer.add_hook("finetune", "on_fit_end", noop)


def test_seed_registration_api(small_cfg) -> None:
    from fedplug.core.default_hooks import _hook_on_batch_end, _hook_on_fit_end

    trainer = make_trainer(small_cfg)

    def my_hook(ctx):
        pass

    def other_hook(ctx):
        pass

    trainer.register_hook_in_train(my_hook, "on_batch_end", base_hook=_hook_on_batch_end, insert_mode="before")
    trainer.register_hook_in_train(other_hook, "on_batch_end", insert_pos=-1)
    assert trainer.hooks["train"].names("on_batch_end") == ["my_hook", "_hook_on_batch_end", "other_hook"]
    trainer.register_hook_in_train(other_hook, "on_fit_end", base_hook=_hook_on_fit_end, insert_mode="replace")
    assert trainer.hooks["train"].names("on_fit_end") == ["other_hook"]
    trainer.register_hook_in_train(None, "on_batch_end", base_hook="my_hook", insert_mode="remove")
    trainer.replace_hook_in_eval(my_hook, "on_fit_end", "_hook_on_fit_end_eval")
    assert trainer.hooks["eval"].names("on_fit_end") == ["my_hook"]
    trainer.reset_hook_in_train("on_batch_end")
    assert trainer.hooks["train"].names("on_batch_end") == []
    with pytest.raises(ValueError, match="insert_mode must be"):
        trainer.register_hook_in_eval(my_hook, "on_fit_end", base_hook="my_hook", insert_mode="above")


def test_scoped_variables_vanish_when_their_scope_ends(small_cfg) -> None:
    trainer = make_trainer(small_cfg)
    seen: dict[str, list] = {"epoch_end": [], "fit_end": []}

    def visible(ctx: Context) -> set[str]:
        return {n for n in ("my_batch", "my_epoch", "my_routine", "my_plain") if ctx.get(n) is not None}

    def set_vars(ctx: Context) -> None:
        ctx.my_batch = CtxVar(1, "batch")
        ctx.my_epoch = CtxVar(2, "epoch")
        ctx.my_routine = CtxVar(3, "routine")
        ctx.my_plain = 4

    trainer.add_hook("train", "on_batch_end", set_vars)
    trainer.add_hook("train", "on_epoch_end", lambda ctx: seen["epoch_end"].append(visible(ctx)), "see_epoch")
    trainer.add_hook("train", "on_fit_end", lambda ctx: seen["fit_end"].append(visible(ctx)), "see_fit")
    ctx = trainer._context("train", "train", *data(), 2, 3, 2, 1, generator=torch.Generator().manual_seed(0), lr=0.1)
    trainer.run_routine(trainer.hooks["train"], ctx)
    assert seen["epoch_end"] == [{"my_epoch", "my_routine", "my_plain"}] * 2
    assert seen["fit_end"] == [{"my_routine", "my_plain"}]
    assert visible(ctx) == {"my_plain"}
    for name in ("x_batch", "loss_batch", "batch_order", "optimizer", "num_samples"):
        with pytest.raises(AttributeError, match=f"context variable '{name}' is not set"):
            getattr(ctx, name)
    with pytest.raises(ValueError, match="unknown context scope 'round'"):
        ctx.bad = CtxVar(0, "round")


def test_set_scoped_is_ctxvar_for_several_names() -> None:
    by_ctxvar, by_set = Context(), Context()
    by_ctxvar.a, by_ctxvar.b, by_ctxvar.c = CtxVar(1, "batch"), CtxVar(2, "batch"), CtxVar(3, "epoch")
    by_set.set_scoped("batch", a=1, b=2)
    by_set.set_scoped("epoch", c=3)
    for ctx in (by_ctxvar, by_set):
        assert (ctx.a, ctx.b, ctx.c) == (1, 2, 3)
        ctx.end_scope("batch")
        assert (ctx.get("a"), ctx.get("b"), ctx.c) == (None, None, 3)
        ctx.end_scope("epoch")
        assert ctx.get("c") is None
    with pytest.raises(ValueError, match="unknown context scope 'round' for x, y"):
        by_set.set_scoped("round", x=0, y=1)
    with pytest.raises(ValueError, match="unknown context scope 'round'"):
        by_set.end_scope("round")


def test_hook_functions_follow_every_change_of_the_table(small_cfg) -> None:
    table = make_trainer(small_cfg).hooks["train"]
    first = table.functions()
    assert table.functions() is first  # built once, not per routine

    def my_hook(ctx: Context) -> None:
        pass

    def other(ctx: Context) -> None:
        pass

    end = TRIGGERS.index("on_batch_end")
    table.add("on_batch_end", my_hook, after="_hook_on_batch_end")
    assert table.functions()[end][-1] is my_hook
    table.replace("on_batch_end", "my_hook", other)
    assert table.functions()[end][-1] is other
    table.insert_at("on_batch_end", 0, my_hook)
    assert table.functions()[end][0] is my_hook
    table.remove("on_batch_end", "my_hook")
    table.remove("on_batch_end", "other")
    assert table.functions() == first
    table.remove("on_batch_end")
    assert table.functions()[end] == ()
    assert table.copy().functions() == table.functions()
