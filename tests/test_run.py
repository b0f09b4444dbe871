"""End to end on the small federation: determinism, outputs, protocol, and the plain-loop twin."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import torch

from fedplug.backends.sequential import SequentialBackend
from fedplug.config import load_config
from fedplug.data import build_data
from fedplug.models import build_model
from fedplug.run.early_stop import EarlyStopper
from fedplug.run.plan import build_plan
from fedplug.run.simulation import run

ROOT = Path(__file__).resolve().parents[1]


def records(result: dict) -> list[dict]:
    return [json.loads(line) for line in (Path(result["run_dir"]) / "metrics.jsonl").read_text().splitlines()]


def without_run_dir(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "run_dir"}


def test_same_seed_same_result_bit_for_bit(small_cfg) -> None:
    first, second = run(small_cfg()), run(small_cfg())
    assert first["run_dir"] != second["run_dir"]
    assert without_run_dir(first) == without_run_dir(second)
    assert records(first) == records(second)
    assert without_run_dir(run(small_cfg(seed=1))) != without_run_dir(first)


def test_run_folder_contents(small_cfg) -> None:
    cfg = small_cfg()
    result = run(cfg)
    run_dir = Path(result["run_dir"])
    assert load_config(run_dir / "config.yaml") == cfg
    lines = records(result)
    assert [r["round"] for r in lines] == [2, 4, 6]
    for key in ("val_loss", "test_acc", "test_acc_avg", "test_acc_std", "test_acc_bottom_decile", "train_loss"):
        assert key in lines[0]
    assert lines[-1]["val_loss"] < lines[0]["val_loss"]  # it learns
    assert lines[0]["test_total"] == 12 * 200  # every client evaluates, sampled or not
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["best_round"] == result["best_round"]
    assert (run_dir / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "best round" in (run_dir / "run.log").read_text()


def test_reported_figure_is_test_acc_at_lowest_val_loss_and_early_stop_follows_patience(small_cfg) -> None:
    result = run(small_cfg(federate__total_round_num=40, eval__freq=1, early_stop__patience=2,
                           train__optimizer__lr=2.0))
    lines = records(result)
    best = min(lines, key=lambda r: r["val_loss"])
    assert (result["best_round"], result["test_acc"], result["val_loss"]) == (best["round"], best["test_acc"],
                                                                             best["val_loss"])
    replay = EarlyStopper(patience=2)
    stops = [replay.update(r["round"], r["val_loss"], r) for r in lines]
    assert stops[-1] and not any(stops[:-1])  # stopped exactly when the rule says, not before
    assert result["rounds_run"] == lines[-1]["round"] < 40 and result["early_stopped"]


def test_client_randomness_does_not_depend_on_other_clients(small_cfg) -> None:
    cfg = small_cfg()
    data, plan = build_data(cfg), build_plan(cfg)
    backend = SequentialBackend(cfg, build_model(cfg, data.input_shape), plan, data)
    start = {k: v.clone() for k, v in backend.shared_parameters().items()}

    def update(client: int, round_num: int = 3) -> dict:
        return {k: v.clone() for k, v in backend.train_client(client, round_num, start)["params"].items()}

    alone = update(5)
    update(1), update(2)  # other clients ran first
    after_others = update(5)
    assert all(torch.equal(alone[k], after_others[k]) for k in alone)
    assert not torch.equal(update(5, round_num=4)["fc.weight"], alone["fc.weight"])


def _plain_module():
    spec = importlib.util.spec_from_file_location("plain", ROOT / "benchmarks" / "plain_fedavg_synthetic.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fedplug_equals_the_plain_pytorch_loop(small_cfg) -> None:
    """The benchmark's plain script does the same arithmetic: the numbers agree exactly."""
    cfg = small_cfg(federate__total_round_num=12, early_stop__patience=2, eval__batch_size=5000)
    ours = run(cfg)
    plain = _plain_module().run_plain(num_clients=12, val_size=200, test_size=200, rounds=12, per_round=6, steps=5,
                                      batch_size=16, lr=0.1, eval_freq=2, patience=2)
    assert without_run_dir(ours) | plain == without_run_dir(ours)  # every plain figure equals ours


def test_cli_prints_one_json_line_last(tmp_path: Path, data_root: Path) -> None:
    args = ["data.synthetic.num_clients", "6", "data.synthetic.val_size", "50", "data.synthetic.test_size", "50",
            "federate.total_round_num", "2", "eval.freq", "1", f"data.root={data_root}", f"outdir={tmp_path}"]
    proc = subprocess.run([sys.executable, "-m", "fedplug", "--cfg", "configs/fedavg_lr_on_synthetic.yaml", *args],
                          capture_output=True, text=True, cwd=ROOT, check=True)
    final = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"best_round", "test_acc", "val_loss", "rounds_run", "run_dir"} <= final.keys()
    assert final["rounds_run"] == 2 and 0 < final["test_acc"] <= 1
    assert Path(final["run_dir"]).parent == tmp_path


def test_threads_key_sets_and_restores_torch_threads(small_cfg, monkeypatch) -> None:
    seen: list[int] = []
    original = SequentialBackend.train_client

    def recording(self, *args, **kwargs):
        seen.append(torch.get_num_threads())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SequentialBackend, "train_client", recording)
    before = torch.get_num_threads()
    single = run(small_cfg(threads=1))
    assert set(seen) == {1} and torch.get_num_threads() == before
    assert without_run_dir(single) == without_run_dir(run(small_cfg()))  # same numbers either way here
