"""Checkpoints: a run killed with SIGKILL and resumed ends exactly like the uninterrupted run.

The kill is placed with a failpoint (fedplug/run/failpoint.py): the process freezes at a named
place and prints a line; the test then sends SIGKILL. No timing is involved.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from fedplug.config import dump_config
from fedplug.errors import UserError
from fedplug.run import checkpoint
from fedplug.run.simulation import run

ALL_STATE = {"fedprox.use": True, "fedprox.mu": 0.1, "ditto.use": True, "fedopt.use": True,
             "fedopt.optimizer.type": "Adam", "fedopt.optimizer.lr": 0.05}  # per-client and server state


def fedplug_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedplug", *args]


def run_until_failpoint(cmd: list[str], point: str, cwd: Path) -> None:
    """Start `cmd` with the failpoint armed, wait until it freezes there, then SIGKILL it."""
    env = {**os.environ, "FEDPLUG_FAILPOINT": point, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:
            if f"failpoint {point} reached" in line:
                break
        else:
            pytest.fail(f"the run ended without reaching {point}: exit {proc.wait()}")
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def without_run_dir(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "run_dir"}


def test_killed_mid_checkpoint_write_and_resumed_equals_uninterrupted(small_cfg, tmp_path: Path) -> None:
    """Killed while writing round 4's checkpoint: round 2's is intact, and resuming from it ends exactly
    like the uninterrupted run (with per-client state, Ditto's, and server state, FedOpt's Adam moments).
    A kill in the middle of a round is covered by tests/test_distributed.py (server and clients)."""
    point, extra = "checkpoint_write@4", ALL_STATE
    cfg = small_cfg(**{"federate.total_round_num": 8, "eval.freq": 1, "checkpoint.every": 2, "threads": 1,
                       "outdir": str(tmp_path / "killed"), **extra})
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(dump_config(cfg))
    expected = run(small_cfg(**{"federate.total_round_num": 8, "eval.freq": 1, "checkpoint.every": 0, "threads": 1,
                                **extra}))

    run_until_failpoint(fedplug_cmd("--cfg", str(cfg_file)), point, tmp_path)
    (run_dir,) = (tmp_path / "killed").iterdir()
    _, meta = checkpoint.load(run_dir / checkpoint.CHECKPOINT_FILE)
    assert meta["round"] == 2  # the previous checkpoint, intact
    assert [p.name for p in run_dir.glob(".checkpoint*.tmp")]  # the torn write, never renamed into place
    done = subprocess.run(fedplug_cmd("--resume", str(run_dir)), cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    resumed = last_json(done.stdout)
    assert resumed["run_dir"] == str(run_dir)
    assert without_run_dir(resumed) == without_run_dir(expected)
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in lines] == list(range(1, 9))  # cut back to the checkpoint, then continued
    assert lines == [json.loads(line) for line in (Path(expected["run_dir"]) / "metrics.jsonl").read_text().splitlines()]


class Frozen(Exception):
    """Raised where a failpoint would block: the in-process stand-in for the SIGKILL."""


def test_a_run_stopped_at_round_end_resumes_from_the_checkpoint_before_it(small_cfg, monkeypatch, capsys) -> None:
    """The round_end failpoint (after a round's clients trained, before aggregation) in this process: the run
    stops in round 3 with rounds 1-2 on record and round 2 checkpointed, and resumed it ends like the whole run."""
    from fedplug.run import failpoint as failpoint_module

    def frozen(seconds: float) -> None:
        raise Frozen

    cfg = small_cfg(**{"federate.total_round_num": 4, "eval.freq": 1, "checkpoint.every": 2, **ALL_STATE})
    expected = run(cfg)
    monkeypatch.setattr(failpoint_module, "_ARMED", frozenset({"round_end@3"}))
    monkeypatch.setattr(failpoint_module, "time", SimpleNamespace(sleep=frozen))
    with pytest.raises(Frozen):
        run(cfg)
    assert "fedplug failpoint round_end@3 reached" in capsys.readouterr().err
    (run_dir,) = [p for p in Path(cfg.outdir).iterdir() if str(p) != expected["run_dir"]]
    assert [json.loads(line)["round"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert checkpoint.load(run_dir / checkpoint.CHECKPOINT_FILE)[1]["round"] == 2
    monkeypatch.setattr(failpoint_module, "_ARMED", frozenset())
    assert without_run_dir(run(cfg, run_dir, resume=True)) == without_run_dir(expected)


def test_resume_refuses_another_config(small_cfg, tmp_path: Path) -> None:
    cfg = small_cfg(**{"checkpoint.every": 2, "federate.total_round_num": 4})
    result = run(cfg)
    (Path(result["run_dir"]) / "summary.json").unlink()  # as if killed after its last checkpoint
    other = small_cfg(**{"checkpoint.every": 2, "federate.total_round_num": 4, "train.optimizer.lr": 0.2})
    with pytest.raises(UserError, match=f"cannot resume {re.escape(result['run_dir'])}: .*train.optimizer.lr"):
        run(other, Path(result["run_dir"]), resume=True)


def test_resume_refuses_a_checkpoint_that_lacks_a_parameter(small_cfg) -> None:
    """A whole, well-formed checkpoint (written by another version of a model, say) without one of the model's
    parameters: refused naming it, never resumed with that parameter's fresh initial value."""
    cfg = small_cfg(**{"checkpoint.every": 2, "federate.total_round_num": 4})
    run_dir = Path(run(cfg)["run_dir"])
    (run_dir / "summary.json").unlink()
    path = run_dir / checkpoint.CHECKPOINT_FILE
    tensors, meta = checkpoint.load(path)
    del tensors["global/fc.bias"]
    checkpoint.save(path, tensors, meta)
    with pytest.raises(UserError, match=r"lacks parameters \['fc.bias'\]"):
        run(cfg, run_dir, resume=True)


def test_resume_puts_back_the_process_wide_generators(small_cfg, rewind, monkeypatch) -> None:
    """fedplug's own draws need no saved state, but a user's plug-in may draw from PyTorch's or NumPy's global
    generator: resumed from round 2's checkpoint, both are as they were when it was written."""
    import numpy as np
    import torch

    from fedplug.run.rounds import RoundKeeper

    written, restored = {}, {}
    save, restore = RoundKeeper.save, RoundKeeper._restore

    def save_and_note(keeper: RoundKeeper, round_num: int) -> None:
        written[round_num] = torch.get_rng_state(), np.random.get_state()[1].copy()
        save(keeper, round_num)

    def restore_and_note(keeper: RoundKeeper) -> None:
        restore(keeper)
        restored["state"] = torch.get_rng_state(), np.random.get_state()[1].copy()

    monkeypatch.setattr(RoundKeeper, "save", save_and_note)
    monkeypatch.setattr(RoundKeeper, "_restore", restore_and_note)
    cfg = small_cfg(**{"checkpoint.every": 2, "federate.total_round_num": 4})
    run_dir = Path(run(cfg)["run_dir"])
    rewind(run_dir, 2)
    torch.manual_seed(987)  # both moved on since: the resume must put them back
    np.random.seed(987)
    assert not torch.equal(torch.get_rng_state(), written[2][0])
    run(cfg, run_dir, resume=True)
    assert torch.equal(restored["state"][0], written[2][0]) and np.array_equal(restored["state"][1], written[2][1])


def test_checkpoint_file_round_trips_and_has_no_pickle(tmp_path: Path) -> None:
    import torch

    path = tmp_path / checkpoint.CHECKPOINT_FILE
    tree = {"global": {"linear.weight": torch.arange(6.0).view(2, 3)}, "clients": {"3": {"kept": {"b": torch.ones(2)}}}}
    checkpoint.save(path, checkpoint.flatten(tree), {"round": 7, "records": [{"x": float("inf")}]})
    tensors, meta = checkpoint.load(path)
    assert meta["round"] == 7 and meta["records"] == [{"x": float("inf")}]
    assert torch.equal(checkpoint.unflatten(tensors, "clients/")["3"]["kept"]["b"], torch.ones(2))
    assert b"\x80\x04" not in path.read_bytes()[:16]  # a safetensors header, not a pickle stream
    assert [p.name for p in tmp_path.iterdir()] == [checkpoint.CHECKPOINT_FILE]  # no temporary left over
    path.write_bytes(b"garbage")
    with pytest.raises(UserError, match="cannot read the checkpoint"):
        checkpoint.load(path)


@pytest.mark.parametrize("backend", ["sequential", "vectorized"])
def test_resuming_from_the_last_checkpoint_repeats_the_end_exactly(small_cfg, backend: str, rewind) -> None:
    """In-process and cheap: the checkpoint of round 4 of 6, resumed, gives the same last rounds."""
    cfg = small_cfg(**{"checkpoint.every": 2, "eval.freq": 1, "federate.backend": backend, **ALL_STATE})
    first = run(cfg)
    run_dir = Path(first["run_dir"])
    before = (run_dir / "metrics.jsonl").read_text()
    assert checkpoint.load(run_dir / checkpoint.CHECKPOINT_FILE)[1]["round"] == 6  # the end is checkpointed too
    rewind(run_dir, 4)
    again = run(cfg, run_dir, resume=True)
    assert again == first and (run_dir / "metrics.jsonl").read_text() == before
