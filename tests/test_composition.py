"""Composition: detachable plug-ins, registration from outside, and every refusal's sentence."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fedplug.core.compose import CompositionError, compose
from fedplug.core.plugin import HookSpec, Plugin
from fedplug.errors import ConfigError
from fedplug.run.plan import build_plan

ROOT = Path(__file__).resolve().parents[1]
BUILTIN_MODULES = ["fedplug.algorithms." + m for m in ("fedbn", "fedprox", "fedopt", "pfedme", "ditto", "fedem")]


def python(code: str, **env: str) -> str:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=ROOT,
                          env={**__import__("os").environ, **env}, check=True)
    return proc.stdout


def test_switched_off_algorithms_are_not_imported() -> None:
    out = python(f"""
        import json, sys
        from fedplug.config import load_config
        from fedplug.run.plan import build_plan, describe_plan
        describe_plan(build_plan(load_config(None, {{"fedprox.use": True}})))
        print(json.dumps([m for m in {BUILTIN_MODULES!r} if m in sys.modules]))
    """)
    assert json.loads(out) == ["fedplug.algorithms.fedprox"]


@pytest.mark.parametrize("method, expected", [("FedProx", ["fedprox"]), ("fedopt", ["fedopt"]),
                                              ("FedAvg", []), ("FedBN", ["fedbn"])])
def test_federate_method_is_the_same_as_use(small_cfg, method: str, expected: list[str]) -> None:
    assert build_plan(small_cfg(federate__method=method)).names == expected


def test_unknown_method_is_refused_with_a_suggestion(small_cfg) -> None:
    with pytest.raises(ConfigError, match="federate.method 'FedPorx' is not a known algorithm .*Did you mean 'FedProx'"):
        build_plan(small_cfg(federate__method="FedPorx"))


class Dummy(Plugin):
    def __init__(self, name: str, roles=(), hooks=()) -> None:
        self.name, self.roles, self._hooks = name, roles, list(hooks)

    def hooks(self) -> list[HookSpec]:
        return self._hooks


def noop(ctx) -> None:
    pass


def test_exclusive_role_refused_naming_both() -> None:
    with pytest.raises(CompositionError, match="alpha and beta cannot be combined: both fill the exclusive role "
                                               "'server_update'"):
        compose([Dummy("alpha", roles=("server_update",)), Dummy("beta", roles=("server_update",))])
    with pytest.raises(CompositionError, match=r"both fill the exclusive role 'sampler' \(the role is exclusive\)"):
        compose([Dummy("alpha", roles=("sampler",)), Dummy("beta", roles=("sampler",))])  # a role of users' own


def test_two_replacements_of_one_hook_refused() -> None:
    spec = lambda n: HookSpec("on_batch_backward", noop, n, replaces="_hook_on_batch_backward")  # noqa: E731
    with pytest.raises(CompositionError, match="alpha and beta cannot be combined: both replace the hook "
                                               "'_hook_on_batch_backward'"):
        compose([Dummy("alpha", hooks=[spec("a")]), Dummy("beta", hooks=[spec("b")])])


def test_ordering_cycle_refused_naming_both() -> None:
    a = HookSpec("on_batch_end", noop, "hook_a", after=("hook_b",))
    b = HookSpec("on_batch_end", noop, "hook_b", after=("hook_a",))
    with pytest.raises(CompositionError, match="ordering cycle at train/on_batch_end: alpha's hook 'hook_a' and "
                                               "'hook_b' \\(beta\\) each wait for the other"):
        compose([Dummy("alpha", hooks=[a]), Dummy("beta", hooks=[b])])


def test_missing_anchor_refused() -> None:
    a = HookSpec("on_batch_end", noop, "hook_a", before=("not_there",))
    with pytest.raises(CompositionError, match="alpha's hook 'hook_a' is anchored to \\['not_there'\\]"):
        compose([Dummy("alpha", hooks=[a])])


def test_unordered_writers_of_one_field_refused_and_ordered_ones_accepted() -> None:
    after_forward = ("_hook_on_batch_forward",)
    a = HookSpec("on_batch_forward", noop, "hook_a", after=after_forward, writes=("loss_task",))
    b = HookSpec("on_batch_forward", noop, "hook_b", after=after_forward, writes=("loss_task",))
    with pytest.raises(CompositionError, match="alpha and beta both write ctx.loss_task at train/on_batch_forward "
                                               "\\(hooks 'hook_a' and 'hook_b'\\) with no order between them"):
        compose([Dummy("alpha", hooks=[a]), Dummy("beta", hooks=[b])])
    with pytest.raises(CompositionError, match="core and alpha both write ctx.loss_task"):
        compose([Dummy("alpha", hooks=[HookSpec("on_batch_forward", noop, "hook_a", writes=("loss_task",))])])
    b_ordered = HookSpec("on_batch_forward", noop, "hook_b", after=("hook_a",), writes=("loss_task",))
    plan = compose([Dummy("alpha", hooks=[a]), Dummy("beta", hooks=[b_ordered])])
    assert plan.tables["train"].names("on_batch_forward") == ["_hook_on_batch_forward", "hook_a", "hook_b"]


def test_plan_is_not_changed_by_trainers_using_it(small_cfg) -> None:
    plan = build_plan(small_cfg(fedprox__use=True))
    tables = plan.hook_tables()
    tables["train"].remove("on_batch_forward", "_hook_on_batch_forward_add_proximal_term")
    assert "_hook_on_batch_forward_add_proximal_term" in plan.tables["train"].names("on_batch_forward")
    with pytest.raises(TypeError):
        plan.tables["train"] = tables["train"]


def test_entry_point_plugin_is_found_by_its_section(tmp_path: Path) -> None:
    (tmp_path / "ep_algo.py").write_text(textwrap.dedent("""
        from fedplug.algorithms.registry import register_algorithm
        from fedplug.config import Key, Section, register_section
        from fedplug.core.plugin import Plugin
        register_section("ep_algo", Section("an installed algorithm", {"use": Key(False, "switch on")}))

        @register_algorithm
        class EpAlgo(Plugin):
            name = "ep_algo"
    """))
    dist = tmp_path / "ep_algo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-algo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[fedplug.algorithms]\nep_algo = ep_algo\n")
    out = python("""
        import sys
        from fedplug.config import load_config
        from fedplug.run.plan import build_plan
        print(build_plan(load_config(None, ["ep_algo.use", "True"])).names, "ep_algo" in sys.modules)
    """, PYTHONPATH=str(tmp_path))
    assert out.strip() == "['ep_algo'] True"


def test_missing_plugin_file_is_a_config_error() -> None:
    from fedplug.config import load_config

    with pytest.raises(ConfigError, match="plug-in file not found: nowhere.py"):
        load_config(None, ["plugins", "nowhere.py"])


def test_anchor_to_a_replaced_hook_follows_its_replacement() -> None:
    replacing = HookSpec("on_batch_backward", noop, "my_step", replaces="_hook_on_batch_backward")
    anchored = [HookSpec("on_batch_backward", noop, "after_step", after=("_hook_on_batch_backward",)),
                HookSpec("on_batch_backward", noop, "before_step", before=("_hook_on_batch_backward",))]
    plan = compose([Dummy("alpha", hooks=[replacing]), Dummy("beta", hooks=anchored)])
    assert [(h.name, h.owner) for t, hooks in plan.tables["train"] if t == "on_batch_backward" for h in hooks] == \
        [("before_step", "beta"), ("my_step", "alpha"), ("after_step", "beta")]


def test_a_replacing_hooks_anchor_on_another_replaced_hook_orders_their_writes() -> None:
    """Eval's two core hooks at on_batch_end, each replaced by another plug-in, both writing ctx.tally: beta's
    `after` names the core hook alpha replaced, which means alpha's hook, so the two writes are ordered."""
    first = HookSpec("on_batch_end", noop, "end_a", routine="eval", replaces="_hook_on_batch_end", writes=("tally",))
    second = HookSpec("on_batch_end", noop, "count_b", routine="eval", replaces="_hook_on_batch_end_count_correct",
                      after=("_hook_on_batch_end",), writes=("tally",))
    plan = compose([Dummy("alpha", hooks=[first]), Dummy("beta", hooks=[second])])
    assert placed(plan) == [("end_a", "alpha"), ("count_b", "beta")]
    unordered = HookSpec("on_batch_end", noop, "count_b", routine="eval", replaces="_hook_on_batch_end_count_correct",
                         writes=("tally",))
    with pytest.raises(CompositionError, match="alpha and beta both write ctx.tally at eval/on_batch_end"):
        compose([Dummy("alpha", hooks=[first]), Dummy("beta", hooks=[unordered])])


