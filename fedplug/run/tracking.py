"""Experiment tracking: TensorBoard and MLflow, each optional and off by default (docs/tracking.md).

The run folder stays the record (metrics.jsonl, clients.jsonl, summary.json, the plots); a tracker
mirrors it into the tool people already look at. RoundKeeper (run/rounds.py) starts the tracking and
hands it every evaluation; finish_run (run/simulation.py) hands it the summary and the plots. So a
standalone run and the distributed server track alike.

- `tracking.tensorboard`: event files in `<run_dir>/tensorboard/` (`tensorboard --logdir <outdir>`):
  every figure of an evaluation's record as a scalar (step: the round), grouped by kind
  (`weighted/test_acc`, `average/test_acc_avg`, `fairness/test_acc_std`, `samples/test_total`), and
  the per-client test accuracies as a histogram (`clients/test_acc`). A resumed run writes to the
  same folder; what the killed run wrote after the checkpoint is purged (SummaryWriter's purge_step).
- `tracking.mlflow`: one MLflow run per run folder to `tracking.mlflow_uri` (empty: MLflow's own
  default, $MLFLOW_TRACKING_URI or ./mlflow.db): the resolved config as params (dotted keys), every
  figure of the record as a metric (step: the round), `best/...` metrics, and the plots,
  summary.json and config.yaml as artifacts. A resumed run is a new MLflow run holding the whole
  history (the checkpoint's evaluations are logged again at its start); the interrupted one, if
  still marked running, is marked killed.

tensorboard and mlflow are imported only here and only when switched on: plain runs never load them.
"""
from __future__ import annotations

import atexit
import importlib.util
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedplug.config import ConfigNode
from fedplug.errors import UserError

logger = logging.getLogger("fedplug")

TENSORBOARD_DIR = "tensorboard"
HISTOGRAM_TAG = "clients/test_acc"
ACC_BINS = np.linspace(0.0, 1.0, 21)  # 5-point bins of accuracy: histograms of different rounds and runs line up
ARTIFACTS = ("learning_curve.png", "client_accuracy.png", "summary.json", "config.yaml")
BEST = ("test_acc", "val_acc", "val_loss", "test_loss", "test_acc_avg")  # summary figures logged as best/<name>

# Which package each switch needs, and the pip extra that installs it.
_NEEDS = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow")}
_FAIRNESS = ("_std", "_min", "_max", "_bottom_decile", "_top_decile")


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def check_tracking(cfg: ConfigNode) -> None:
    """Refuse, before any work, a switched-on tracker whose package is not installed."""
    for switch, (module, extra) in _NEEDS.items():
        if getattr(cfg.tracking, switch) and not _installed(module):
            raise UserError(f"tracking.{switch} is on but the {module} package is not installed: "
                            f"pip install 'fedplug[{extra}]' (or switch it off: tracking.{switch} False)")


def metric_group(key: str) -> str:
    """The TensorBoard group of a record's figure: weighted, average, fairness, samples, other."""
    if key.endswith("_total"):
        return "samples"
    if key.endswith("_avg"):
        return "average"
    if key.endswith(_FAIRNESS):
        return "fairness"
    if key.endswith(("_acc", "_loss")):
        return "weighted"  # train_loss too: the sampled clients' loss, weighted by their samples
    return "other"


