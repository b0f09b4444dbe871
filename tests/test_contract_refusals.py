"""The contract (issue 10): impossible combinations and broken declarations refused word for word."""
from __future__ import annotations

import pytest
import torch

from fedplug.backends.vectorized import check_cohort_forms
from fedplug.cli import main
from fedplug.core.compose import CompositionError, compose
from fedplug.core.context import Context
from fedplug.core.messages import Messages, RoundFacts, UpSpec, scalar
from fedplug.core.plugin import HookSpec, LocalView, Params, Plugin
from fedplug.errors import UserError
from fedplug.run.plan import build_plan
from fedplug.run.simulation import run

from contract_helpers import REC, FAST, sampled_clients, run_log, without
from test_contract_weights import Scale, Weigh, plan_text


# -- 5. Composition refusals, word for word -----------------------------------------------------------------

class Bare(Plugin):
    def __init__(self, name: str, roles: tuple[str, ...] = ()) -> None:
        self.name, self.roles = name, roles


class Aggregating(Bare):
    def aggregate(self, uploads, facts):
        return {}


class Weighting(Bare):
    def client_weight(self, upload):
        return 1.0


def refusal(plugins: list[Plugin], weighting: str = "samples") -> str:
    with pytest.raises(CompositionError) as err:
        compose(plugins, weighting)
    return str(err.value)


def test_two_aggregators_are_refused() -> None:
    assert refusal([Aggregating("alpha", ("aggregator",)), Aggregating("beta", ("aggregator",))]) == (
        "alpha and beta cannot be combined: both fill the exclusive role 'aggregator' (each decides how the uploads "
        "of a round combine); switch one of them off")


def test_two_weighting_plugins_are_refused(register, small_cfg) -> None:
    register(Weigh)
    with pytest.raises(CompositionError) as err:
        build_plan(small_cfg(**{"ct_weigh.use": True, "fednova.use": True}))
    assert str(err.value) == ("fednova and ct_weigh cannot be combined: both fill the exclusive role 'weighting' "
                              "(each sets the clients' aggregation weights); switch one of them off")


@pytest.mark.parametrize("plugin, weighting", [("ct_weigh", "uniform"), ("ct_weigh", "steps"),
                                               ("fednova", "uniform")])
def test_a_weighting_plugin_and_a_configured_weighting_are_refused(register, small_cfg, plugin: str,
                                                                    weighting: str) -> None:
    register(Weigh)
    with pytest.raises(CompositionError) as err:
        build_plan(small_cfg(**{f"{plugin}.use": True, "aggregator.weighting": weighting}))
    assert str(err.value) == (f"{plugin} sets the aggregation weights itself; aggregator.weighting {weighting} cannot "
                              "apply too: leave aggregator.weighting at samples")
    assert build_plan(small_cfg(**{f"{plugin}.use": True})).weigher.name == plugin  # at samples: accepted


@pytest.mark.parametrize("transform", ["ct_scale", "scaffold", "feddyn"])
def test_a_gradient_transform_next_to_pfedme_is_refused(register, small_cfg, transform: str) -> None:
    register(Scale)
    with pytest.raises(CompositionError) as err:
        build_plan(small_cfg(**{f"{transform}.use": True, "pfedme.use": True}))
    assert str(err.value) == (f"{transform} and pfedme cannot be combined: pfedme replaces the backward step "
                              f"(_hook_on_batch_backward), so {transform}'s gradient transform would never run")
    assert transform in build_plan(small_cfg(**{f"{transform}.use": True, "ditto.use": True})).names  # Ditto: fine


@pytest.mark.parametrize("role, method", [("aggregator", "aggregate"), ("weighting", "client_weight"),
                                          ("server_update", "server_update")])
def test_a_role_without_its_method_is_refused(role: str, method: str) -> None:
    assert refusal([Bare("alpha", (role,))]) == f"alpha fills the role '{role}' but does not define {method}()"


def count_batches(ctx: Context) -> None:
    REC["hook_batches"].append(ctx.client_id)


class VectorizingHook(Plugin):
    """Claims `vectorizes` but gives no cohort form of its train hook."""

    name = "ct_vhook"
    vectorizes = True

    def hooks(self) -> list[HookSpec]:
        return [HookSpec("on_batch_end", count_batches, "_hook_on_batch_end_ct_count", after=("_hook_on_batch_end",))]


