"""Pooling with unequal client sizes, to exact numbers.

Every federation the other tests build has equal val/test sizes and nearly equal train samples per
round, so a mean of per-client figures and a sample-weighted one coincide there. Here the sizes are
unequal on purpose and every expected number is worked out by hand in the comments:

- the round's train loss is the sample-weighted mean of the clients' train losses (server/round.py),
  and a client's own train loss weights each batch by its rows (a short last batch counts less);
- `test_acc` is total correct / total samples, `test_acc_avg` the mean of per-client accuracies,
  `_std` the population standard deviation, `_bottom_decile`/`_top_decile` the 10th/90th percentile
  (linear interpolation), `_min`, `_max` (run/evaluation.py).
"""
from __future__ import annotations

import math

import pytest
import torch

from fedplug.core.default_hooks import default_train_hooks
from fedplug.core.messages import RoundFacts, Upload
from fedplug.core.trainer import Trainer
from fedplug.run.evaluation import per_client, pool
from fedplug.run.plan import build_plan
from fedplug.server.round import RoundAggregation


def upload(client: int, value: float, samples: int, loss: float) -> Upload:
    return Upload(client, {"p": torch.tensor([value])}, {"train_total": samples, "train_steps": 1, "train_loss": loss})


def test_round_train_loss_and_model_are_weighted_by_samples(small_cfg) -> None:
    plan = build_plan(small_cfg())
    facts = RoundFacts(1, 12, (0, 1, 2), {"p": torch.tensor([0.0])})
    aggregation = RoundAggregation(plan, facts, {})
    for up in (upload(0, 1.0, 10, 2.0), upload(1, 4.0, 30, 1.0), upload(2, 10.0, 60, 0.5)):
        aggregation.add(up)
    # (10 * 2.0 + 30 * 1.0 + 60 * 0.5) / 100 = 80 / 100; the plain mean of the losses would be 7/6
    assert aggregation.train_loss == pytest.approx(0.8, rel=1e-12)
    # (10 * 1 + 30 * 4 + 60 * 10) / 100 = 7.3; the plain mean of the values would be 5
    assert aggregation.aggregate()["p"].item() == pytest.approx(7.3, rel=1e-6)
    assert facts.weights == {0: 10.0, 1: 30.0, 2: 60.0} and facts.received == [0, 1, 2]


def test_a_clients_train_loss_weights_a_short_last_batch_by_its_rows(small_cfg) -> None:
    """10 rows in batches of 4 (4, 4, 2) at lr 0: the model does not move, so the reported train loss
    must be the mean cross-entropy over the 10 rows; the mean of the three batch means would not be."""
    cfg = small_cfg(dataloader__batch_size=4, train__batch_or_epoch="epoch", train__local_update_steps=1)
    torch.manual_seed(0)
    x = torch.randn(10, 3)
    y = torch.tensor([0, 1, 1, 0, 1, 0, 0, 0, 1, 1])
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[2.0, -1.0, 0.5], [-1.5, 0.3, 1.0]]))
    result = Trainer(model, cfg).train(x, y, torch.Generator().manual_seed(3), table=default_train_hooks(), lr=0.0)
    per_row = torch.nn.functional.cross_entropy(model(x), y, reduction="none").detach().double()
    assert result["train_total"] == 10
    assert result["train_loss"] == pytest.approx(per_row.mean().item(), rel=1e-6)
    batch_means = [per_row[:4].mean(), per_row[4:8].mean(), per_row[8:].mean()]  # for any order of rows
    assert abs(per_row.mean().item() - sum(batch_means).item() / 3) > 1e-3  # the test tells the two apart


def results(split: str, rows: list[tuple[int, int, float]]) -> list[dict]:
    """(correct, total, loss sum) per client -> the per-client results the backends return."""
    return [{f"{split}_correct": c, f"{split}_total": n, f"{split}_loss_sum": loss} for c, n, loss in rows]


# Eleven clients of unequal size (test split). Accuracies: 1/10, 2/4, 30/40, 9/12, 2/8, 50/100, 3/5, 0/20,
# 45/50, 16/16, 7/35 = .1, .5, .75, .75, .25, .5, .6, 0, .9, 1, .2
TEST = [(1, 10, 5.0), (2, 4, 2.0), (30, 40, 8.0), (9, 12, 3.0), (2, 8, 4.0), (50, 100, 40.0), (3, 5, 1.0),
        (0, 20, 30.0), (45, 50, 10.0), (16, 16, 1.6), (7, 35, 14.0)]
