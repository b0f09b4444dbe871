"""Every supported combination: the plan it should have, it learns on a small federation, and its first
round equals the composition of the single plug-ins' update rules written out by hand (below), so a
wrong sign, a dropped factor or a wrong model at evaluation fails here, not only a crash."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

from fedplug.run.plan import build_plan
from fedplug.run.simulation import run

BASE = ("fedopt", "fedprox", "fedbn")
PERSONAL = (None, "pfedme", "ditto", "fedem")
SETTINGS = {  # small but real settings, so each plug-in does something
    "fedopt": {"fedopt__optimizer__lr": 0.5, "fedopt__optimizer__momentum": 0.5},
    "fedprox": {"fedprox__mu": 0.1},
    "fedbn": {"personalization__local_param": ["bias"]},
    "pfedme": {"personalization__K": 2, "personalization__regular_weight": 1.0},
    "ditto": {"personalization__regular_weight": 0.1, "personalization__local_update_steps": 3},
    "fedem": {"fedem__num_models": 2},
}
ORDER = ("fedbn", "fedprox", "pfedme", "ditto", "fedem", "fedopt")  # the plan's order of plug-ins
COMBINATIONS = [tuple(pair) + ((p,) if p else ()) for pair in itertools.combinations(BASE, 2) for p in PERSONAL]
COMBINATIONS += [("fedprox", "fedopt", "ditto")]


@pytest.mark.parametrize("names", COMBINATIONS, ids="+".join)
def test_combination_runs_and_learns(small_cfg, names: tuple[str, ...]) -> None:
    overrides = {f"{n}__use": True for n in names}
    for n in names:
        overrides.update(SETTINGS[n])
    cfg = small_cfg(eval__freq=1, federate__total_round_num=5, **overrides)
    plan = build_plan(cfg)
    assert plan.names == [n for n in ORDER if n in names]
    owners = {h.owner for _, table in plan.tables.items() for _, hooks in table for h in hooks}
    for name in names:  # each hook-bearing plug-in's hooks are in the plan
        if name not in ("fedopt", "fedbn"):
            assert name in owners
    if "fedopt" in names:
        assert plan.server_updater is not None and plan.server_updater.name == "fedopt"
    result = run(cfg)
    records = [json.loads(line) for line in (Path(result["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["val_loss"] < records[0]["val_loss"]
    assert result["method"] == "+".join(p.method for p in plan.plugins)


# ---------------------------------------------------------------------------------------------------
# One round against the composition of the single plug-ins' steps, written out here in plain torch.
#
# "Learns" alone let wrong algorithms through (FedProx's sign flipped, Ditto judged by the global
# model, pFedMe's beta dropped, FedEM's mixture weights frozen all still learned). Here round 1 of each
# combination is recomputed independently of fedplug's hooks, backends and server pipeline, from the
# papers' update rules as the plug-ins' docstrings state them:
#   local update (S full-batch SGD steps, lr):  w <- w - lr * grad [task(w) + mu/2 ||w - g||^2]
#     task: cross-entropy; FedEM: sum_m mean_i q(m|i) l_m(i), q from the E-step at the received model
#   pFedMe, per step: K times theta <- theta - plr * (grad [task + prox](theta) + lam * (theta - w)),
#     then w <- w - lr * lam * (w - theta); theta is kept, w uploaded
#   Ditto, first: v <- v - plr * grad [CE(v) + lam/2 ||v - g||^2] (its own steps, no FedProx term)
#   FedBN: the parameters named "bias" stay on the client (never averaged, kept from the initial model)
#   server: weighted mean by samples processed; pFedMe: (1 - beta) old + beta mean; FedOpt (SGD, first
#     step): old + server_lr * (that - old)
#   evaluation of every client: global + its local parameters; Ditto: v, pFedMe: theta; FedEM: the
#     mixture with its pi (uniform before its first update)
# Full batches (batch size 1000 >= every client's rows), so the rows' shuffling cannot change a step.
# Only the initial model and the sampled clients are taken from fedplug (they are checked elsewhere).
ORACLE_SETTINGS = {
    "fedopt": {"fedopt.optimizer.lr": 0.5, "fedopt.optimizer.momentum": 0.5},
    "fedprox": {"fedprox.mu": 0.5},
    "fedbn": {"personalization.local_param": ["bias"]},
    "pfedme": {"personalization.K": 2, "personalization.regular_weight": 1.0, "personalization.lr": 0.2,
               "personalization.beta": 0.6},
    "ditto": {"personalization.regular_weight": 0.5, "personalization.local_update_steps": 3,
              "personalization.lr": 0.2},
    "fedem": {"fedem.num_models": 2},
}
STEPS, LR = 3, 0.1


def oracle_cfg(small_cfg, names: tuple[str, ...]):
    values = {f"{n}.use": True for n in names}
    for n in names:
        values.update(ORACLE_SETTINGS[n])
    return small_cfg(**{"federate.total_round_num": 1, "eval.freq": 1, "train.local_update_steps": STEPS,
                        "train.optimizer.lr": LR, "dataloader.batch_size": 1000, **values})


def logits(p: dict, x: torch.Tensor, prefix: str = "") -> torch.Tensor:
    return x @ p[prefix + "fc.weight"].T + p[prefix + "fc.bias"]


def component_losses(p: dict, x: torch.Tensor, y: torch.Tensor, m: int) -> torch.Tensor:
    """(M, n): -log softmax(h_m(x_i))[y_i]."""
    return torch.stack([torch.nn.functional.cross_entropy(logits(p, x, f"components.{k}."), y, reduction="none")
                        for k in range(m)])


def oracle_round(cfg, names: tuple[str, ...], start: dict, sampled: list[int], data) -> tuple[dict, dict, dict]:
    """Round 1 by hand: the new global model, {split: (loss sum, correct, total)} with the round's train loss
    under "train", and what each sampled client keeps ("pi", "model": Ditto's v or pFedMe's theta, "local")."""
    mu = cfg.fedprox.mu if "fedprox" in names else 0.0
    lam = cfg.personalization.regular_weight
    plr = cfg.personalization.lr
    m = cfg.fedem.num_models if "fedem" in names else 0
    local_names = {n for n in start if "bias" in n} if "fedbn" in names else set()
    shared = [n for n in start if n not in local_names]

    def grad(loss_fn, p: dict) -> dict:
        leaves = {k: v.detach().clone().requires_grad_(True) for k, v in p.items()}
        return dict(zip(leaves, torch.autograd.grad(loss_fn(leaves), list(leaves.values()))))

    def prox(p: dict, weight: float) -> torch.Tensor:
        return weight / 2 * sum(((p[n] - start[n]) ** 2).sum() for n in shared)

    kept, uploads = {}, {}
    for c in sampled:
        x, y = data.splits["train"].client(c)
        if m:
            q = torch.softmax(torch.log(torch.full((m, 1), 1.0 / m)) - component_losses(start, x, y, m), dim=0)
            kept[c] = {"pi": q.mean(dim=1)}

            def task(p, x=x, y=y, q=q):
                return (q * component_losses(p, x, y, m)).mean(dim=1).sum()

            def figure(p, x=x, y=y, pi=kept[c]["pi"]):  # the reported train loss: the mixture's NLL
                log_probs = torch.stack([torch.log_softmax(logits(p, x, f"components.{k}."), dim=1) for k in range(m)])
                return torch.nn.functional.nll_loss(torch.logsumexp(torch.log(pi).view(-1, 1, 1) + log_probs, 0), y)
        else:
            def task(p, x=x, y=y):
                return torch.nn.functional.cross_entropy(logits(p, x), y)

            figure = task
        if "ditto" in names:
            v = dict(start)
            for _ in range(cfg.personalization.local_update_steps):
                g = grad(lambda p: torch.nn.functional.cross_entropy(logits(p, x), y) + prox(p, lam), v)
                v = {k: v[k] - plr * g[k] for k in v}
            kept[c] = {"model": v}
        w = dict(start)
        theta = dict(start)
        losses = []
        for _ in range(STEPS):
            if "pfedme" in names:
                for _ in range(cfg.personalization.K):
                    last = figure(theta).item()  # pFedMe reports the last forward pass of the batch
                    g = grad(lambda p: task(p) + prox(p, mu), theta)
                    theta = {k: theta[k] - plr * (g[k] + lam * (theta[k] - w[k])) for k in theta}
                w = {k: w[k] - LR * lam * (w[k] - theta[k]) for k in w}
                losses.append(last)
            else:
                losses.append(figure(w).item())
                g = grad(lambda p: task(p) + prox(p, mu), w)
                w = {k: w[k] - LR * g[k] for k in w}
        if "pfedme" in names:
            kept[c] = {"model": theta}
        kept.setdefault(c, {})["local"] = {n: w[n] for n in local_names}
        uploads[c] = ({n: w[n] for n in shared}, STEPS * x.shape[0], sum(losses) / STEPS)

    total = sum(samples for _, samples, _ in uploads.values())
    mean = {n: sum(samples * up[n] for up, samples, _ in uploads.values()) / total for n in shared}
    new = dict(mean)
    if "pfedme" in names:
        beta = cfg.personalization.beta
        new = {n: (1 - beta) * start[n] + beta * mean[n] for n in shared}
    if "fedopt" in names:
        new = {n: start[n] + cfg.fedopt.optimizer.lr * (new[n] - start[n]) for n in shared}

    figures = {"train": sum(samples * loss for _, samples, loss in uploads.values()) / total}
    for split in ("val", "test"):
        loss_sum, correct, rows = 0.0, 0, 0
        for c in range(data.num_clients):
            x, y = data.splits[split].client(c)
            p = {**new, **kept.get(c, {}).get("local", {n: start[n] for n in local_names})}
            p = kept.get(c, {}).get("model", p)
            if m:
                pi = kept.get(c, {}).get("pi", torch.full((m,), 1.0 / m))
                log_probs = torch.stack([torch.log_softmax(logits(p, x, f"components.{k}."), dim=1) for k in range(m)])
                out = torch.logsumexp(torch.log(pi).view(-1, 1, 1) + log_probs, dim=0)
                losses = torch.nn.functional.nll_loss(out, y, reduction="none")
            else:
                out = logits(p, x)
                losses = torch.nn.functional.cross_entropy(out, y, reduction="none")
            loss_sum += losses.double().sum().item()
            correct += int((out.argmax(dim=1) == y).sum())
            rows += x.shape[0]
        figures[split] = (loss_sum, correct, rows)
    return {n: t.detach() for n, t in new.items()}, figures, kept


@pytest.mark.parametrize("names", COMBINATIONS, ids="+".join)
def test_combination_round_one_equals_the_plugins_steps_by_hand(small_cfg, names: tuple[str, ...], monkeypatch) -> None:
    from fedplug.data import build_data
    from fedplug.models import build_model
    from fedplug.run import rounds as rounds_module

    cfg = oracle_cfg(small_cfg, names)
    data, plan = build_data(cfg), build_plan(cfg)
    start = {n: p.detach().clone() for n, p in build_model(cfg, data.input_shape, plan).named_parameters()}
    seen = {}
    end_round = rounds_module.RoundKeeper.end_round

    def spy(self, round_num, aggregation, evaluate):
        stop = end_round(self, round_num, aggregation, evaluate)
        seen.update(sampled=list(aggregation.facts.sampled), clients=self.save_client_state(round_num),
                    global_params={k: v.clone() for k, v in self.global_params.items()})
        return stop

    monkeypatch.setattr(rounds_module.RoundKeeper, "end_round", spy)
    result = run(cfg)
    (record,) = [json.loads(line) for line in (Path(result["run_dir"]) / "metrics.jsonl").read_text().splitlines()]

    expected_global, figures, kept = oracle_round(cfg, names, start, seen["sampled"], data)
    assert set(seen["global_params"]) == set(expected_global)
    for name, value in expected_global.items():
        torch.testing.assert_close(seen["global_params"][name], value, rtol=1e-5, atol=1e-6)
    for c in seen["sampled"]:  # what each trained client keeps for evaluation and the next round
        state = seen["clients"].get(str(c), {})  # absent: nothing kept (no FedBN, no personalization)
        for name, value in kept[c]["local"].items():
            torch.testing.assert_close(state["kept"][name], value.detach(), rtol=1e-5, atol=1e-6)
        personal = {"ditto": "model", "pfedme": "model", "fedem": "pi"}
        for plugin in set(personal) & set(names):
            expected = kept[c][personal[plugin]]
            expected = expected if isinstance(expected, dict) else {"pi": expected}
            assert set(state["state"][plugin]) == set(expected)
            for name, value in expected.items():
                torch.testing.assert_close(state["state"][plugin][name], value.detach(), rtol=1e-5, atol=1e-6)
    assert record["train_loss"] == pytest.approx(figures.pop("train"), rel=1e-5)
    for split, (loss_sum, correct, rows) in figures.items():
        assert record[f"{split}_total"] == rows
        assert record[f"{split}_loss"] == pytest.approx(loss_sum / rows, rel=1e-5)
        assert abs(record[f"{split}_acc"] * rows - correct) <= 2  # a row on a decision boundary may round either way
