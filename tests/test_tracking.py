"""Experiment tracking (fedplug/run/tracking.py), read back with each tool's own reader.

TensorBoard: tensorboard's EventAccumulator; MLflow: MlflowClient on a sqlite store. What they hold
must be what the run folder holds: metrics.jsonl's figures (TensorBoard keeps scalars as float32),
clients.jsonl's per-client accuracies, the config, the plots and summary.json.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from fedplug import cli
from fedplug.config import load_config
from fedplug.run import tracking
from fedplug.run.simulation import run
from fedplug_procs import PATIENT_WORDS, ROOT, Proc, fedplug_cmd, free_port, without_run_dir

needs_tensorboard = pytest.mark.skipif(not tracking._installed("tensorboard"),
                                       reason="pip install 'fedplug[tensorboard]'")
needs_mlflow = pytest.mark.skipif(not tracking._installed("mlflow"), reason="pip install 'fedplug[mlflow]'")

GROUPS = {"train_loss": "weighted", "val_acc": "weighted", "test_loss": "weighted", "test_acc_avg": "average",
          "val_loss_avg": "average", "test_acc_std": "fairness", "test_acc_bottom_decile": "fairness",
          "test_acc_max": "fairness", "val_total": "samples"}
CONFIG = ROOT / "configs" / "distributed_lr_on_synthetic.yaml"


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def tensorboard_events(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    return acc


def assert_tensorboard_equals_run_folder(run_dir: Path) -> None:
    """Every figure of every evaluation, once, as float32; one histogram of every client per evaluation."""
    records, clients = jsonl(run_dir / "metrics.jsonl"), jsonl(run_dir / "clients.jsonl")
    events = tensorboard_events(run_dir)
    figures = [k for k in records[0] if k != "round"]
    tags = {f"{tracking.metric_group(k)}/{k}" for k in figures}
    assert set(events.Tags()["scalars"]) == tags
    for key in figures:
        got = [(e.step, e.value) for e in events.Scalars(f"{tracking.metric_group(key)}/{key}")]
        assert got == [(r["round"], float(np.float32(r[key]))) for r in records], key
    histograms = events.Histograms(tracking.HISTOGRAM_TAG)
    assert [h.step for h in histograms] == [c["round"] for c in clients] == [r["round"] for r in records]
    for h, line in zip(histograms, clients):
        value = h.histogram_value
        assert value.num == len(line["client"]) and sum(value.bucket) == len(line["client"])
        assert value.min == min(line["test_acc"]) and value.max == max(line["test_acc"])
        assert value.sum == pytest.approx(sum(line["test_acc"]), rel=1e-12)


def test_metric_groups() -> None:
    for key, group in GROUPS.items():
        assert tracking.metric_group(key) == group, key


@needs_tensorboard
def test_tensorboard_holds_every_metric_and_the_client_histogram(small_cfg) -> None:
    result = run(small_cfg(**{"tracking.tensorboard": True}))
    run_dir = Path(result["run_dir"])
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert_tensorboard_equals_run_folder(run_dir)
    assert len(jsonl(run_dir / "clients.jsonl")[0]["client"]) == 12
    config = tensorboard_events(run_dir).Tensors("config/text_summary")[0]
    assert b"tensorboard: true" in config.tensor_proto.string_val[0]


@needs_tensorboard
def test_tensorboard_of_a_resumed_run_is_one_history_in_the_same_folder(small_cfg, rewind) -> None:
    """Run without TensorBoard; resume from round 4 with it on (the history so far is written first);
    resume from round 4 again (what the first resume wrote after round 4 is purged): each round once."""
    cfg = small_cfg(**{"checkpoint.every": 2, "eval.freq": 1})
    first = run(cfg)
    run_dir = Path(first["run_dir"])
    assert not (run_dir / "tensorboard").exists()
    on = small_cfg(**{"checkpoint.every": 2, "eval.freq": 1, "tracking.tensorboard": True})
    for attempt in (1, 2):
        rewind(run_dir, 4)
        assert run(on, run_dir, resume=True) == first
        assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == attempt
        assert_tensorboard_equals_run_folder(run_dir)  # rounds 1..6, each once
    assert [e.step for e in tensorboard_events(run_dir).Scalars("weighted/val_loss")] == [1, 2, 3, 4, 5, 6]


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """One sqlite store for the module (creating its tables takes seconds); artifacts go beside it."""
    folder = tmp_path_factory.mktemp("mlflow")
    return f"sqlite:///{folder / 'mlflow.db'}", folder


def mlflow_run(uri: str, experiment: str, run_dir: Path, status: str | None = None):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], f"tags.`fedplug.run_dir` = '{run_dir.resolve()}'",
                              order_by=["attributes.start_time ASC"])
    return client, [r for r in runs if status is None or r.info.status == status]


def assert_mlflow_history_equals_metrics(client, run_id: str, run_dir: Path) -> None:
    records = jsonl(run_dir / "metrics.jsonl")
    for key in (k for k in records[0] if k != "round"):
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert history == [(r["round"], r[key]) for r in records], key


@needs_mlflow
def test_mlflow_run_holds_config_metrics_and_artifacts(small_cfg, mlflow_store, monkeypatch) -> None:
    uri, folder = mlflow_store
    monkeypatch.chdir(folder)
    long_value = "x" * 7000  # longer than MLflow takes: cut, config.yaml has it whole
    result = run(small_cfg(**{"tracking.mlflow": True, "tracking.mlflow_uri": uri,
                              "data.shakespeare.leaf_dir": long_value}))
    run_dir = Path(result["run_dir"])
    client, (found,) = mlflow_run(uri, "FedAvg_lr_on_synthetic", run_dir)  # the default experiment name
    assert found.info.status == "FINISHED" and found.info.run_name == run_dir.name
    config: dict[str, str] = {}

    def walk(node: dict, prefix: str) -> None:
        for name, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{name}.")
            else:
                config[f"{prefix}{name}"] = str(value)

    walk(yaml.safe_load((run_dir / "config.yaml").read_text()), "")
    params = found.data.params
    assert params.pop("data.shakespeare.leaf_dir") == "x" * 5997 + "..."
    config.pop("data.shakespeare.leaf_dir")
    assert params == config
    assert params["train.optimizer.lr"] == "0.1" and params["tracking.mlflow"] == "True"
    assert_mlflow_history_equals_metrics(client, found.info.run_id, run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert found.data.metrics["best/test_acc"] == summary["test_acc"]
    assert found.data.metrics["best/round"] == summary["best_round"]
    assert found.data.tags["fedplug.best_round"] == str(summary["best_round"])
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert artifacts == {"learning_curve.png", "client_accuracy.png", "summary.json", "config.yaml"}
    local = Path(client.download_artifacts(found.info.run_id, "summary.json", str(folder / "down")))
    assert local.read_text() == (run_dir / "summary.json").read_text()


@needs_mlflow
def test_mlflow_resumed_run_is_a_new_run_with_the_whole_history(small_cfg, mlflow_store, monkeypatch,
                                                                rewind) -> None:
    uri, folder = mlflow_store
    monkeypatch.chdir(folder)
    cfg = small_cfg(**{"checkpoint.every": 2, "eval.freq": 1, "tracking.mlflow": True, "tracking.mlflow_uri": uri,
                       "tracking.experiment": "resume"})
    first = run(cfg)
    run_dir = Path(first["run_dir"])
    client, (interrupted,) = mlflow_run(uri, "resume", run_dir)
    client.update_run(interrupted.info.run_id, status="RUNNING")  # as a run killed mid-way leaves it
    rewind(run_dir, 4)
    assert run(cfg, run_dir, resume=True) == first
    client, (old, new) = mlflow_run(uri, "resume", run_dir)
    assert old.info.run_id == interrupted.info.run_id and old.info.status == "KILLED"
    assert new.info.status == "FINISHED" and new.data.tags["fedplug.resumed_at_round"] == "4"
    assert_mlflow_history_equals_metrics(client, new.info.run_id, run_dir)  # rounds 1..6, not only 5 and 6


@pytest.mark.parametrize("command", [[], ["launch"], ["server"]])
@pytest.mark.parametrize("switch", ["tensorboard", "mlflow"])
def test_missing_package_is_one_error_line_before_any_work(tmp_path: Path, data_root: Path, monkeypatch, capsys,
                                                           switch: str, command: list[str]) -> None:
    monkeypatch.setattr(tracking, "_installed", lambda module: module != switch)
    outdir = tmp_path / "runs"
    code = cli.main([*command, "--cfg", str(CONFIG), f"tracking.{switch}=True", f"outdir={outdir}",
                     f"data.root={data_root}"])
    err = capsys.readouterr().err
    assert code == 2
    assert err == (f"fedplug: error: tracking.{switch} is on but the {switch} package is not installed: "
                   f"pip install 'fedplug[{switch}]' (or switch it off: tracking.{switch} False)\n")
    assert not outdir.exists()  # not even a run folder


def test_a_plain_run_imports_neither_tensorboard_nor_mlflow(tmp_path: Path, data_root: Path) -> None:
    code = f"""