# Four clients (val split): accuracies 1/2, 3/6, 0/4, 16/20 = .5, .5, 0, .8
VAL = [(1, 2, 1.0), (3, 6, 3.0), (0, 4, 6.0), (16, 20, 2.0)]


def test_pool_weighted_average_and_fairness_figures_by_hand() -> None:
    m = pool({"val": results("val", VAL), "test": results("test", TEST)})
    acc = [0.1, 0.5, 0.75, 0.75, 0.25, 0.5, 0.6, 0.0, 0.9, 1.0, 0.2]
    # weighted: (1+2+30+9+2+50+3+0+45+16+7) / (10+4+40+12+8+100+5+20+50+16+35) = 165 / 300
    assert m["test_acc"] == pytest.approx(0.55, rel=1e-12)
    assert m["test_total"] == 300
    # loss: 118.6 / 300; per-client mean losses .5, .5, .2, .25, .5, .4, .2, 1.5, .2, .1, .4 -> mean 4.75 / 11
    assert m["test_loss"] == pytest.approx(118.6 / 300, rel=1e-12)
    assert m["test_loss_avg"] == pytest.approx(4.75 / 11, rel=1e-12)
    # plain mean of the accuracies: 5.55 / 11 = 0.50454..., not the weighted 0.55
    assert m["test_acc_avg"] == pytest.approx(5.55 / 11, rel=1e-12)
    mean = 5.55 / 11
    assert m["test_acc_std"] == pytest.approx(math.sqrt(sum((a - mean) ** 2 for a in acc) / 11), rel=1e-12)
    assert m["test_acc_std"] != pytest.approx(math.sqrt(sum((a - mean) ** 2 for a in acc) / 10), rel=1e-6)
    assert m["test_acc_min"] == 0.0 and m["test_acc_max"] == 1.0
    # sorted: 0, .1, .2, .25, .5, .5, .6, .75, .75, .9, 1; 11 values: the 10th percentile sits at index
    # 0.1 * 10 = 1 exactly, the 90th at index 9
    assert m["test_acc_bottom_decile"] == pytest.approx(0.1, rel=1e-12)
    assert m["test_acc_top_decile"] == pytest.approx(0.9, rel=1e-12)

    # val: weighted 20 / 32 = 0.625, plain mean 1.8 / 4 = 0.45
    assert m["val_acc"] == pytest.approx(0.625, rel=1e-12)
    assert m["val_acc_avg"] == pytest.approx(0.45, rel=1e-12)
    assert m["val_loss"] == pytest.approx(12.0 / 32, rel=1e-12)  # per-client means .5, .5, 1.5, .1
    assert m["val_loss_avg"] == pytest.approx(2.6 / 4, rel=1e-12)
    assert m["val_total"] == 32
    # sorted 0, .5, .5, .8: the 10th percentile at index 0.3 -> 0 + 0.3 * 0.5 = 0.15, the 90th at index 2.7
    # -> 0.5 + 0.7 * 0.3 = 0.71
    assert m["val_acc_bottom_decile"] == pytest.approx(0.15, rel=1e-12)
    assert m["val_acc_top_decile"] == pytest.approx(0.71, rel=1e-12)
    assert m["val_acc_std"] == pytest.approx(math.sqrt((0.05 ** 2 * 2 + 0.45 ** 2 + 0.35 ** 2) / 4), rel=1e-12)
    assert m["val_acc_min"] == 0.0 and m["val_acc_max"] == 0.8


def test_per_client_keeps_each_clients_figures_and_ids() -> None:
    rows = results("test", VAL)
    for i, r in enumerate(rows):
        r["client"] = 10 + 2 * i  # the distributed server's results carry ids
    figures = per_client({"test": rows})
    assert figures == {"client": [10, 12, 14, 16], "test_acc": [0.5, 0.5, 0.0, 0.8],
                       "test_loss": [0.5, 0.5, 1.5, 0.1], "test_total": [2, 6, 4, 20]}
    assert all(type(n) is int for n in figures["test_total"] + figures["client"])  # clients.jsonl: 2, not 2.0
    assert per_client({"test": results("test", VAL)})["client"] == [0, 1, 2, 3]
