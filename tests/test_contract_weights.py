"""The contract (issue 10): aggregation weights (aggregator.weighting, a weighting plug-in, bad weights) and
the gradient point (before clipping; not in Ditto's personal update)."""
from __future__ import annotations

import pytest
import torch

from fedplug.cli import main
from fedplug.config import load_config
from fedplug.core.compose import compose
from fedplug.core.messages import Messages, RoundFacts, Upload, UpSpec, scalar
from fedplug.core.plugin import LocalView, Params, Plugin
from fedplug.errors import UserError
from fedplug.run.simulation import run

from contract_helpers import REC, FAST, ROOT_DIR, clone, snapshot, sampled_clients, assert_close, weighted_mean, run_log


# -- 3. Weights ----------------------------------------------------------------------------------------------

class Watch(Plugin):
    """Records each client's final parameters and the round's weights and aggregate (no server effect)."""

    name = "ct_watch"

    def client_upload(self, view: LocalView) -> Params:
        REC["watch_client"].append({"params": clone(view.params), "metrics": dict(view.metrics)})
        return {}

    def transform_aggregate(self, old: Params, aggregate: Params, facts: RoundFacts) -> Params:
        REC["watch_round"].append({**snapshot(facts), "aggregate": clone(aggregate)})
        return aggregate


class Weigh(Plugin):
    """A weighting plug-in: weight = (client id + 1) * the steps its upload reports in an extra."""

    name = "ct_weigh"
    roles = ("weighting",)

    def messages(self, shared: Params) -> Messages:
        return Messages(up={"steps": UpSpec(scalar(), "sum")})

    def client_upload(self, view: LocalView) -> Params:
        return {"steps": torch.tensor(float(view.metrics["train_steps"]), dtype=torch.float64)}

    def client_weight(self, upload: Upload) -> float:
        return (upload.client + 1) * float(upload.extras[self.name]["steps"])


# Local work in epochs: sample counts and step counts differ between clients, and not in proportion.
EPOCHS = {"train.batch_or_epoch": "epoch", "train.local_update_steps": 1, "federate.total_round_num": 1}


@pytest.mark.parametrize("weighting", ["samples", "uniform", "steps", "plug-in"])
def test_one_round_is_the_mean_weighted_as_configured(register, small_cfg, weighting: str) -> None:
    register(Watch, Weigh)
    extra = {"ct_weigh.use": True} if weighting == "plug-in" else {"aggregator.weighting": weighting}
    cfg = small_cfg(**{**FAST, **EPOCHS, "ct_watch.use": True, **extra})
    run(cfg)
    sampled = sampled_clients(cfg, 1)
    (seen,) = REC["watch_round"]
    clients = REC["watch_client"]
    assert len(clients) == len(sampled) == len(seen["received"])
    steps = [c["metrics"]["train_steps"] for c in clients]
    samples = [c["metrics"]["train_total"] for c in clients]
    assert len(set(steps)) > 1 and len({n / s for n, s in zip(samples, steps)}) > 1  # the weightings differ
    by_hand = {"samples": samples, "uniform": [1] * len(sampled), "steps": steps,
               "plug-in": [(c + 1) * s for c, s in zip(sampled, steps)]}[weighting]
    assert seen["weights"] == {c: float(w) for c, w in zip(sampled, by_hand)}
    assert_close(seen["aggregate"], weighted_mean([c["params"] for c in clients], [float(w) for w in by_hand]), 1e-6)


def test_the_weightings_give_different_aggregates(register, small_cfg) -> None:
    """So that the test above could tell them apart."""
    register(Watch)
    aggregates = []
    for weighting in ("samples", "uniform", "steps"):
        REC.clear()
        run(small_cfg(**{**FAST, **EPOCHS, "ct_watch.use": True, "aggregator.weighting": weighting}))
        aggregates.append(REC["watch_round"][0]["aggregate"])
    for i in range(3):
        for j in range(i + 1, 3):
            assert max(float((aggregates[i][n] - aggregates[j][n]).abs().max()) for n in aggregates[i]) > 1e-4


class BadWeigh(Plugin):
    name = "ct_badweigh"
    roles = ("weighting",)
    weight = 0.0

    def client_weight(self, upload: Upload) -> float:
        return self.weight


def test_a_non_positive_weight_is_refused_in_a_run(register, small_cfg) -> None:
    register(BadWeigh)
    cfg = small_cfg(**{**FAST, "ct_badweigh.use": True})
    first = sampled_clients(cfg, 1)[0]
    with pytest.raises(UserError) as err:
        run(cfg)
    assert str(err.value) == (f"ct_badweigh gave client {first} the aggregation weight 0.0: weights must be positive "
                              "and finite")


@pytest.mark.parametrize("weight", [0.0, -1.0, float("nan"), float("inf")])
def test_every_bad_weight_is_refused(weight: float) -> None:
    plugin = BadWeigh(load_config())
    plugin.weight = weight
    plan = compose([plugin])
    upload = Upload(7, {}, {"train_total": 10, "train_steps": 2, "train_loss": 0.5})
    with pytest.raises(UserError) as err:
        plan.weight(upload)
    assert str(err.value) == (f"ct_badweigh gave client 7 the aggregation weight {weight}: weights must be positive "
                              "and finite")
    plugin.weight = 2.5
    assert plan.weight(upload) == 2.5


