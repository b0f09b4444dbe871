"""FedDyn: the corrected local step and the client's grad_k update, the server's h and theta by hand
(the paper's uniform mean, and fedplug's sample-weighted default); alpha 0 is FedAvg bit for bit;
resuming restores h and every grad_k."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedplug.core.messages import RoundFacts, Upload
from fedplug.run import checkpoint
from fedplug.run.plan import build_plan
from fedplug.run.simulation import run
from fedplug.server.round import RoundAggregation
from test_scaffold import TOL, backend_for, cloned, full_batch_steps, random_like, without_run_dir


def test_local_steps_and_state_update_by_hand(small_cfg) -> None:
    """Each step: g <- g - grad_k + alpha (theta - theta^{t-1}); after the update:
    grad_k <- grad_k - alpha (theta_k - theta^{t-1})."""
    lr, steps, alpha = 0.1, 3, 0.3
    cfg = small_cfg(feddyn__use=True, feddyn__alpha=alpha, train__local_update_steps=steps,
                    dataloader__batch_size=1000)
    backend = backend_for(cfg)
    start = cloned(backend.shared_parameters())
    grad_k = random_like(start, 5)
    backend.client_states(0)["feddyn"].update(cloned(grad_k))
    out = backend.train_client(0, 1, start)
    assert out["extras"] == {"feddyn": {}}  # nothing but the model travels

    x, y = backend.data.splits["train"].client(0)
    expected = full_batch_steps(x, y, start, steps, lr, lambda k, g, w: g - grad_k[k] + alpha * (w - start[k]))
    without_state = full_batch_steps(x, y, start, steps, lr, lambda k, g, w: g + alpha * (w - start[k]))
    for k in start:
        torch.testing.assert_close(out["params"][k], expected[k], **TOL)
        assert not torch.allclose(out["params"][k], without_state[k], atol=1e-3)
        torch.testing.assert_close(backend.client_states(0)["feddyn"][k],
                                   grad_k[k] - alpha * (expected[k] - start[k]), **TOL)


@pytest.mark.parametrize("weighting", ["uniform", "samples"])
def test_server_h_and_theta_by_hand(small_cfg, weighting: str) -> None:
    """h <- h - alpha/N * sum_{k in P}(theta_k - theta^{t-1}); theta^t = mean_{k in P} theta_k - h / alpha.
    Uniform is the paper's; under the default the mean is weighted by samples and the sum is |P| * (mean - old)."""
    alpha, N = 0.5, 12
    plan = build_plan(small_cfg(feddyn__use=True, feddyn__alpha=alpha, aggregator__weighting=weighting))
    old = torch.tensor([1.0, -2.0], dtype=torch.float64)
    h = torch.zeros(2, dtype=torch.float64)
    rounds = [[(0, 10, [2.0, 0.0]), (3, 30, [0.0, 1.0]), (8, 60, [1.0, 1.0])],
              [(3, 20, [-1.0, 2.0]), (5, 80, [0.5, 0.5])]]
    for r, clients in enumerate(rounds):
        facts = RoundFacts(r + 1, N, tuple(c for c, _, _ in clients), {"p": old.float()})
        aggregation = RoundAggregation(plan, facts, plan.messages(facts.previous_global))
        for client, n, theta in clients:
            aggregation.add(Upload(client, {"p": torch.tensor(theta)},
                                   {"train_total": n, "train_steps": 5, "train_loss": 0.0}))
        new = plan.update_global(facts.previous_global, aggregation.aggregate(), facts)["p"]

        thetas = [torch.tensor(t, dtype=torch.float64) for _, _, t in clients]
        if weighting == "uniform":
            mean = sum(thetas) / len(thetas)
            total_change = sum(t - old for t in thetas)
        else:
            ns = [n for _, n, _ in clients]
            mean = sum(n * t for n, t in zip(ns, thetas)) / sum(ns)
            total_change = len(thetas) * (mean - old)
        h = h - alpha / N * total_change
        old = mean - h / alpha
        torch.testing.assert_close(new.double(), old, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(plan.plugins[0].h["p"].double(), h, rtol=1e-6, atol=1e-6)
        assert (old - mean).abs().max() > 0.1  # the h / alpha step is not negligible


# -- whole runs ------------------------------------------------------------------------------------
def test_alpha_zero_is_fedavg_bit_for_bit_and_alpha_on_is_not(small_cfg) -> None:
    fedavg = without_run_dir(run(small_cfg()), "method")
    assert without_run_dir(run(small_cfg(feddyn__use=True, feddyn__alpha=0.0)), "method") == fedavg
    assert without_run_dir(run(small_cfg(feddyn__use=True, feddyn__alpha=0.1)), "method") != fedavg


@pytest.mark.parametrize("backend", ["sequential", "vectorized"])
def test_resume_restores_h_and_every_grad_k(small_cfg, backend: str, rewind) -> None:
    """Uniform weighting (the paper's): then h = (1/N) * sum over every client of grad_k (never visited: 0)."""
    cfg = small_cfg(feddyn__use=True, feddyn__alpha=0.1, aggregator__weighting="uniform", checkpoint__every=2,
                    eval__freq=1, federate__backend=backend)
    first = run(cfg)
    run_dir = Path(first["run_dir"])
    before = (run_dir / "metrics.jsonl").read_text()
    rewind(run_dir, 4)
    tensors, meta = checkpoint.load(run_dir / checkpoint.CHECKPOINT_FILE)
    assert meta["round"] == 4
    h = checkpoint.unflatten(tensors, "server/feddyn/h/")
    grads = [v["state"]["feddyn"] for v in checkpoint.unflatten(tensors, "clients/").values()]
    assert set(h) == {"fc.weight", "fc.bias"} and all(t.abs().sum() > 0 for t in h.values())
    assert len(grads) >= 6 and all(t.abs().sum() > 0 for s in grads for t in s.values())
    for k in h:
        torch.testing.assert_close(h[k], sum(s[k] for s in grads) / 12, **TOL)

    again = run(cfg, run_dir, resume=True)
    assert again == first and (run_dir / "metrics.jsonl").read_text() == before
