"""Which rounds are evaluated, which clients train in each round, and with what aggregation weight.

The reference band test (tests/test_reference.py) cannot tell these apart from wrong ones: the
published accuracy band was still met with every aggregation weight 1 and with the same clients in
every round. These run the small federation for a few rounds and check the facts of every round:

- evaluated rounds: every `eval.freq` rounds and after the last (5 rounds, freq 2: 2, 4, 5);
- sampled clients: the seeded draw, worked out here from NumPy's SeedSequence and torch.randperm
  (not through fedplug.seeding), pinned, and different from round to round;
- aggregation weights: the samples each client processed; with one epoch per round these are the
  clients' train sizes, which are unequal in this federation (read from the data, not from fedplug's
  aggregation), and the new global model is the mean of the uploads weighted by them.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from fedplug.data import build_data
from fedplug.run import rounds as rounds_module
from fedplug.run.simulation import run

# seed 0, 12 clients, 6 a round. Round r's draw: s = SeedSequence([0, 1, r]).generate_state(1, uint64)[0] >> 1
# (stream 1 = client sampling), then sorted(torch.randperm(12, generator=manual_seed(s))[:6]).
PINNED_SAMPLES = {1: [1, 2, 3, 4, 7, 9], 2: [2, 7, 8, 9, 10, 11], 3: [0, 5, 6, 7, 10, 11], 4: [0, 2, 3, 5, 7, 9]}


def seeded_draw(seed: int, round_num: int, num_clients: int, k: int) -> list[int]:
    state = np.random.SeedSequence([seed, 1, round_num]).generate_state(1, dtype=np.uint64)[0]
    gen = torch.Generator().manual_seed(int(state >> np.uint64(1)))
    return sorted(torch.randperm(num_clients, generator=gen)[:k].tolist())


def metrics(result: dict, name: str = "metrics.jsonl") -> list[dict]:
    return [json.loads(line) for line in (Path(result["run_dir"]) / name).read_text().splitlines()]


def test_evaluated_rounds_are_every_freq_and_the_last(small_cfg) -> None:
    result = run(small_cfg(**{"federate.total_round_num": 5, "eval.freq": 2}))
    assert [r["round"] for r in metrics(result)] == [2, 4, 5]
    assert [r["round"] for r in metrics(result, "clients.jsonl")] == [2, 4, 5]
    assert result["rounds_run"] == 5 and result["best_round"] in (2, 4, 5)


def test_evaluated_rounds_when_the_last_is_a_multiple_of_freq(small_cfg) -> None:
    result = run(small_cfg(**{"federate.total_round_num": 6, "eval.freq": 3}))
    assert [r["round"] for r in metrics(result)] == [3, 6]  # round 6 once, not twice


def record_rounds(monkeypatch) -> list[dict]:
    """Each round's facts as the server saw them: sampled, received, weights, uploads, the new global model."""
    seen: list[dict] = []
    end_round = rounds_module.RoundKeeper.end_round

    def spy(self, round_num, aggregation, evaluate):
        facts = aggregation.facts
        uploads = {c: {k: v.clone() for k, v in u.items()} for c, u in getattr(aggregation, "spied", {}).items()}
        stop = end_round(self, round_num, aggregation, evaluate)
        seen.append({"round": round_num, "sampled": list(facts.sampled), "received": list(facts.received),
                     "weights": dict(facts.weights), "uploads": uploads,
                     "global": {k: v.clone() for k, v in self.global_params.items()}})
        return stop

    add = rounds_module.RoundAggregation.add

    def add_spy(self, upload):
        if not hasattr(self, "spied"):
            self.spied = {}
        self.spied[upload.client] = {k: v.detach().clone() for k, v in upload.params.items()}
        add(self, upload)

    monkeypatch.setattr(rounds_module.RoundKeeper, "end_round", spy)
    monkeypatch.setattr(rounds_module.RoundAggregation, "add", add_spy)
    return seen


def test_sampled_clients_are_the_seeded_draw_and_change_every_round(small_cfg, monkeypatch) -> None:
    seen = record_rounds(monkeypatch)
    run(small_cfg(**{"federate.total_round_num": 4}))
    sampled = {r["round"]: r["sampled"] for r in seen}
    assert sampled == PINNED_SAMPLES
    assert all(seeded_draw(0, r, 12, 6) == clients for r, clients in sampled.items())
    assert len({tuple(c) for c in sampled.values()}) == 4  # four different cohorts
    assert all(r["received"] == r["sampled"] for r in seen)
    # another seed, other draws
    seen.clear()
    run(small_cfg(**{"federate.total_round_num": 2, "seed": 7}))
    assert [r["sampled"] for r in seen] == [seeded_draw(7, 1, 12, 6), seeded_draw(7, 2, 12, 6)]
    assert seen[0]["sampled"] != PINNED_SAMPLES[1]


def test_aggregation_weights_are_the_samples_each_client_processed(small_cfg, monkeypatch) -> None:
    seen = record_rounds(monkeypatch)
    cfg = small_cfg(**{"federate.total_round_num": 2, "train.batch_or_epoch": "epoch", "train.local_update_steps": 1})
    sizes = build_data(cfg).splits["train"].sizes()
    assert len(set(sizes)) == len(sizes)  # unequal: weights 1 would give another mean
    run(cfg)
    for r in seen:
        assert r["weights"] == {c: float(sizes[c]) for c in r["sampled"]}
        total = sum(sizes[c] for c in r["sampled"])
        for name, new in r["global"].items():
            expected = sum(sizes[c] * r["uploads"][c][name].double() for c in r["sampled"]) / total
            plain = sum(r["uploads"][c][name].double() for c in r["sampled"]) / len(r["sampled"])
            torch.testing.assert_close(new.double(), expected, rtol=1e-5, atol=1e-6)
            assert not torch.allclose(new.double(), plain, rtol=1e-5, atol=1e-6)
