"""Standalone simulation: the server and every client in one process, one model object in all.

Round r: sample clients (from the round's own generator), give each the global parameters, run
its local update (with its own generator for round r), fold its parameters into the weighted
mean, replace the global model by the mean. Every `eval.freq` rounds and after the last, every
client evaluates on val and test; early stopping watches the weighted val loss.
"""
from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from fedplug.backends.sequential import SequentialBackend
from fedplug.config import ConfigNode
from fedplug.data import build_data
from fedplug.errors import ConfigError
from fedplug.models import build_model
from fedplug.run.early_stop import EarlyStopper
from fedplug.run.evaluation import EVAL_SPLITS, pool
from fedplug.run.outputs import MetricsLog, make_run_dir, plot_learning_curve, progress, setup_logging
from fedplug.run.plan import build_plan
from fedplug.seeding import CLIENT_SAMPLING, generator
from fedplug.server.aggregation import WeightedMean
from fedplug.server.sampling import clients_per_round, sample_clients

logger = logging.getLogger("fedplug")


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Use `count` PyTorch CPU threads inside the block (0: leave PyTorch's default)."""
    if count <= 0:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run(cfg: ConfigNode, run_dir: Path | None = None) -> dict[str, Any]:
    """Run the configured federation; returns the final summary (also written to the run folder)."""
    with torch_threads(cfg.threads):
        return _run(cfg, run_dir)


def _run(cfg: ConfigNode, run_dir: Path | None) -> dict[str, Any]:
    started = time.perf_counter()
    plan = build_plan(cfg)  # refuses impossible combinations before any work
    run_dir = run_dir or make_run_dir(cfg, plan.label)
    setup_logging(run_dir)
    data = build_data(cfg)
    if data.num_classes > cfg.model.out_channels:
        raise ConfigError(f"model.out_channels is {cfg.model.out_channels} but the {data.name} data have "
                          f"{data.num_classes} classes; set model.out_channels {data.num_classes}")
    model = build_model(cfg, data.input_shape, plan)
    backend = SequentialBackend(cfg, model, plan, data)
    num_clients, fed = data.num_clients, cfg.federate
    per_round = clients_per_round(cfg, num_clients)
    logger.info("run folder %s", run_dir)
    logger.info("%s on %s: %d clients, %d per round, %d rounds", plan.label, data.name, num_clients, per_round,
                fed.total_round_num)

    global_params = {k: v.clone() for k, v in backend.shared_parameters().items()}
    stopper = EarlyStopper(cfg.early_stop.patience, cfg.early_stop.delta)
    metrics = MetricsLog(run_dir / "metrics.jsonl")
    bar = progress(fed.total_round_num, f"{plan.label} on {data.name}")
    redirect = contextlib.nullcontext()
    if bar is not None:
        from tqdm.contrib.logging import logging_redirect_tqdm

        redirect = logging_redirect_tqdm(loggers=[logger])
    rounds_run = 0
    with redirect:
        for round_num in range(1, fed.total_round_num + 1):
            sampled = sample_clients(num_clients, per_round, generator(cfg.seed, CLIENT_SAMPLING, round_num))
            mean, train_loss_sum = WeightedMean(global_params), 0.0
            for client in sampled:
                result = backend.train_client(client, round_num, global_params)
                mean.add(result["params"], result["train_total"])
                train_loss_sum += result["train_loss"] * result["train_total"]
            global_params = plan.update_global(global_params, mean.result())
            rounds_run = round_num
            if bar is not None:
                bar.update(1)
            if round_num % cfg.eval.freq and round_num != fed.total_round_num:
                continue
            record = {"round": round_num, "train_loss": train_loss_sum / mean.total_weight,
                      **pool({split: backend.evaluate(global_params, split) for split in EVAL_SPLITS})}
            metrics.write(record)
            stop = stopper.update(round_num, record["val_loss"], record)
            logger.info("round %d: val_loss %.4f, val_acc %.4f, test_acc %.4f", round_num, record["val_loss"],
                        record["val_acc"], record["test_acc"])
            if stop:
                logger.info("early stop at round %d: no better val loss for %d evaluations", round_num,
                            stopper.patience)
                break
    if bar is not None:
        bar.close()
    metrics.close()
    return _finish(cfg, plan.label, run_dir, metrics.records, stopper, rounds_run, time.perf_counter() - started)


def _finish(cfg: ConfigNode, label: str, run_dir: Path, records: list[dict], stopper: EarlyStopper, rounds_run: int,
            seconds: float) -> dict[str, Any]:
    best = stopper.best_metrics
    result = {
        "method": label,
        "data": cfg.data.type,
        "best_round": stopper.best_round,
        "test_acc": best.get("test_acc"),
        "val_acc": best.get("val_acc"),
        "val_loss": best.get("val_loss"),
        "test_loss": best.get("test_loss"),
        "test_acc_avg": best.get("test_acc_avg"),
        "rounds_run": rounds_run,
        "early_stopped": stopper.should_stop,
        "run_dir": str(run_dir),
    }
    summary = {**result, "seconds": round(seconds, 2), "best": best}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if records:
        plot_learning_curve(records, run_dir / "learning_curve.png",
                            f"{label} on {cfg.data.type} (seed {cfg.seed})", stopper.best_round)
    logger.info("best round %s: weighted test accuracy %.2f%% (%.1f s)", stopper.best_round,
                100 * (result["test_acc"] or 0.0), seconds)
    return result