def figures(record: dict[str, Any]) -> dict[str, float]:
    """The record's numbers, the round aside."""
    return {k: float(v) for k, v in record.items()
            if k != "round" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def experiment_name(cfg: ConfigNode, label: str) -> str:
    """tracking.experiment, or the run folder's name without its time: `<method>_<model>_on_<data>`."""
    return cfg.tracking.experiment or cfg.expname or f"{label}_{cfg.model.type}_on_{cfg.data.type}"


def flat_config(cfg: ConfigNode) -> dict[str, str]:
    """The resolved config as {dotted key: text}, as config.yaml has it (so without the secret token)."""
    import yaml

    from fedplug.config import dotted, dump_config

    return {key: str(value) for key, value in dotted(yaml.safe_load(dump_config(cfg))).items()}


class Tracking:
    """The switched-on trackers of one run; with none on, every call does nothing."""

    def __init__(self, trackers: list[Any]) -> None:
        self.trackers = trackers
        self.finished = False
        if trackers:
            atexit.register(self._abandoned)

    def log(self, record: dict[str, Any], clients: dict[str, Any] | None) -> None:
        """One evaluation: its record (as metrics.jsonl) and its per-client line (as clients.jsonl)."""
        for tracker in self.trackers:
            tracker.log(record, clients)

    def finish(self, run_dir: Path, result: dict[str, Any]) -> None:
        """The end of the run: the final result and the run folder's artifacts."""
        if self.finished:
            return
        self.finished = True
        for tracker in self.trackers:
            tracker.finish(run_dir, result)
        if self.trackers:
            atexit.unregister(self._abandoned)

    def _abandoned(self) -> None:
        """The process ends without finish_run (an error): close the trackers, MLflow's run marked failed."""
        if not self.finished:
            self.finished = True
            for tracker in self.trackers:
                tracker.abandon()


def start_tracking(cfg: ConfigNode, run_dir: Path, label: str, resume: bool, rounds_run: int,
                   records: list[dict[str, Any]], client_records: list[dict[str, Any]]) -> Tracking:
    """The run's trackers, started; `records`/`client_records`: a resumed run's evaluations up to its checkpoint."""
    if "tracking" not in cfg:
        return Tracking([])
    check_tracking(cfg)
    trackers: list[Any] = []
    if cfg.tracking.tensorboard:
        trackers.append(TensorBoardTracker(cfg, run_dir, resume, rounds_run, records, client_records))
    if cfg.tracking.mlflow:
        trackers.append(MLflowTracker(cfg, run_dir, label, resume, rounds_run, records))
    return Tracking(trackers)


class TensorBoardTracker:
    def __init__(self, cfg: ConfigNode, run_dir: Path, resume: bool, rounds_run: int,
                 records: list[dict[str, Any]], client_records: list[dict[str, Any]]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        log_dir = run_dir / TENSORBOARD_DIR
        continued = resume and any(log_dir.glob("events.out.tfevents.*"))
        # Resumed: the same folder; TensorBoard hides what the interrupted run logged after the checkpoint.
        self.writer = SummaryWriter(str(log_dir), purge_step=rounds_run + 1 if continued else None)
        if not continued:  # a fresh run, or a resumed one that had no TensorBoard: its history so far
            from fedplug.config import dump_config

            self.writer.add_text("config", "    " + dump_config(cfg).replace("\n", "\n    "), 0)
            by_round = {c["round"]: c for c in client_records}
            for record in records:
                self.log(record, by_round.get(record["round"]))
        logger.info("tensorboard: %s (view: tensorboard --logdir %s)", log_dir, run_dir.parent)

    def log(self, record: dict[str, Any], clients: dict[str, Any] | None) -> None:
        step = record["round"]
        for key, value in figures(record).items():
            self.writer.add_scalar(f"{metric_group(key)}/{key}", value, step)
        if clients and clients.get("test_acc"):
            self.writer.add_histogram(HISTOGRAM_TAG, np.asarray(clients["test_acc"], dtype=np.float64), step,
                                      bins=ACC_BINS)
        self.writer.flush()

    def finish(self, run_dir: Path, result: dict[str, Any]) -> None:
        self.writer.close()

    def abandon(self) -> None:
        self.writer.close()


class MLflowTracker:
    def __init__(self, cfg: ConfigNode, run_dir: Path, label: str, resume: bool, rounds_run: int,
                 records: list[dict[str, Any]]) -> None:
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

        self.client = MlflowClient(tracking_uri=cfg.tracking.mlflow_uri or None)
        name = experiment_name(cfg, label)
        try:
            experiment_id = self._experiment(name)
            run_dir_tag = str(run_dir.resolve())
            tags = {"fedplug.run_dir": run_dir_tag, "fedplug.method": label, "fedplug.data": cfg.data.type,
                    "fedplug.model": cfg.model.type, "fedplug.seed": str(cfg.seed)}
            if resume:
                tags["fedplug.resumed_at_round"] = str(rounds_run)
                self._mark_interrupted(experiment_id, run_dir_tag)
            try:
                from mlflow.tracking.context.registry import resolve_tags  # mlflow.user, source name, git commit

                tags = resolve_tags(tags)
            except Exception:  # noqa: BLE001 - only the automatic context tags are lost
                pass
            run = self.client.create_run(experiment_id, run_name=run_dir.name, tags=tags)
        except MlflowException as err:
            raise UserError(f"MLflow at {self.client.tracking_uri}: {err.message}") from None
        self.run_id = run.info.run_id
        params = []
        for key, text in flat_config(cfg).items():
            if len(text) > MAX_PARAM_VAL_LENGTH:  # MLflow refuses longer values; config.yaml has it whole
                logger.warning("mlflow: param %s cut to %d characters (config.yaml has it whole)", key,
                               MAX_PARAM_VAL_LENGTH)
                text = text[:MAX_PARAM_VAL_LENGTH - 3] + "..."
            params.append(Param(key, text))
        for start in range(0, len(params), MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, params=params[start:start + MAX_PARAMS_TAGS_PER_BATCH])
        for record in records:  # resumed: the history up to the checkpoint, so this run holds all of it
            self.log(record, None)
        logger.info("mlflow: run %s (%s) in experiment %r at %s", self.run_id, run_dir.name, name,
                    self.client.tracking_uri)

    def _experiment(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            try:
                return self.client.create_experiment(name)
            except MlflowException:  # another run created it meanwhile
                experiment = self.client.get_experiment_by_name(name)
                if experiment is None:
                    raise
        if experiment.lifecycle_stage == "deleted":
            raise UserError(f"the MLflow experiment {name!r} is deleted: restore it (mlflow experiments restore) "
                            "or give another tracking.experiment")
        return experiment.experiment_id

    def _mark_interrupted(self, experiment_id: str, run_dir_tag: str) -> None:
        """A killed run's MLflow run still says RUNNING: say KILLED (best effort)."""
        if "'" in run_dir_tag:
            return
        try:
            for run in self.client.search_runs([experiment_id], f"tags.`fedplug.run_dir` = '{run_dir_tag}' "
                                                                "and attributes.status = 'RUNNING'"):
                self.client.set_terminated(run.info.run_id, "KILLED")
        except Exception as err:  # noqa: BLE001 - cosmetics of another run: never stop this one for it
            logger.warning("mlflow: could not mark the interrupted run as killed: %s", err)

    def log(self, record: dict[str, Any], clients: dict[str, Any] | None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        step = int(record["round"])
        metrics = [Metric(key, value, now, step) for key, value in figures(record).items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, run_dir: Path, result: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        best = [Metric(f"best/{k}", float(result[k]), now, 0) for k in BEST if result.get(k) is not None
                and not (isinstance(result[k], float) and math.isinf(result[k]))]
        if result.get("best_round") is not None:
            best.append(Metric("best/round", float(result["best_round"]), now, 0))
        self.client.log_batch(self.run_id, metrics=best)
        for key in ("best_round", "rounds_run", "early_stopped"):
            self.client.set_tag(self.run_id, f"fedplug.{key}", str(result.get(key)))
        for name in ARTIFACTS:
            if (run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(run_dir / name))
        self.client.set_terminated(self.run_id, "FINISHED")

    def abandon(self) -> None:
        try:
            self.client.set_terminated(self.run_id, "FAILED")
        except Exception:  # noqa: BLE001 - at exit: nothing more to do
            pass
