"""The built-in plug-ins' hooks as users see them: their names, places and declared writes, and the lifetime
of what they write.

Hook names are public: a user's plug-in anchors to them (`after=("_hook_on_batch_forward_add_proximal_term",)`)
and `fedplug plan` prints them. The declared writes are what composition checks a user's hook against (two
hooks writing one Context field at one trigger point need an order). So each built-in plug-in's hook
specs are pinned here, as the table users read; renaming one or dropping a declared write is an
API change and should fail a test.
"""
from __future__ import annotations

import pytest

from fedplug.config import load_config
from fedplug.core.context import Context
from fedplug.core.plugin import HookSpec, Plugin
from fedplug.core.compose import CompositionError
from fedplug.run.plan import build_plan
from fedplug.run.simulation import run

FIT_INIT, EVAL_INIT, FIT_END = "_hook_on_fit_start_init", "_hook_on_fit_start_eval_init", "_hook_on_fit_end"
FORWARD_WRITES = ("y_prob", "loss_batch", "loss_task")

# (routine, trigger, name, before, after, replaces, writes), in the order each plug-in declares them
PINNED: dict[str, list[tuple]] = {
    "fedprox": [("train", "on_batch_forward", "_hook_on_batch_forward_add_proximal_term", (),
                 ("_hook_on_batch_forward",), None, ("loss_task", "loss_regular"))],
    "ditto": [("train", "on_fit_start", "_hook_on_fit_start_ditto_personal", (FIT_INIT,), (), None,
               ("model", "ditto_personal_results")),
              ("eval", "on_fit_start", "_hook_on_fit_start_ditto_load_personal", (EVAL_INIT,), (), None, ("model",))],
    "ditto.semantics=federatedscope": [
        ("train", "on_fit_start", "_hook_on_fit_start_ditto_visit", (), (FIT_INIT,), None, ("ditto_visit",)),
        ("train", "on_epoch_start", "_hook_on_epoch_start_ditto_personal", (), (), "_hook_on_epoch_start_shuffle", ()),
        ("train", "on_batch_start", "_hook_on_batch_start_ditto_stream", (), (), "_hook_on_batch_start_gather", ()),
        ("eval", "on_fit_start", "_hook_on_fit_start_ditto_load_personal", (EVAL_INIT,), (), None, ("model",))],
    "fedem": [("train", "on_fit_start", "_hook_on_fit_start_fedem_e_step", (), (FIT_INIT,), None, ("fedem_q",)),
              ("train", "on_batch_forward", "_hook_on_batch_forward", (), (), "_hook_on_batch_forward", FORWARD_WRITES),
              ("train", "on_fit_end", "_hook_on_fit_end_fedem_keep_pi", (FIT_END,), (), None, ()),
              ("eval", "on_fit_start", "_hook_on_fit_start_fedem_load_pi", (), (EVAL_INIT,), None, ()),
              ("eval", "on_batch_forward", "_hook_on_batch_forward", (), (), "_hook_on_batch_forward", FORWARD_WRITES)],
    "pfedme": [("train", "on_fit_start", "_hook_on_fit_start_copy_local_model", (), (FIT_INIT,), None, ("pfedme_w",)),
               ("train", "on_batch_backward", "_hook_on_batch_backward_pfedme", (), (), "_hook_on_batch_backward", ()),
               ("train", "on_fit_end", "_hook_on_fit_end_keep_personal_upload_local", (FIT_END,), (), None, ()),
               ("eval", "on_fit_start", "_hook_on_fit_start_load_personal_model", (), (EVAL_INIT,), None, ())],
    "pfedme.semantics=federatedscope": [
        ("train", "on_fit_start", "_hook_on_fit_start_copy_local_model", (), (FIT_INIT,), None, ("pfedme_w",)),
        ("train", "on_fit_start", "_hook_on_fit_start_pfedme_k_epochs", (), ("_hook_on_fit_start_copy_local_model",),
         None, ("pfedme_calls", "pfedme_cache")),
        ("train", "on_epoch_start", "_hook_on_epoch_start_pfedme_count", (), ("_hook_on_epoch_start_shuffle",), None,
         ("pfedme_fetched",)),
        ("train", "on_batch_start", "_hook_on_batch_start_pfedme_reuse", (), (), "_hook_on_batch_start_gather", ()),
        ("train", "on_batch_backward", "_hook_on_batch_backward_pfedme_theta", (), (), "_hook_on_batch_backward", ()),
        ("train", "on_epoch_end", "_hook_on_epoch_end_pfedme_move_local", (), (), None, ()),
        ("train", "on_fit_end", "_hook_on_fit_end_pfedme_upload_local", (FIT_END,), (), None, ())],
}


def keys_of(variant: str) -> dict:
    plugin, _, setting = variant.partition(".")
    keys = {f"{plugin}.use": True}
    if setting:
        key, value = setting.split("=")
        keys[f"{plugin}.{key}"] = value
    return keys


@pytest.mark.parametrize("variant", sorted(PINNED))
def test_each_builtin_plugins_hooks_are_the_documented_ones(variant: str) -> None:
    plan = build_plan(load_config(None, keys_of(variant)))
    (plugin,) = plan.plugins
    assert [(s.routine, s.trigger, s.name, s.before, s.after, s.replaces, s.writes) for s in plugin.hooks()] == \
        PINNED[variant]
    for routine, trigger, name, *_ in PINNED[variant]:  # and each sits in the plan where users look for it
        assert name in plan.tables[routine].names(trigger)


class LossWriter(Plugin):
    """A user's hook writing ctx.loss_task right after the core forward, with no order relative to FedProx's."""

    name = "bh_writer"

    def hooks(self) -> list[HookSpec]:
        return [HookSpec("on_batch_forward", lambda ctx: None, "bh_write_loss", after=("_hook_on_batch_forward",),
                         writes=("loss_task",))]


def test_a_user_hook_writing_fedproxs_loss_without_an_order_is_refused(register) -> None:
    register(LossWriter)
    with pytest.raises(CompositionError, match="fedprox and bh_writer both write ctx.loss_task at train/on_batch_forward "
                                               r"\(hooks '_hook_on_batch_forward_add_proximal_term' and 'bh_write_loss'\)"):
        build_plan(load_config(None, {"fedprox.use": True, "bh_writer.use": True}))


SEEN: list[set[str]] = []


class EpochEndProbe(Plugin):
    """Records which of FedProx's per-batch fields are still in the Context when an epoch ends."""

    name = "bh_probe"

    def hooks(self) -> list[HookSpec]:
        def look(ctx: Context) -> None:
            SEEN.append({n for n in ("loss_regular", "loss_task") if n in vars(ctx)})

        return [HookSpec("on_epoch_end", look, "bh_look")]


def test_fedproxs_per_batch_fields_end_with_the_batch(register, small_cfg) -> None:
    """loss_regular and loss_task hold a batch's graph: kept past the batch they would hold its memory."""
    register(EpochEndProbe)
    SEEN.clear()
    run(small_cfg(fedprox__use=True, bh_probe__use=True, federate__total_round_num=1))
    assert SEEN and all(seen == set() for seen in SEEN)
