"""SCAFFOLD (option II): the corrected local step, the client's c_i update and upload, the server's c,
all by hand; round 1 is FedAvg's exactly and later rounds are not; resuming restores c and every c_i."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fedplug.backends.sequential import SequentialBackend
from fedplug.core.messages import RoundFacts, Upload
from fedplug.data import build_data
from fedplug.models import build_model
from fedplug.run import checkpoint
from fedplug.run.plan import build_plan
from fedplug.run.simulation import run
from fedplug.server.round import RoundAggregation

TOL = dict(rtol=1e-5, atol=1e-5)


# -- helpers (also used by test_fednova.py and test_feddyn.py) ---------------------------------------
def backend_for(cfg) -> SequentialBackend:
    data, plan = build_data(cfg), build_plan(cfg)
    return SequentialBackend(cfg, build_model(cfg, data.input_shape, plan), plan, data)


def cloned(params: dict) -> dict:
    return {k: v.detach().clone() for k, v in params.items()}


def full_batch_steps(x, y, start: dict, steps: int, lr: float, correct) -> dict:
    """`steps` plain SGD steps of the logistic regression on all rows: w <- w - lr * correct(g, w)."""
    w = cloned(start)
    for _ in range(steps):
        v = {k: t.clone().requires_grad_(True) for k, t in w.items()}
        loss = torch.nn.functional.cross_entropy(x @ v["fc.weight"].T + v["fc.bias"], y)
        grads = dict(zip(v, torch.autograd.grad(loss, list(v.values()))))
        w = {k: w[k] - lr * correct(k, grads[k], w[k]) for k in w}
    return w


def without_run_dir(result: dict, *keys: str) -> dict:
    return {k: v for k, v in result.items() if k not in ("run_dir", *keys)}


def metrics_lines(result: dict) -> list[dict]:
    return [json.loads(line) for line in (Path(result["run_dir"]) / "metrics.jsonl").read_text().splitlines()]


def random_like(params: dict, seed: int, scale: float = 0.3) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {k: scale * torch.randn(v.shape, generator=gen) for k, v in params.items()}


# -- client ----------------------------------------------------------------------------------------
def test_corrected_steps_and_option_ii_upload_by_hand(small_cfg) -> None:
    lr, steps = 0.1, 2
    cfg = small_cfg(scaffold__use=True, train__local_update_steps=steps, dataloader__batch_size=1000)
    backend = backend_for(cfg)
    start = cloned(backend.shared_parameters())
    c, c_i = random_like(start, 1), random_like(start, 2)  # the server's c (broadcast) and client 0's own
    backend.client_states(0)["scaffold"].update(cloned(c_i))
    out = backend.train_client(0, 1, start, {"scaffold": cloned(c)})
    after, delta = cloned(out["params"]), cloned(out["extras"]["scaffold"])

    x, y = backend.data.splits["train"].client(0)  # fewer than 1000 rows: each step sees every row
    expected = full_batch_steps(x, y, start, steps, lr, lambda k, g, w: g - c_i[k] + c[k])
    plain = full_batch_steps(x, y, start, steps, lr, lambda k, g, w: g)
    new_c_i = {k: c_i[k] - c[k] + (start[k] - expected[k]) / (steps * lr) for k in start}
    for k in start:
        torch.testing.assert_close(after[k], expected[k], **TOL)
        assert not torch.allclose(after[k], plain[k], atol=1e-3)  # the correction did move the model
        torch.testing.assert_close(delta[k], new_c_i[k] - c_i[k], **TOL)
        torch.testing.assert_close(backend.client_states(0)["scaffold"][k], new_c_i[k], **TOL)


def test_upload_divides_by_the_steps_actually_taken(small_cfg) -> None:
    """Epoch mode: client 0 (86 rows, batches of 32) takes 3 steps although local_update_steps is 1."""
    lr = 0.1
    cfg = small_cfg(scaffold__use=True, train__batch_or_epoch="epoch", train__local_update_steps=1,
                    dataloader__batch_size=32)
    backend = backend_for(cfg)
    start = cloned(backend.shared_parameters())
    c = random_like(start, 3)
    out = backend.train_client(0, 1, start, {"scaffold": cloned(c)})
    assert backend.data.splits["train"].client(0)[0].shape[0] == 86 and out["train_steps"] == 3
    for k in start:  # c_i was 0: delta = -c + (x - y) / (3 lr)
        torch.testing.assert_close(out["extras"]["scaffold"][k], -c[k] + (start[k] - out["params"][k]) / (3 * lr),
                                   **TOL)


# -- server ----------------------------------------------------------------------------------------
def upload(client: int, samples: float, p: list[float], delta_c: list[float]) -> Upload:
    return Upload(client, {"p": torch.tensor(p)}, {"train_total": samples, "train_steps": 5, "train_loss": 0.0},
                  {"scaffold": {"p": torch.tensor(delta_c)}})


def test_server_control_variate_by_hand(small_cfg) -> None:
    """c <- c + sum(delta c_i) / N with N = 12 (every client), whatever the weights; x is FedAvg's mean."""
    plan = build_plan(small_cfg(scaffold__use=True))
    x = {"p": torch.tensor([1.0, -2.0])}
    messages = plan.messages(x)
    rounds = [[upload(0, 10, [0.0, 0.0], [0.6, -1.2]), upload(4, 30, [2.0, 4.0], [1.8, 0.0]),
               upload(7, 60, [1.0, 1.0], [-0.6, 2.4])],
              [upload(4, 50, [3.0, 1.0], [1.2, 1.2])]]
    expected_c = [[0.0, 0.0], [0.15, 0.1], [0.25, 0.2]]  # sums (1.8, 1.2) / 12, then + (1.2, 1.2) / 12
    expected_x = [[1.2, 1.8], [3.0, 1.0]]  # (10 * y0 + 30 * y4 + 60 * y7) / 100; one client
    for r, uploads in enumerate(rounds):
        facts = RoundFacts(r + 1, 12, tuple(u.client for u in uploads), x)
        sent = plan.broadcast(facts, messages)["scaffold"]
        torch.testing.assert_close(sent["p"], torch.tensor(expected_c[r]))
        aggregation = RoundAggregation(plan, facts, messages)
        for u in uploads:
            aggregation.add(u)
        x = plan.update_global(x, aggregation.aggregate(), facts)
        torch.testing.assert_close(x["p"], torch.tensor(expected_x[r]))
    facts = RoundFacts(3, 12, (0,), x)
    torch.testing.assert_close(plan.broadcast(facts, messages)["scaffold"]["p"], torch.tensor(expected_c[2]))


