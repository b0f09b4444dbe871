"""FedNova: the normalizer against the paper's closed forms and against torch's SGD, the client weights
n_i * a_ref / a_i, the server step against the paper's formula; FedAvg bit for bit when every
client's normalizer is equal, not when clients take different step counts; resume exact."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from fedplug.algorithms.fednova import normalizer
from fedplug.core.messages import RoundFacts, Upload
from fedplug.core.plugin import LocalView
from fedplug.data import build_data
from fedplug.run.plan import build_plan
from fedplug.run.simulation import run
from fedplug.server.round import RoundAggregation
from test_scaffold import without_run_dir


def momentum_closed_form(tau: int, rho: float) -> float:
    return (tau - rho * (1 - rho ** tau) / (1 - rho)) / (1 - rho)


def prox_closed_form(tau: int, lr: float, mu: float) -> float:
    return (1 - (1 - lr * mu) ** tau) / (lr * mu)


def sgd_normalizer(tau: int, lr: float, rho: float, mu: float) -> float:
    """||a||_1 measured with torch.optim.SGD: at step k the task gradient is the unit vector e_k and the
    proximal term adds mu (y - x); then x - y = lr * sum_k a_k e_k."""
    y = torch.zeros(tau, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([y], lr=lr, momentum=rho)
    for k in range(tau):
        y.grad = torch.eye(tau, dtype=torch.float64)[k] + mu * y.detach()
        opt.step()
    return float((-y.detach() / lr).abs().sum())


@pytest.mark.parametrize("tau", [1, 3, 10])
def test_normalizer_matches_the_closed_forms(tau: int) -> None:
    assert normalizer(tau, 0.1) == tau
    for rho in (0.5, 0.9):
        assert normalizer(tau, 0.1, momentum=rho) == pytest.approx(momentum_closed_form(tau, rho), rel=1e-12)
    for lr, mu in ((0.1, 0.7), (0.05, 2.0)):
        assert normalizer(tau, lr, mu=mu) == pytest.approx(prox_closed_form(tau, lr, mu), rel=1e-12)
    # momentum and proximal term together: no closed form in the paper; torch's SGD decides
    assert normalizer(tau, 0.1, momentum=0.5, mu=0.7) == pytest.approx(sgd_normalizer(tau, 0.1, 0.5, 0.7), rel=1e-9)
    assert sgd_normalizer(tau, 0.1, 0.9, 0.0) == pytest.approx(momentum_closed_form(tau, 0.9), rel=1e-9)


def nova_upload(plugin, client: int, samples: int, steps: int, params: dict, lr: float = 0.1) -> Upload:
    metrics = {"train_total": samples, "train_steps": steps, "train_loss": 0.0}
    extras = plugin.client_upload(LocalView(params, {}, {}, {}, lr, metrics))
    return Upload(client, params, metrics, {"fednova": extras})


def test_client_upload_and_weight(small_cfg) -> None:
    """Momentum 0.5 and FedProx's mu 0.7: the normalizer counts both; weight = n * a(5 steps) / a(3 steps)."""
    plan = build_plan(small_cfg(fednova__use=True, fedprox__use=True, fedprox__mu=0.7,
                                train__optimizer__momentum=0.5, train__local_update_steps=5))
    (nova,) = [p for p in plan.plugins if p.name == "fednova"]
    a3, a5 = sgd_normalizer(3, 0.1, 0.5, 0.7), sgd_normalizer(5, 0.1, 0.5, 0.7)
    up = nova_upload(nova, 2, 48, 3, {})
    sent = {k: float(v) for k, v in up.extras["fednova"].items()}
    assert sent == pytest.approx({"norm": a3, "norm_min": a3, "samples_x_norm": 48 * a3,
                                  "samples_over_norm": 48 / a3, "samples": 48}, rel=1e-9)
    assert plan.weight(up) == pytest.approx(48 * a5 / a3, rel=1e-9)
    assert plan.weight(nova_upload(nova, 2, 48, 5, {})) == 48  # the configured step count: n exactly


@pytest.mark.parametrize("keys, mu", [({"fedprox.use": True}, 0.7), ({"federate.method": "FedProx"}, 0.7),
                                      ({"federate.method": "fedprox"}, 0.7), ({}, 0.0)])
