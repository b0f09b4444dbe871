"""The distributed server skips a round with fewer than `federate.min_received_num` results.

A unit test of the server's round loop (fedplug/distributed/server.py, Coordinator._rounds) without
gRPC or client processes: the exchange with the clients is replaced by a stand-in that answers with
hand-made uploads (every tensor of client c is the constant c + 1, with 10 * (c + 1) samples), so the
global model after each round is known by hand:

- round 1, all 4 clients answer: weighted mean sum (c+1)^2 / sum (c+1) = 30 / 10 = 3;
- round 2, only clients 0 and 1 answer, 2 < min_received_num 3: skipped, with a warning; the global
  model stays 3 (had it been folded in: 5 / 3);
- round 3, exactly 3 answer (clients 0, 1, 2): not skipped, (1 + 4 + 9) / (1 + 2 + 3) = 14 / 6.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from fedplug.core.messages import Upload
from fedplug.data import build_data
from fedplug.distributed.protocol import Kind
from fedplug.distributed.server import Coordinator

ANSWERING = {1: [0, 1, 2, 3], 2: [0, 1], 3: [0, 1, 2]}  # who answers TRAIN in each round


class StandInCoordinator(Coordinator):
    """The server's rounds with the clients' answers made up here."""

    def __init__(self, cfg, input_shape) -> None:
        super().__init__(cfg, None, False)
        self.num_clients, self.data_shape = 4, (input_shape, 2)
        self.evaluated: dict[int, dict[str, torch.Tensor]] = {}  # round -> the global model evaluated

    def wait_for_clients(self) -> None:
        pass

    def _exchange(self, kind, round_num, clients, tensors, check, consume=None):
        if kind == Kind.Value("TRAIN"):
            results = {}
            for c in ANSWERING[round_num]:
                assert c in clients
                params = {n: torch.full_like(t, float(c + 1)) for n, t in tensors.items()}
                results[c] = Upload(c, params, {"train_total": 10 * (c + 1), "train_steps": 1, "train_loss": 0.5})
                consume(c, results[c])
            return results
        assert kind == Kind.Value("EVALUATE")
        self.evaluated[round_num] = {n: t.clone() for n, t in tensors.items()}
        return {c: {split: {f"{split}_total": 10, f"{split}_correct": 5, f"{split}_loss_sum": 7.0}
                        for split in ("val", "test")} for c in clients}


def test_a_round_with_too_few_results_is_skipped_and_leaves_the_global_model(small_cfg) -> None:
    cfg = small_cfg(**{"data.synthetic.num_clients": 4, "federate.sample_client_rate": 1.0,
                       "federate.mode": "distributed", "distribute.token": "t", "federate.min_received_num": 3,
                       "federate.total_round_num": 3, "eval.freq": 1, "checkpoint.every": 0})
    server = StandInCoordinator(cfg, build_data(cfg).input_shape)
    result = server._rounds()
    assert result["rounds_run"] == 3
    values = {r: {float(v) for t in g.values() for v in t.flatten()} for r, g in server.evaluated.items()}
    assert values[1] == {3.0}
    assert values[2] == {3.0}  # unchanged: round 2 was skipped
    assert len(values[3]) == 1 and math.isclose(values[3].pop(), 14 / 6, rel_tol=1e-6)

    log = (Path(result["run_dir"]) / "run.log").read_text()
    assert "round 2: 2 result(s), fewer than federate.min_received_num 3; round skipped" in log
    assert log.count("round skipped") == 1  # round 3, with exactly 3 results, is not
    records = [json.loads(line) for line in (Path(result["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2, 3]
    assert records[0]["train_loss"] == 0.5 and records[2]["train_loss"] == 0.5
    assert math.isnan(records[1]["train_loss"])  # nothing of the skipped round counts
