"""The contract (issue 10): extra tensors down and up with every reduction, the round facts, and the
aggregator role (every upload of a round)."""
from __future__ import annotations

from pathlib import Path
import numpy as np
import torch

from fedplug.core.messages import REDUCTIONS, Messages, RoundFacts, Upload, UpSpec, like, scalar
from fedplug.core.plugin import LocalView, Params, Plugin
from fedplug.run.plan import build_plan
from fedplug.run.simulation import run

from contract_helpers import REC, FAST, clone, snapshot, sampled_clients, assert_equal, assert_close, weighted_mean, run_log, without


# -- 1. What travels: down and up extras, every reduction, the round facts --------------------------------

class Probe(Plugin):
    """Sends down one tensor per parameter and a scalar derived from the round facts; sends up the client's
    change (one per parameter) and its squared norm (a scalar), once per reduction kind."""

    name = "ct_probe"

    def messages(self, shared: Params) -> Messages:
        up = {}
        for kind in REDUCTIONS:
            up.update({f"{kind}-{n}": UpSpec(spec, kind) for n, spec in like(shared).items()})
            up[f"{kind}-scalar"] = UpSpec(scalar(), kind)
        return Messages(down={**like(shared), "tick": scalar()}, up=up)

    def broadcast(self, facts: RoundFacts) -> Params:
        REC["probe_broadcast"].append(snapshot(facts))
        return {**{n: t * facts.round_num + len(facts.sampled) for n, t in facts.previous_global.items()},
                "tick": torch.tensor(1000.0 * facts.round_num + facts.num_clients, dtype=torch.float64)}

    def transform_gradients(self, grads: Params, view: LocalView) -> Params:
        REC["probe_gradient_extras"].append(clone(view.extras))
        return grads

    def client_upload(self, view: LocalView) -> Params:
        REC["probe_upload"].append({"params": clone(view.params), "received": clone(view.received),
                                    "extras": clone(view.extras), "metrics": dict(view.metrics)})
        change = {n: view.params[n] - view.received[n] for n in view.params}
        norm = torch.tensor(sum(float((p.double() ** 2).sum()) for p in view.params.values()), dtype=torch.float64)
        out = {}
        for kind in REDUCTIONS:
            out.update({f"{kind}-{n}": c.clone() for n, c in change.items()})
            out[f"{kind}-scalar"] = norm.clone()
        return out

    def receive(self, facts: RoundFacts) -> None:
        REC["probe_receive"].append({**snapshot(facts), "reduced": clone(facts.extras(self.name))})

    def transform_aggregate(self, old: Params, aggregate: Params, facts: RoundFacts) -> Params:
        REC["probe_transform"].append({**snapshot(facts), "old": clone(old), "aggregate": clone(aggregate)})
        return aggregate


class Keep(Plugin):
    """The server update that keeps the aggregate, recording what it was given."""

    name = "ct_keep"
    roles = ("server_update",)

    def server_update(self, old: Params, aggregate: Params, facts: RoundFacts) -> Params:
        REC["keep_update"].append({**snapshot(facts), "old": clone(old), "aggregate": clone(aggregate)})
        return aggregate


