"""Nothing silently wrong, nothing lost: damaged caches, checkpoints and run folders are noticed."""
from __future__ import annotations

import gc
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from fedplug.cli import main
from fedplug.config import dump_config
from fedplug.core.plugin import Plugin
from fedplug.errors import RunDiverged
from fedplug.run import checkpoint
from fedplug.run.simulation import run


def without_run_dir(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "run_dir"}


def test_run_on_a_damaged_synthetic_cache_equals_a_clean_run(small_cfg, tmp_path: Path, caplog) -> None:
    root = tmp_path / "cache"  # a cache of this test's own: it is damaged below
    clean = run(small_cfg(**{"data.root": str(root)}))
    [val_x] = root.glob("synthetic-*/val_x.npy")
    with open(val_x, "r+b") as f:
        f.seek(val_x.stat().st_size - 64)
        f.write(np.random.default_rng(1).bytes(64))
    with caplog.at_level(logging.WARNING, logger="fedplug"):
        again = run(small_cfg(**{"data.root": str(root)}))
    assert without_run_dir(again) == without_run_dir(clean)
    log = (Path(again["run_dir"]) / "run.log").read_text()
    assert "val_x.npy" in log and "regenerating" in log


def safetensors_load(path: Path) -> tuple[dict, dict]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def _finished_run(small_cfg, **more) -> tuple[dict, Path]:
    result = run(small_cfg(**{"checkpoint.every": 2, "federate.total_round_num": 4, **more}))
    return result, Path(result["run_dir"])


def _resume_cli(run_dir: Path, capsys) -> tuple[int, str, str]:
    """Exit status, stdout, and stderr's last line (the run's log goes to stderr before it)."""
    capsys.readouterr()
    code = main(["--resume", str(run_dir)])
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, out.out, out.err.splitlines()[-1] + "\n"


@pytest.mark.parametrize("change", ["scaled", "randomised", "round"])
def test_resume_refuses_a_changed_checkpoint(small_cfg, capsys, change: str) -> None:
    _, run_dir = _finished_run(small_cfg)
    (run_dir / "summary.json").unlink()  # as if killed after the checkpoint: resumable
    path = run_dir / checkpoint.CHECKPOINT_FILE
    tensors, meta = safetensors_load(path)
    if change == "scaled":
        tensors["global/fc.weight"] = tensors["global/fc.weight"] * 2
    elif change == "randomised":
        tensors["global/fc.weight"] = torch.randn_like(tensors["global/fc.weight"])
    else:
        fedplug_meta = json.loads(meta["fedplug"])
        meta["fedplug"] = json.dumps({**fedplug_meta, "round": 2})
    save_file(tensors, str(path), metadata=meta)  # rewritten by hand: the stored hash is the old one
    code, out, err = _resume_cli(run_dir, capsys)
    assert code == 2 and out == ""
    assert err.startswith("fedplug: error: ") and err.count("\n") == 1 and str(path) in err and "changed" in err


def test_resume_refuses_an_edited_config_yaml(small_cfg, capsys) -> None:
    _, run_dir = _finished_run(small_cfg)
    (run_dir / "summary.json").unlink()
    config = run_dir / "config.yaml"
    config.write_text(config.read_text().replace("lr: 0.1", "lr: 0.3"))
    code, out, err = _resume_cli(run_dir, capsys)
    assert code == 2 and err.count("\n") == 1 and "config.yaml was changed" in err and str(run_dir) in err


def test_resume_of_a_finished_run_says_so_and_changes_nothing(small_cfg, capsys) -> None:
    result, run_dir = _finished_run(small_cfg)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    code, out, err = _resume_cli(run_dir, capsys)
    assert code == 0 and f"{run_dir} is a finished run (4 rounds, summary.json)" in err and "nothing changed" in err
    assert json.loads(out.splitlines()[-1]) == result
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before


@pytest.mark.parametrize("rounds, every, expected", [(4, 4, 4), (5, 2, 5), (6, 0, None)])
def test_checkpoint_at_the_end_of_every_checkpointed_run(small_cfg, rounds: int, every: int, expected) -> None:
    result = run(small_cfg(**{"checkpoint.every": every, "federate.total_round_num": rounds}))
    path = Path(result["run_dir"]) / checkpoint.CHECKPOINT_FILE
    assert (checkpoint.load(path)[1]["round"] if path.exists() else None) == expected


def test_a_run_closes_its_jsonl_files(small_cfg) -> None:
    """metrics.jsonl and clients.jsonl are flushed line by line, and closed at the end: no handle left over."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        run(small_cfg(**{"federate.total_round_num": 2}))
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning) and ".jsonl" in str(w.message)]


class Blowup(Plugin):
    """From round 2 on, a global model holding infinities, while the clients' training loss stays finite."""

    name = "it_blowup"

    def transform_aggregate(self, old, aggregate, facts):
        return aggregate if facts.round_num < 2 else {n: torch.full_like(t, float("inf")) for n, t in aggregate.items()}


def test_a_global_model_gone_infinite_stops_the_run_naming_its_tensors(small_cfg, register) -> None:
    register(Blowup)
    with pytest.raises(RunDiverged, match=r"^the run diverged in round 2: the global model's fc.bias, fc.weight hold NaN or "
                                          r"infinite values; lower train.optimizer.lr"):
        run(small_cfg(**{"it_blowup.use": True, "federate.total_round_num": 4}))


def test_a_diverged_run_stops_naming_the_round_and_keeps_what_was_measured(small_cfg, tmp_path: Path, capsys) -> None:
    cfg_file = tmp_path / "diverging.yaml"
    cfg_file.write_text(dump_config(small_cfg(**{"train.optimizer.lr": 1e37, "federate.total_round_num": 6,
                                                 "checkpoint.every": 1})))
    capsys.readouterr()
    code = main(["--cfg", str(cfg_file)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith("fedplug: error: the run diverged in round ") and "train.optimizer.lr" in last
    [run_dir] = (tmp_path / "runs").iterdir()
    diverged_round = int(last.split("round ")[1].split(":")[0])
    assert diverged_round < 6
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["round"] == diverged_round  # the diverged round was evaluated and written
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds_run"] == diverged_round and summary["diverged"] in last
    assert (run_dir / "learning_curve.png").is_file()
    path = run_dir / checkpoint.CHECKPOINT_FILE  # never the diverged model's
    assert checkpoint.load(path)[1]["round"] == diverged_round - 1 if diverged_round > 1 else not path.exists()
