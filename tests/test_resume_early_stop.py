"""Resuming a run whose early stopping is under way: the stopper's state is part of the checkpoint.

Every other resume test uses patience 0, where the stopper's counter never matters. Here the
evaluations after the checkpoint decide when the run stops, so a resumed run that forgot the count
of evaluations without improvement (or the best value it compares against) would stop later, at
another round, with another result.

How the stop is made certain: `early_stop.delta` is far above any val loss, so only the first
evaluation (compared with +inf) counts as an improvement; with eval.freq 1 and patience 3 the count
is 1 after round 2 (the checkpoint), and reaches 3 at round 4, where the run must stop.
"""
from __future__ import annotations

import json
from pathlib import Path

from fedplug.run import checkpoint
from fedplug.run.simulation import run

STOPPING = {"early_stop.patience": 3, "early_stop.delta": 1000.0, "eval.freq": 1, "federate.total_round_num": 8}


def lines(result: dict) -> list[dict]:
    return [json.loads(line) for line in (Path(result["run_dir"]) / "metrics.jsonl").read_text().splitlines()]


def test_resumed_run_stops_at_the_same_round_with_the_same_result(small_cfg, rewind) -> None:
    uninterrupted = run(small_cfg(**STOPPING, **{"checkpoint.every": 0}))
    assert uninterrupted["early_stopped"] and uninterrupted["rounds_run"] == 4
    assert uninterrupted["best_round"] == 4  # no fall beats delta, but the loss falls: the best is the lowest
    expected = lines(uninterrupted)
    assert [r["round"] for r in expected] == [1, 2, 3, 4]

    cfg = small_cfg(**STOPPING, **{"checkpoint.every": 2})
    first = run(cfg)  # the same run, with checkpoints at round 2 and at its stop, round 4
    run_dir = Path(first["run_dir"])
    rewind(run_dir, 2)  # as if killed after round 2's checkpoint
    _, meta = checkpoint.load(run_dir / checkpoint.CHECKPOINT_FILE)
    assert meta["round"] == 2
    assert meta["early_stop"]["evals_without_improvement"] == 1 and meta["early_stop"]["best_round"] == 2

    resumed = run(cfg, run_dir, resume=True)  # continues from round 2
    assert resumed["early_stopped"] and resumed["rounds_run"] == 4
    keys = ("best_round", "test_acc", "val_acc", "val_loss", "test_loss", "test_acc_avg", "rounds_run", "early_stopped")
    assert {k: resumed[k] for k in keys} == {k: uninterrupted[k] for k in keys}
    assert lines(resumed) == expected


def test_resumed_best_round_is_compared_with_the_best_before_the_checkpoint(small_cfg, rewind) -> None:
    """Patience 0 but the best round: a resumed stopper that forgot the best value would make the first
    evaluation after the checkpoint the best one, whatever its loss."""
    cfg = small_cfg(**{"eval.freq": 1, "federate.total_round_num": 4, "checkpoint.every": 2,
                       "train.optimizer.lr": 1.0})  # a large step: the val loss rises after round 2
    first = run(cfg)
    losses = [r["val_loss"] for r in lines(first)]
    assert losses[1] < min(losses[0], losses[2], losses[3])  # the best is round 2, before the checkpoint
    assert first["best_round"] == 2
    rewind(Path(first["run_dir"]), 2)  # as if killed after round 2's checkpoint
    resumed = run(cfg, Path(first["run_dir"]), resume=True)
    assert resumed == first