def test_plugins_key_must_be_a_list_of_names(tmp_path: Path) -> None:
    from fedplug.config import load_config

    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text("plugins: 5\n")
    with pytest.raises(ConfigError, match="config key 'plugins' expects list of str, got 5"):
        load_config(cfg_file)


def test_a_hook_before_one_core_hook_is_ordered_with_the_core_hooks_after_it() -> None:
    """The core hooks at one point run in a fixed order, so a hook before the first is before the rest too: it may
    write what a later core hook writes (eval's on_batch_end: the counts, then the correct count)."""
    early = HookSpec("on_batch_end", noop, "hook_a", routine="eval", before=("_hook_on_batch_end",),
                     writes=("num_correct",))
    plan = compose([Dummy("alpha", hooks=[early])])
    assert plan.tables["eval"].names("on_batch_end") == ["hook_a", "_hook_on_batch_end",
                                                         "_hook_on_batch_end_count_correct"]
    late = HookSpec("on_batch_end", noop, "hook_a", routine="eval", after=("_hook_on_batch_end",),
                    writes=("num_correct",))  # after the first core hook says nothing about the second
    with pytest.raises(CompositionError, match="core and alpha both write ctx.num_correct at eval/on_batch_end "
                                               "\\(hooks '_hook_on_batch_end_count_correct' and 'hook_a'\\)"):
        compose([Dummy("alpha", hooks=[late])])