class SequentialHook(VectorizingHook):
    name = "ct_shook"
    vectorizes = False


VECTORIZES_REFUSAL = ("ct_vhook declares `vectorizes` and hooks into the train routine, but defines none of "
                      "cohort_penalty, cohort_fit_start, cohort_step, cohort_fit_end, cohort_losses: its hooks would "
                      "not run on cohorts. Give their cohort form, or set vectorizes = False (the backend then runs "
                      "client routines one client at a time)")


def test_vectorizes_without_a_cohort_form_is_refused_by_the_vectorized_backend(register, small_cfg, capsys) -> None:
    register(VectorizingHook)
    with pytest.raises(CompositionError) as err:
        run(small_cfg(**{**FAST, "ct_vhook.use": True, "federate.backend": "vectorized"}))
    assert str(err.value) == VECTORIZES_REFUSAL
    assert REC["hook_batches"] == []  # refused before any work
    words = ["plan", "ct_vhook.use", "True", "federate.backend", "vectorized"]
    capsys.readouterr()  # what came before (a first use's data-generation log line)
    assert main(words) == 2
    assert capsys.readouterr().err == f"fedplug: error: {VECTORIZES_REFUSAL}\n"
    assert main(words[:3]) == 0  # the sequential backend runs the hooks as they are
    assert "_hook_on_batch_end_ct_count [ct_vhook]" in capsys.readouterr().out


def test_vectorizes_refusal_names_the_eval_routine_too() -> None:
    class EvalHook(Bare):
        vectorizes = True

        def hooks(self):
            return [HookSpec("on_fit_end", count_batches, "eval_hook", routine="eval", before=("_hook_on_fit_end_eval",))]

    with pytest.raises(CompositionError, match="^alpha declares `vectorizes` and hooks into the eval routine, but "
                                               "defines none of cohort_eval_params, cohort_eval_outputs: "):
        check_cohort_forms(compose([EvalHook("alpha")]))


def test_without_vectorizes_the_vectorized_backend_runs_it_sequentially_saying_why(register, small_cfg,
                                                                                   capsys) -> None:
    register(SequentialHook)
    reason = "ct_shook does not declare `vectorizes`: client routines run one client at a time (sequential)"
    vectorized = run(small_cfg(**{**FAST, "ct_shook.use": True, "federate.backend": "vectorized"}))
    batches = len(REC["hook_batches"])
    assert batches == 2 * 6 * 5  # its hook ran at every batch: rounds x clients x steps
    assert f"vectorized backend: {reason}" in run_log(vectorized)
    assert run_log(vectorized).count("one client at a time") == 1
    sequential = run(small_cfg(**{**FAST, "ct_shook.use": True}))
    assert without(vectorized) == without(sequential)  # it ran through the sequential backend: same numbers
    assert f"backend: vectorized, but {reason}\n" in plan_text(capsys, "ct_shook.use", "True", "federate.backend",
                                                               "vectorized")


class WrongDown(Plugin):
    name = "ct_down"
    sends = ("a", "b")

    def messages(self, shared: Params) -> Messages:
        return Messages(down={"a": scalar()})

    def broadcast(self, facts: RoundFacts) -> Params:
        return {name: torch.tensor(1.0, dtype=torch.float64) for name in self.sends}


@pytest.mark.parametrize("sends, text", [(("a", "b"), "['a', 'b']"), ((), "[]")])
def test_broadcast_sending_what_messages_did_not_declare_is_refused(register, small_cfg, monkeypatch,
                                                                     sends: tuple, text: str) -> None:
    register(WrongDown)
    monkeypatch.setattr(WrongDown, "sends", sends)
    with pytest.raises(UserError) as err:
        run(small_cfg(**{**FAST, "ct_down.use": True}))
    assert str(err.value) == f"ct_down.broadcast() sent {text}, but its messages() declares ['a'] going down"


class UndeclaredDown(Plugin):
    """Sends a tensor down without any messages() at all."""

    name = "ct_undeclared"

    def broadcast(self, facts: RoundFacts) -> Params:
        return {"a": torch.tensor(1.0, dtype=torch.float64)}


