"""The plots of a run folder and the per-client results behind them (clients.jsonl).

The figures are checked as matplotlib objects (learning_curve_figure, client_accuracy_figure): the
lines drawn, the notes written, the bars' heights.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest

from fedplug.run.outputs import client_accuracy_figure, learning_curve_figure
from fedplug.run.rounds import read_client_records
from fedplug.run.simulation import run

PNG = b"\x89PNG\r\n\x1a\n"


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def record(round_num: int, **values: float) -> dict:
    base = {"round": round_num, "train_loss": 0.5, "val_acc": 0.6, "test_acc": 0.6, "val_loss": 0.7,
            "test_loss": 0.7}
    return {**base, **values}


def labels(ax) -> list[str]:
    return [line.get_label() for line in ax.get_lines()]


def test_learning_curve_has_train_loss_and_whole_round_ticks() -> None:
    records = [record(1, train_loss=0.9), record(2, train_loss=0.8), record(3, train_loss=0.7)]
    fig = learning_curve_figure(records, "t", best_round=3)
    ax_acc, ax_loss = fig.axes
    assert "train (sampled clients)" in labels(ax_loss) and "train (sampled clients)" not in labels(ax_acc)
    (train,) = [line for line in ax_loss.get_lines() if line.get_label().startswith("train")]
    assert list(train.get_ydata()) == [0.9, 0.8, 0.7]
    for ax in (ax_acc, ax_loss):
        ticks = ax.get_xticks()
        assert len(ticks) >= 2 and all(t == int(t) for t in ticks)  # no round 1.5
        assert ax.get_title() == ""  # nothing to warn about
        assert "best round 3" in labels(ax)


def test_a_nan_curve_gets_a_visible_note() -> None:
    nan = float("nan")
    records = [record(1), record(2, val_loss=nan, train_loss=nan), record(3, val_loss=nan, train_loss=nan)]
    ax_acc, ax_loss = learning_curve_figure(records, "t", best_round=1).axes
    note = ax_loss.get_title()
    assert note.startswith("train, val: NaN from round 2") and "diverged?" in note
    assert "test" not in note and ax_loss.title.get_color() == "tab:red"
    crosses = [line for line in ax_loss.get_lines() if line.get_marker() == "x"]
    assert sorted(x for line in crosses for x in line.get_xdata()) == [2, 2, 3, 3]  # the undrawn points, marked
    assert ax_acc.get_title() == ""
    # A curve that is all NaN or infinite (diverged at once) draws nothing, but the note says so.
    ax_acc, ax_loss = learning_curve_figure([record(1, test_acc=nan, test_loss=float("inf"))], "t", None).axes
    assert ax_acc.get_title().startswith("test: NaN at round 1")
    assert ax_loss.get_title().startswith("test: infinite at round 1")
    assert ax_acc.get_xlim()[0] < 1 < ax_acc.get_xlim()[1]  # the round is still on the axis


def test_client_accuracy_histogram_counts_every_client() -> None:
    acc = [0.0, 0.05, 0.42, 0.43, 0.5, 0.99, 1.0, 1.0, 0.73]
    fig = client_accuracy_figure({"round": 7, "test_acc": acc}, "t", record={"test_acc": 0.61})
    (ax,) = fig.axes
    heights = [patch.get_height() for patch in ax.patches]
    assert len(heights) == 20 and sum(heights) == len(acc)
    assert heights[-1] == 3  # 95-100 %, 100 % included
    assert heights[8] == 2  # 40-45 %
    assert "best round 7: 9 clients" in ax.get_title()
    assert any(label.startswith("weighted 61.00%") for label in labels(ax))


def test_run_writes_clients_jsonl_and_client_accuracy_png(small_cfg) -> None:
    result = run(small_cfg())
    run_dir = Path(result["run_dir"])
    metrics, clients = jsonl(run_dir / "metrics.jsonl"), jsonl(run_dir / "clients.jsonl")
    assert [c["round"] for c in clients] == [m["round"] for m in metrics] == [2, 4, 6]
    for line, rec in zip(clients, metrics):
        assert line["client"] == list(range(12)) and len(line["test_acc"]) == 12
        assert sum(line["test_total"]) == rec["test_total"]
        weighted = sum(a * n for a, n in zip(line["test_acc"], line["test_total"])) / sum(line["test_total"])
        assert weighted == pytest.approx(rec["test_acc"], rel=1e-12)
        assert float(np.mean(line["test_acc"])) == pytest.approx(rec["test_acc_avg"], rel=1e-12)
        assert min(line["test_acc"]) == rec["test_acc_min"] and max(line["test_acc"]) == rec["test_acc_max"]
        assert all(math.isfinite(x) for x in line["test_loss"])
    assert not any(isinstance(v, list) for m in metrics for v in m.values())  # metrics.jsonl stays one line of figures
    for name in ("learning_curve.png", "client_accuracy.png"):
        assert (run_dir / name).read_bytes()[:8] == PNG


def test_resume_cuts_clients_jsonl_back_to_the_checkpoint(small_cfg, rewind, caplog, monkeypatch) -> None:
    """A killed run wrote evaluations after its checkpoint, the last one torn: resumed, clients.jsonl
    is the uninterrupted run's."""
    cfg = small_cfg(**{"checkpoint.every": 2, "eval.freq": 1})
    first = run(cfg)
    run_dir = Path(first["run_dir"])
    uninterrupted = (run_dir / "clients.jsonl").read_text()
    lines = uninterrupted.splitlines(keepends=True)
    assert len(lines) == 6
    # As if killed in round 6's write: rounds 5 and a torn 6 after the checkpoint of round 4.
    (run_dir / "clients.jsonl").write_text("".join(lines[:5]) + lines[5][: len(lines[5]) // 2])
    (run_dir / "client_accuracy.png").unlink()
    rewind(run_dir, 4)
    again = run(cfg, run_dir, resume=True)
    assert again == first
    assert (run_dir / "clients.jsonl").read_text() == uninterrupted
    assert (run_dir / "client_accuracy.png").read_bytes()[:8] == PNG
    assert "lacks the per-client results" not in (run_dir / "run.log").read_text()  # rounds 1-4 were all there
    monkeypatch.setattr(logging.getLogger("fedplug"), "handlers", [caplog.handler])  # a run's own do not propagate
    assert [r["round"] for r in read_client_records(run_dir, [2, 7, 9])] == [2]
    assert "lacks the per-client results of round(s) [7, 9]" in caplog.text