def test_the_normalizer_counts_fedproxs_mu_only_when_fedprox_is_on(small_cfg, keys: dict, mu: float) -> None:
    """fedprox.mu set while FedProx is off changes no step: the normalizer must not count it."""
    plan = build_plan(small_cfg(fednova__use=True, fedprox__mu=0.7, **{k.replace(".", "__"): v for k, v in keys.items()}))
    (nova,) = [p for p in plan.plugins if p.name == "fednova"]
    assert nova.mu == mu
    a3 = sgd_normalizer(3, 0.1, 0.0, mu)
    assert float(nova_upload(nova, 2, 48, 3, {}).extras["fednova"]["norm"]) == pytest.approx(a3, rel=1e-9)

@pytest.mark.parametrize("momentum", [0.0, 0.5])
def test_server_step_is_the_papers_formula(small_cfg, momentum: float) -> None:
    """x <- x - tau_eff * sum_i p_i (x - y_i) / a_i, tau_eff = sum_i p_i a_i, p_i = n_i / sum_j n_j."""
    plan = build_plan(small_cfg(fednova__use=True, train__optimizer__momentum=momentum))
    (nova,) = plan.plugins
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, generator=gen, dtype=torch.float64)
    clients = [(0, 32, 2), (5, 80, 5), (9, 50, 9)]  # (id, samples, steps taken)
    ys = [x + torch.randn(4, generator=gen, dtype=torch.float64) for _ in clients]
    facts = RoundFacts(1, 12, tuple(c for c, _, _ in clients), {"p": x.float()})
    messages = plan.messages(facts.previous_global)
    aggregation = RoundAggregation(plan, facts, messages)
    for (client, n, steps), y in zip(clients, ys):
        aggregation.add(nova_upload(nova, client, n, steps, {"p": y.float()}))
    new = plan.update_global(facts.previous_global, aggregation.aggregate(), facts)["p"]

    a = [momentum_closed_form(t, momentum) if momentum else float(t) for _, _, t in clients]
    p = [n / sum(n for _, n, _ in clients) for _, n, _ in clients]
    tau_eff = sum(pi * ai for pi, ai in zip(p, a))
    expected = x - tau_eff * sum(pi * (x - y) / ai for pi, y, ai in zip(p, ys, a))
    fedavg = sum(pi * y for pi, y in zip(p, ys))
    torch.testing.assert_close(new.double(), expected, rtol=1e-5, atol=1e-5)
    # the contract's form: M = mean weighted by n_i * a_ref / a_i (a_ref: 5 configured steps), x + s (M - x)
    a_ref = momentum_closed_form(5, momentum) if momentum else 5.0
    w = [n * a_ref / ai for (_, n, _), ai in zip(clients, a)]
    m = sum(wi * y for wi, y in zip(w, ys)) / sum(w)
    s = sum(n * ai for (_, n, _), ai in zip(clients, a)) * sum(n / ai for (_, n, _), ai in zip(clients, a)) / 162 ** 2
    assert s > 1.01
    torch.testing.assert_close(x + s * (m - x), expected)
    torch.testing.assert_close(facts.weights, dict(zip((c for c, _, _ in clients), w)))
    assert (new.double() - fedavg).abs().max() > 1e-2  # not the plain weighted mean


# -- whole runs ------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides", [{}, {"train__optimizer__momentum": 0.5}], ids=["sgd", "momentum"])
def test_equal_step_counts_equal_fedavg_bit_for_bit(small_cfg, overrides) -> None:
    """Batch mode: every client takes local_update_steps steps, so every normalizer is the same."""
    fednova = run(small_cfg(fednova__use=True, **overrides))
    assert fednova["method"] == "FedNova"
    assert without_run_dir(fednova, "method") == without_run_dir(run(small_cfg(**overrides)), "method")


def test_different_step_counts_differ_from_fedavg(small_cfg) -> None:
    epochs = dict(train__batch_or_epoch="epoch", train__local_update_steps=1)
    sizes = [build_data(small_cfg()).splits["train"].client(i)[0].shape[0] for i in range(12)]
    assert len({math.ceil(n / 16) for n in sizes}) > 1  # one epoch: different step counts
    fednova = run(small_cfg(fednova__use=True, **epochs))
    assert without_run_dir(fednova, "method") != without_run_dir(run(small_cfg(**epochs)), "method")


def test_resume_equals_uninterrupted(small_cfg, rewind) -> None:
    cfg = small_cfg(fednova__use=True, train__batch_or_epoch="epoch", train__local_update_steps=1,
                    train__optimizer__momentum=0.5, checkpoint__every=2, eval__freq=1)
    first = run(cfg)
    run_dir = Path(first["run_dir"])
    before = (run_dir / "metrics.jsonl").read_text()
    rewind(run_dir, 4)
    again = run(cfg, run_dir, resume=True)
    assert again == first and (run_dir / "metrics.jsonl").read_text() == before