def check_probe_records(cfg, rounds: int) -> list[Params]:
    """Every record of a Probe + Keep run against the hand computation; the reductions received, per round."""
    n_clients = cfg.data.synthetic.num_clients
    uploads = iter(REC["probe_upload"])
    assert len(REC["probe_broadcast"]) == len(REC["probe_receive"]) == len(REC["keep_update"]) == rounds
    reduced_per_round = []
    for r in range(1, rounds + 1):
        sampled = sampled_clients(cfg, r)
        told = REC["probe_broadcast"][r - 1]
        assert (told["round"], told["N"], told["sampled"], told["received"], told["weights"]) == \
               (r, n_clients, tuple(sampled), [], {})
        if r > 1:  # the previous global is the model the last round's update returned
            assert_equal(told["previous"], REC["keep_update"][r - 2]["aggregate"])
        down = {**{n: t * r + len(sampled) for n, t in told["previous"].items()},
                "tick": torch.tensor(1000.0 * r + n_clients, dtype=torch.float64)}
        ups = [next(uploads) for _ in sampled]
        for up in ups:
            assert_equal(up["extras"], down)  # what the client got is what broadcast() sent
            assert_equal(up["received"], told["previous"])
        at_gradient = [e for e in REC["probe_gradient_extras"] if float(e["tick"]) == 1000.0 * r + n_clients]
        assert at_gradient, f"no gradient step saw round {r}'s extras"
        for extras in at_gradient:
            assert_equal(extras, down)
        weights = {c: float(up["metrics"]["train_total"]) for c, up in zip(sampled, ups)}
        facts = (r, n_clients, tuple(sampled), list(sampled), weights)
        for record in (REC["probe_receive"][r - 1], REC["probe_transform"][r - 1], REC["keep_update"][r - 1]):
            assert (record["round"], record["N"], record["sampled"], record["received"], record["weights"]) == facts
            assert_equal(record["previous"], told["previous"])

        # The reductions, by hand, over the round's clients.
        w = torch.tensor([weights[c] for c in sampled], dtype=torch.float64)
        changes = [{n: up["params"][n] - up["received"][n] for n in up["params"]} for up in ups]
        values = {n: torch.stack([c[n] for c in changes]) for n in changes[0]}
        values["scalar"] = torch.tensor([sum(float((p.double() ** 2).sum()) for p in up["params"].values())
                                         for up in ups], dtype=torch.float64)
        got = REC["probe_receive"][r - 1]["reduced"]
        assert set(got) == {f"{kind}-{n}" for kind in REDUCTIONS for n in values}
        for name, stacked in values.items():
            assert got[f"sum-{name}"].dtype == stacked.dtype and got[f"sum-{name}"].shape == stacked.shape[1:]
            wide = w.reshape(-1, *[1] * (stacked.dim() - 1))
            by_hand = {"weighted_mean": (wide * stacked.double()).sum(0) / w.sum(), "mean": stacked.double().mean(0),
                       "sum": stacked.double().sum(0)}
            for kind, expected in by_hand.items():
                torch.testing.assert_close(got[f"{kind}-{name}"].double(), expected, rtol=1e-5, atol=1e-6,
                                           msg=f"{kind} of {name}, round {r}")
            assert torch.equal(got[f"min-{name}"], stacked.min(0).values)  # a selection: exact
            assert torch.equal(got[f"max-{name}"], stacked.max(0).values)
        reduced_per_round.append(got)

        # The aggregate is the samples-weighted mean of the uploaded params; nothing else moved it.
        transform = REC["probe_transform"][r - 1]
        assert_equal(transform["old"], told["previous"])
        assert_close(transform["aggregate"], weighted_mean([up["params"] for up in ups], [weights[c] for c in sampled]))
        assert_equal(REC["keep_update"][r - 1]["aggregate"], transform["aggregate"])
        assert_equal(REC["keep_update"][r - 1]["old"], told["previous"])
    assert next(uploads, None) is None
    return reduced_per_round


def test_extras_travel_and_reduce_as_computed_by_hand_in_both_backends(register, small_cfg) -> None:
    register(Probe, Keep)
    rounds = 3
    reduced = {}
    for backend in ("sequential", "vectorized"):
        REC.clear()
        cfg = small_cfg(**{**FAST, "ct_probe.use": True, "ct_keep.use": True, "federate.backend": backend,
                           "federate.total_round_num": rounds})
        result = run(cfg)
        assert result["rounds_run"] == rounds
        assert "one client at a time" not in run_log(result)  # the vectorized run did vectorize
        reduced[backend] = check_probe_records(cfg, rounds)
    for seq, vec in zip(reduced["sequential"], reduced["vectorized"]):
        assert_close(seq, vec, tol=1e-5)


# -- 2. The aggregator role ----------------------------------------------------------------------------------