# -- whole runs ------------------------------------------------------------------------------------
def test_round_one_is_fedavg_exactly_and_later_rounds_are_not(small_cfg) -> None:
    common = dict(federate__total_round_num=3, eval__freq=1)
    fedavg = metrics_lines(run(small_cfg(**common)))
    scaffold = metrics_lines(run(small_cfg(scaffold__use=True, **common)))
    assert [r["round"] for r in scaffold] == [1, 2, 3]
    assert scaffold[0] == fedavg[0]  # every correction is zero in round 1
    assert scaffold[1]["val_loss"] != fedavg[1]["val_loss"] and scaffold[2]["val_loss"] != fedavg[2]["val_loss"]


@pytest.mark.parametrize("backend", ["sequential", "vectorized"])
def test_resume_restores_c_and_every_c_i(small_cfg, backend: str, rewind) -> None:
    cfg = small_cfg(scaffold__use=True, checkpoint__every=2, eval__freq=1, federate__backend=backend)
    first = run(cfg)
    run_dir = Path(first["run_dir"])
    before = (run_dir / "metrics.jsonl").read_text()
    rewind(run_dir, 4)
    tensors, meta = checkpoint.load(run_dir / checkpoint.CHECKPOINT_FILE)
    assert meta["round"] == 4
    c = checkpoint.unflatten(tensors, "server/scaffold/control/")
    clients = checkpoint.unflatten(tensors, "clients/")
    c_i = {int(k): v["state"]["scaffold"] for k, v in clients.items()}
    assert set(c) == {"fc.weight", "fc.bias"} and all(t.abs().sum() > 0 for t in c.values())
    assert len(c_i) >= 6 and all(t.abs().sum() > 0 for s in c_i.values() for t in s.values())
    for k in c:  # SCAFFOLD's invariant: c = (1/N) sum over every client of c_i (never visited: 0)
        torch.testing.assert_close(c[k], sum(s[k] for s in c_i.values()) / 12, **TOL)

    again = run(cfg, run_dir, resume=True)  # rounds 5 and 6 again, from round 4's c and c_i
    assert again == first and (run_dir / "metrics.jsonl").read_text() == before