def test_broadcast_from_a_plugin_without_messages_is_refused(register, small_cfg) -> None:
    register(UndeclaredDown)
    with pytest.raises(UserError) as err:
        run(small_cfg(**{**FAST, "ct_undeclared.use": True}))
    assert str(err.value) == "ct_undeclared.broadcast() sent ['a'], but its messages() declares [] going down"


class WrongUp(Plugin):
    name = "ct_up"
    sends: tuple = ("a", "z")

    def messages(self, shared: Params) -> Messages:
        return Messages(up={"a": UpSpec(scalar(), "sum")})

    def client_upload(self, view: LocalView) -> Params:
        return {name: torch.tensor(1.0, dtype=torch.float64) for name in self.sends}


@pytest.mark.parametrize("sends, text", [(("a", "z"), "['a', 'z']"), (("z",), "['z']"), ((), "[]")])
def test_client_upload_returning_undeclared_names_is_refused(register, small_cfg, monkeypatch, sends: tuple,
                                                              text: str) -> None:
    register(WrongUp)
    monkeypatch.setattr(WrongUp, "sends", sends)
    cfg = small_cfg(**{**FAST, "ct_up.use": True})
    with pytest.raises(UserError) as err:
        run(cfg)
    first = sampled_clients(cfg, 1)[0]
    assert str(err.value) == f"ct_up's upload of client {first} holds {text}, but its messages() declares ['a'] going up"


class UpWithoutUpload(Plugin):
    name = "ct_silent"

    def messages(self, shared: Params) -> Messages:
        return Messages(up={"a": UpSpec(scalar(), "sum")})


def test_declared_up_tensors_without_client_upload_are_refused(register, small_cfg) -> None:
    register(UpWithoutUpload)
    cfg = small_cfg(**{**FAST, "ct_silent.use": True})
    with pytest.raises(UserError) as err:
        run(cfg)
    first = sampled_clients(cfg, 1)[0]
    assert str(err.value) == f"ct_silent's upload of client {first} holds [], but its messages() declares ['a'] going up"


class DownWithoutBroadcast(Plugin):
    name = "ct_mute"

    def messages(self, shared: Params) -> Messages:
        return Messages(down={"a": scalar()})

    def transform_gradients(self, grads: Params, view: LocalView) -> Params:
        REC["mute_extras"].append(sorted(view.extras))
        return grads


def test_declared_down_tensors_without_broadcast_are_refused(register, small_cfg) -> None:
    register(DownWithoutBroadcast)
    with pytest.raises(UserError, match=r"ct_mute.*\['a'\] going down"):
        run(small_cfg(**{**FAST, "ct_mute.use": True, "federate.total_round_num": 1}))


class WrongLayoutUp(Plugin):
    """Uploads the declared name, but not in the declared shape or dtype."""

    name = "ct_layout"
    tensor = torch.zeros(3, dtype=torch.float64)

    def messages(self, shared: Params) -> Messages:
        return Messages(up={"a": UpSpec(scalar(), "sum")})

    def client_upload(self, view: LocalView) -> Params:
        return {"a": self.tensor.clone()}

    def receive(self, facts: RoundFacts) -> None:
        REC["layout_reduced"].append(facts.extras(self.name)["a"])


@pytest.mark.parametrize("tensor", [torch.zeros(3, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float32)],
                         ids=["shape", "dtype"])
def test_an_up_tensor_of_another_shape_or_dtype_is_refused_in_process(register, small_cfg, monkeypatch,
                                                                       tensor: torch.Tensor) -> None:
    """As the wire refuses it in distributed mode (decode_tensors), so that a plug-in fails the same way in both."""
    register(WrongLayoutUp)
    monkeypatch.setattr(WrongLayoutUp, "tensor", tensor)
    cfg = small_cfg(**{**FAST, "ct_layout.use": True, "federate.total_round_num": 1})
    with pytest.raises(UserError) as err:
        run(cfg)
    first = sampled_clients(cfg, 1)[0]
    assert str(err.value) == (f"ct_layout's upload 'a' of client {first} is {tensor.dtype} {tuple(tensor.shape)}, but "
                              "its messages() declares torch.float64 ()")
    assert REC["layout_reduced"] == []