class Median(Plugin):
    """Coordinate-wise median of the uploaded parameters (the two middle values averaged)."""

    name = "ct_median"
    roles = ("aggregator",)

    def messages(self, shared: Params) -> Messages:
        return Messages(up={"tag": UpSpec(scalar(), "sum")})

    def client_upload(self, view: LocalView) -> Params:
        tag = torch.tensor(sum(float(p.double().sum()) for p in view.params.values()), dtype=torch.float64)
        REC["median_client"].append({"params": clone(view.params), "metrics": dict(view.metrics), "tag": tag})
        return {"tag": tag.clone()}

    def aggregate(self, uploads: list[Upload], facts: RoundFacts) -> Params:
        REC["median_aggregate"].append({
            **snapshot(facts), "reduced": clone(facts.extras(self.name)),
            "uploads": [{"client": u.client, "weight": facts.weights[u.client], "metrics": dict(u.metrics),
                         "params": clone(u.params), "extras": {p: clone(e) for p, e in u.extras.items()}}
                        for u in uploads]})
        return {n: torch.stack([u.params[n] for u in uploads]).quantile(0.5, dim=0) for n in uploads[0].params}


def test_an_aggregator_gets_every_upload_and_its_median_becomes_the_global_model(register, small_cfg) -> None:
    register(Median)
    rounds = 3
    cfg = small_cfg(**{**FAST, "ct_median.use": True, "federate.total_round_num": rounds})
    assert build_plan(cfg).aggregator.name == "ct_median"
    run(cfg)
    clients = iter(REC["median_client"])
    assert len(REC["median_aggregate"]) == rounds
    for r, seen in enumerate(REC["median_aggregate"], start=1):
        sampled = sampled_clients(cfg, r)
        mine = [next(clients) for _ in sampled]  # what each client uploaded, in client order
        assert [u["client"] for u in seen["uploads"]] == sampled == seen["received"]
        assert seen["round"] == r and seen["N"] == 12 and seen["sampled"] == tuple(sampled)
        for upload, client in zip(seen["uploads"], mine):
            assert upload["weight"] == float(client["metrics"]["train_total"]) == seen["weights"][upload["client"]]
            assert upload["metrics"] == client["metrics"]
            assert_equal(upload["params"], client["params"])
            assert upload["extras"].keys() == {"ct_median"}
            assert_equal(upload["extras"]["ct_median"], {"tag": client["tag"]})
        assert torch.equal(seen["reduced"]["tag"], sum(c["tag"] for c in mine))
        if r < rounds:  # the next round starts from the median, computed here by hand
            by_hand = {n: torch.from_numpy(np.median(np.stack([c["params"][n].numpy() for c in mine]), axis=0))
                       for n in mine[0]["params"]}
            following = REC["median_aggregate"][r]["previous"]
            assert_close(following, by_hand, tol=1e-6)
            # ... and it is not the (default) weighted mean: the aggregator's result was used
            mean = weighted_mean([c["params"] for c in mine], [float(c["metrics"]["train_total"]) for c in mine])
            assert max(float((following[n].double() - mean[n]).abs().max()) for n in mean) > 1e-4
    assert next(clients, None) is None


class MeanAggregator(Plugin):
    """The weighted mean of all uploads, summed in the order the streaming mean sums them."""

    name = "ct_mean"
    roles = ("aggregator",)

    def aggregate(self, uploads: list[Upload], facts: RoundFacts) -> Params:
        REC["mean_calls"].append(len(uploads))
        total = {n: torch.zeros_like(t) for n, t in facts.previous_global.items()}
        weight = 0.0
        for upload in uploads:
            w = facts.weights[upload.client]
            for n, t in total.items():
                t.add_(upload.params[n], alpha=w)
            weight += w
        return {n: t / weight for n, t in total.items()}


def test_an_aggregator_returning_the_weighted_mean_equals_fedavg_exactly(register, small_cfg) -> None:
    register(MeanAggregator)
    overrides = {**FAST, "federate.total_round_num": 4, "eval.freq": 1}
    plain = run(small_cfg(**overrides))
    ours = run(small_cfg(**overrides, **{"ct_mean.use": True}))
    assert REC["mean_calls"] == [6, 6, 6, 6]  # it did aggregate every round
    assert without(ours, "method") == without(plain, "method")
    assert ours["method"] == "ct_mean" and plain["method"] == "FedAvg"
    metrics = [(Path(r["run_dir"]) / "metrics.jsonl").read_text() for r in (plain, ours)]
    assert metrics[0] == metrics[1] and metrics[0].count("\n") == 4