def test_a_conflict_is_found_whatever_the_plugins_other_hooks_and_named_core_first() -> None:
    elsewhere = HookSpec("on_fit_end", noop, "hook_end")  # declared first, at another point
    clash = HookSpec("on_batch_forward", noop, "hook_a", writes=("loss_task",))
    later = HookSpec("on_batch_forward", noop, "hook_b", after=("hook_a",), writes=("beta_field",))
    with pytest.raises(CompositionError, match="^core and alpha both write ctx.loss_task at train/on_batch_forward "
                                               "\\(hooks '_hook_on_batch_forward' and 'hook_a'\\)"):
        compose([Dummy("alpha", hooks=[elsewhere, clash]), Dummy("beta", hooks=[later])])


def test_a_replacing_hook_may_write_what_the_replaced_core_hook_wrote() -> None:
    forward = HookSpec("on_batch_forward", noop, "my_forward", replaces="_hook_on_batch_forward",
                       writes=("y_prob", "loss_batch", "loss_task"))
    plan = compose([Dummy("alpha", hooks=[forward])])
    assert plan.tables["train"].names("on_batch_forward") == ["my_forward"]


class InfiniteWeigher(Dummy):
    def client_weight(self, upload) -> float:
        return float("inf")


def test_a_weight_that_is_not_positive_and_finite_is_refused_naming_who_gave_it() -> None:
    from fedplug.config import load_config
    from fedplug.core.messages import Upload
    from fedplug.errors import UserError

    upload = Upload(3, {}, {"train_total": 0, "train_steps": 4, "train_loss": 1.0})
    with pytest.raises(UserError, match="^aggregator.weighting samples gave client 3 the aggregation weight 0.0: "
                                        "weights must be positive and finite$"):
        build_plan(load_config(None, {})).weight(upload)
    assert build_plan(load_config(None, {"aggregator.weighting": "steps"})).weight(upload) == 4.0
    with pytest.raises(UserError, match="^w_inf gave client 3 the aggregation weight inf"):
        compose([InfiniteWeigher("w_inf", roles=("weighting",))]).weight(upload)


def placed(plan, trigger: str = "on_batch_end") -> list[tuple[str, str]]:
    return [(h.name, h.owner) for t, hooks in plan.tables["eval"] if t == trigger for h in hooks]


def test_hooks_are_placed_between_their_anchors_each_owned_by_its_plugin() -> None:
    """Eval's on_batch_end holds two core hooks: `after` the first, `before` the second, or both (adjacent anchors)
    put a hook between them, not at the end; an anchor on another plug-in's hook waits for that hook."""
    end, count = "_hook_on_batch_end", "_hook_on_batch_end_count_correct"
    between = [(end, "core"), ("hook_a", "alpha"), (count, "core")]
    for anchors in ({"after": (end,)}, {"before": (count,)}, {"after": (end,), "before": (count,)}):
        spec = HookSpec("on_batch_end", noop, "hook_a", routine="eval", **anchors)
        assert placed(compose([Dummy("alpha", hooks=[spec])])) == between, anchors
    first = HookSpec("on_batch_end", noop, "hook_b", routine="eval", after=("hook_a",))  # declared before its anchor
    second = HookSpec("on_batch_end", noop, "hook_a", routine="eval", after=(end,))
    assert placed(compose([Dummy("beta", hooks=[first]), Dummy("alpha", hooks=[second])])) == \
        [(end, "core"), ("hook_a", "alpha"), ("hook_b", "beta"), (count, "core")]


class Picky(Dummy):
    def refuses(self, other: Plugin) -> str:
        return f"{self.name} cannot train next to {other.name}: a test's reason"


def test_a_pair_a_plugin_refuses_is_refused_with_its_sentence_and_no_plugin_refuses_itself() -> None:
    plan = compose([Picky("picky")])  # alone: a plug-in is never asked about itself
    assert [p.name for p in plan.plugins] == ["picky"]
    with pytest.raises(CompositionError, match="^picky and other cannot be combined: picky cannot train next to other: "
                                               "a test.s reason$"):
        compose([Picky("picky"), Dummy("other")])