import sys
from fedplug.config import load_config
from fedplug.run.simulation import run
run(load_config(None, {{"data.synthetic.num_clients": 4, "data.synthetic.val_size": 20, "data.synthetic.test_size": 20,
                       "federate.total_round_num": 2, "data.root": {str(data_root)!r}, "outdir": {str(tmp_path)!r}}}))
print(sorted(m for m in sys.modules if m.split(".")[0] in ("tensorboard", "mlflow", "torch.utils.tensorboard")
             or m.startswith("torch.utils.tensorboard")))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


@needs_tensorboard
@needs_mlflow
def test_distributed_server_tracks_and_writes_the_standalone_files(tmp_path: Path, data_root: Path,
                                                                   mlflow_store) -> None:
    """`fedplug launch` with both trackers: metrics.jsonl and clients.jsonl are the standalone run's, and
    the server's TensorBoard and MLflow runs hold them."""
    uri, _ = mlflow_store
    expected = run(load_config(CONFIG, {"outdir": str(tmp_path / "standalone"), "data.root": str(data_root)}))
    words = ["outdir", str(tmp_path / "launched"), "data.root", str(data_root), "distribute.clients_per_process",
             "8", "tracking.tensorboard", "True", "tracking.mlflow", "True", "tracking.mlflow_uri", uri,
             "tracking.experiment", "distributed", "distribute.server_port", str(free_port()), *PATIENT_WORDS]
    launch = Proc(fedplug_cmd("launch", "--cfg", CONFIG, *words), tmp_path)
    code, result = launch.finish()
    assert code == 0, launch.log[-3000:]
    assert without_run_dir(result) == without_run_dir(expected)
    run_dir, standalone_dir = Path(result["run_dir"]), Path(expected["run_dir"])
    for name in ("metrics.jsonl", "clients.jsonl"):
        assert (run_dir / name).read_text() == (standalone_dir / name).read_text(), name
    assert_tensorboard_equals_run_folder(run_dir)
    client, (found,) = mlflow_run(uri, "distributed", run_dir)
    assert found.info.status == "FINISHED"
    assert_mlflow_history_equals_metrics(client, found.info.run_id, run_dir)
    assert "client_accuracy.png" in {a.path for a in client.list_artifacts(found.info.run_id)}