def plan_text(capsys, *words: str) -> str:
    code = main(["plan", "--cfg", str(ROOT_DIR / "configs" / "fedavg_lr_on_synthetic.yaml"), *words])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


@pytest.mark.parametrize("words, line", [
    ((), "  weights            samples processed in the local update (aggregator.weighting samples) [core]"),
    (("aggregator.weighting", "uniform"), "  weights            uniform (1 per client) (aggregator.weighting uniform) [core]"),
    (("aggregator.weighting", "steps"), "  weights            local steps taken (aggregator.weighting steps) [core]"),
    (("ct_weigh.use", "True"), "  weights            set by ct_weigh [ct_weigh]"),
])
def test_the_plan_prints_the_weighting_and_who_sets_it(register, capsys, words: tuple[str, ...], line: str) -> None:
    register(Weigh)
    text = plan_text(capsys, *words)
    server = text.split("server (in this order):\n")[1].splitlines()
    assert server[0] == line
    assert sum(s.lstrip().startswith("weights") for s in server) == 1


# -- 4. The gradient point ---------------------------------------------------------------------------------

class Scale(Plugin):
    """Multiplies the gradients by 1000 and records their norm before; records each client's change."""

    name = "ct_scale"

    def transform_gradients(self, grads: Params, view: LocalView) -> Params:
        stacked = next(iter(grads.values())).dim() > next(iter(view.received.values())).dim()
        norms = [sum(float(g[i].double().pow(2).sum()) for g in grads.values()) ** 0.5
                 for i in range(next(iter(grads.values())).shape[0])] if stacked else \
            [sum(float(g.double().pow(2).sum()) for g in grads.values()) ** 0.5]
        REC["scale_norms"].extend(norms)
        return {n: g * 1000.0 for n, g in grads.items()}

    def client_upload(self, view: LocalView) -> Params:
        REC["scale_change"].append(sum(float((view.params[n] - view.received[n]).double().pow(2).sum())
                                       for n in view.params) ** 0.5)
        return {}


@pytest.mark.parametrize("backend", ["sequential", "vectorized"])
def test_the_gradient_point_is_before_clipping(register, small_cfg, backend: str) -> None:
    """One SGD step per client: its change is lr * the clipped gradient, so lr * clip exactly when the x1000
    transform ran before the clip (after it: lr * 1000 * clip; not at all: lr * ||g||)."""
    register(Scale)
    clip, lr = 10.0, 0.1  # raw gradient norms here are about 1.3 to 2: below the clip, and x1000 above it
    cfg = small_cfg(**{**FAST, "ct_scale.use": True, "federate.backend": backend, "federate.total_round_num": 1,
                       "train.local_update_steps": 1, "grad.grad_clip": clip, "train.optimizer.lr": lr})
    result = run(cfg)
    assert "one client at a time" not in run_log(result)
    clients = len(sampled_clients(cfg, 1))
    assert len(REC["scale_norms"]) == len(REC["scale_change"]) == clients  # one step each, each transformed once
    for norm in REC["scale_norms"]:
        assert 0 < norm < clip < 1000 * norm  # the clip bounds only the transformed gradient
    for change in REC["scale_change"]:
        assert change == pytest.approx(lr * clip, rel=1e-4)


class ZeroGradients(Plugin):
    """Zeroes every gradient it is given and counts the client steps it was applied to."""

    name = "ct_zero"

    def transform_gradients(self, grads: Params, view: LocalView) -> Params:
        g, received = next(iter(grads.values())), next(iter(view.received.values()))
        REC["zero_steps"].append(g.shape[0] if g.dim() > received.dim() else 1)
        return {n: torch.zeros_like(t) for n, t in grads.items()}

    def client_upload(self, view: LocalView) -> Params:
        REC["zero_client"].append({"moved": any(not torch.equal(view.params[n], view.received[n]) for n in view.params),
                                   "steps": view.metrics["train_steps"]})
        return {}


@pytest.mark.parametrize("backend", ["sequential", "vectorized"])
def test_the_gradient_point_is_not_applied_to_dittos_personal_update(register, small_cfg, backend: str) -> None:
    register(ZeroGradients)
    cfg = small_cfg(**{**FAST, "ct_zero.use": True, "ditto.use": True, "federate.backend": backend,
                       "federate.total_round_num": 1, "personalization.local_update_steps": 4})
    result = run(cfg)
    assert "one client at a time" not in run_log(result)
    clients = REC["zero_client"]
    assert len(clients) == len(sampled_clients(cfg, 1))
    assert not any(c["moved"] for c in clients)  # the global update took only zeroed steps
    # one transformed step per step of the uploaded model's update; Ditto's 4 personal steps per client: none
    assert sum(REC["zero_steps"]) == sum(c["steps"] for c in clients) == 5 * len(clients)
    # Ditto's personal models did train (without the transform): the clients are judged by them, and they
    # beat the global model, which never moved from its initialisation.
    plain = run(small_cfg(**{**FAST, "ct_zero.use": True, "federate.total_round_num": 1}))
    assert result["val_loss"] < plain["val_loss"] - 1e-3
