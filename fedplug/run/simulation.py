"""Standalone simulation: the server and every client in one process, one model object in all.

Round r: sample clients (from the round's own generator), give each the global parameters (and
the plug-ins' broadcast tensors), run its local update (with its own generator for round r), fold
its upload into the round's aggregation, move the global model by the plan's server pipeline. Every `eval.freq` rounds and after the last, every
client evaluates on val and test; early stopping watches the weighted val loss. Everything the
server does around the clients' work is run/rounds.py (shared with the distributed server),
including the checkpoint every `checkpoint.every` rounds that `resume` continues from.
"""
from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

from fedplug.backends import build_backend
from fedplug.config import ConfigNode
from fedplug.core.compose import Plan
from fedplug.core.messages import RoundFacts, Upload
from fedplug.data import build_data
from fedplug.device import deterministic, place_data, resolve
from fedplug.errors import BackendLost, RunDiverged, UserError
from fedplug.models import build_model, check_fits
from fedplug.run.early_stop import EarlyStopper
from fedplug.run.evaluation import EVAL_SPLITS
from fedplug.run.outputs import (close_logging, make_run_dir, plot_client_accuracy, plot_learning_curve, progress,
                                 setup_logging)
from fedplug.run.plan import build_plan
from fedplug.run.rounds import (SUMMARY_FILE, RoundKeeper, client_state_tree, read_client_records, report_finished,
                                split_client_state_tree)
from fedplug.run.tracking import Tracking, check_tracking
from fedplug.server.sampling import clients_per_round

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


def run(cfg: ConfigNode, run_dir: Path | None = None, resume: bool = False) -> dict[str, Any]:
    """Run the configured federation; returns the final summary (also written to the run folder).

    `resume`: continue the run in `run_dir` from its checkpoint (same config, checked).
    """
    with torch_threads(cfg.threads), deterministic(cfg.deterministic, resolve(cfg.device)):
        return _run(cfg, run_dir, resume)


def _run(cfg: ConfigNode, run_dir: Path | None, resume: bool) -> dict[str, Any]:
    started = time.perf_counter()
    if resume and run_dir is not None and (done := report_finished(run_dir)) is not None:
        return done
    plan = build_plan(cfg)  # refuses impossible combinations before any work
    check_tracking(cfg)  # and a tracker switched on without its package
    new_dir = run_dir is None
    run_dir = run_dir or make_run_dir(cfg, plan.label)
    setup_logging(run_dir)
    try:
        data = build_data(cfg)
        check_fits(cfg, data)
        device, data = place_data(cfg, data)
        model = build_model(cfg, data.input_shape, plan).to(device)  # initialised on CPU: the same on every device
        backend = build_backend(cfg, model, plan, data)  # federate.backend: sequential, vectorized or ray
        per_round = clients_per_round(cfg, data.num_clients)
    except UserError:
        if new_dir:  # refused before the first round: leave no almost empty run folder behind
            close_logging()
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    num_clients, fed = data.num_clients, cfg.federate
    logger.info("run folder %s", run_dir)
    logger.info("%s on %s: %d clients, %d per round, %d rounds", plan.label, data.name, num_clients, per_round,
                fed.total_round_num)

    try:
        return _rounds(cfg, plan, run_dir, backend, data.name, num_clients, resume, started)
    finally:
        if hasattr(backend, "close"):  # the Ray backend's workers
            backend.close()


def _rounds(cfg: ConfigNode, plan: Plan, run_dir: Path, backend: Any, data_name: str, num_clients: int,
            resume: bool, started: float) -> dict[str, Any]:
    fed = cfg.federate
    keeper = RoundKeeper(cfg, plan, run_dir, num_clients,
                         {k: v.clone() for k, v in backend.shared_parameters().items()},
                         save_client_state=lambda round_num: client_state_tree(*backend.export_client_state()),
                         load_client_state=lambda tree: backend.import_client_state(*split_client_state_tree(tree)))
    keeper.open(resume)
    bar = progress(fed.total_round_num, f"{plan.label} on {data_name}")
    redirect = contextlib.nullcontext()
    if bar is not None:
        from tqdm.contrib.logging import logging_redirect_tqdm

        redirect = logging_redirect_tqdm(loggers=[logger])
        bar.update(keeper.rounds_run)  # resumed: the rounds already done
    with redirect:
        for round_num in keeper.rounds():
            sampled = keeper.sample(round_num)
            aggregation, extras = keeper.begin_round(round_num, sampled)
            uploads = backend.train_cohort(sampled, round_num, keeper.global_params, extras)
            try:
                for upload in transformed_uploads(plan, uploads, aggregation.facts):
                    aggregation.add(upload)  # read at once: the tensors may be views the backend reuses
                # Aggregation, evaluation, early stopping and checkpoints: shared with the distributed server.
                stop = keeper.end_round(round_num, aggregation,
                                        lambda g: {split: backend.evaluate(g, split) for split in EVAL_SPLITS})
            except BackendLost as lost:
                if bar is not None:
                    bar.close()
                raise BackendLost(f"{lost}; {_stop_at_checkpoint(keeper, round_num)}") from None
            if bar is not None:
                bar.update(1)
            if stop:
                break
    if bar is not None:
        bar.close()
    keeper.close()
    return finish_run(cfg, plan.label, run_dir, keeper.records, keeper.stopper, keeper.rounds_run,
                      time.perf_counter() - started, keeper.tracking, keeper.report(),
                      keeper.diverged)


def _stop_at_checkpoint(keeper: RoundKeeper, round_num: int) -> str:
    """After the backend was lost in `round_num`: write a checkpoint of the last finished round when the loss
    came before any of this round was folded in (the keeper then holds exactly that round's state); say how
    to go on."""
    if keeper.rounds_run == round_num - 1 and keeper.rounds_run > 0:
        keeper.save(keeper.rounds_run)
    keeper.close()
    if keeper.checkpoint_path.is_file():
        return f"resume with --resume {keeper.run_dir}"
    return f"no round was checkpointed yet: start the run again ({keeper.run_dir} holds no checkpoint)"


def transformed_uploads(plan: Plan, uploads: Iterable[Upload], facts: RoundFacts) -> Iterable[Upload]:
    """The uploads to fold in: as they come, or, when a plug-in defines `transform_uploads` (colluding attackers
    that read the round's honest uploads; simulation only), all of them copied, then transformed in plan order."""
    points = plan.with_method("transform_uploads")
    if not points:
        return uploads
    kept = [u.copied() for u in uploads]
    for plugin in points:
        kept = plugin.transform_uploads(kept, facts)
    return kept


def finish_run(cfg: ConfigNode, label: str, run_dir: Path, records: list[dict], stopper: EarlyStopper,
               rounds_run: int, seconds: float, tracking: Tracking | None = None,
               reported: dict[str, Any] | None = None, diverged: str | None = None) -> dict[str, Any]:
    """Write summary.json, the learning curve and the client accuracies at the best round; hand them to
    the trackers; the final result (standalone run or distributed server). `reported`: the plug-ins'
    figures after the last round (DP's epsilon), added to both. A diverged run (`diverged`: what and
    where) writes all of these, then raises RunDiverged."""
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
        **(reported or {}),
    }
    summary = {**result, "seconds": round(seconds, 2), "best": best, **({"diverged": diverged} if diverged else {})}
    (run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    if records:
        title = f"{label} on {cfg.data.type} (seed {cfg.seed})"
        plot_learning_curve(records, run_dir / "learning_curve.png", title, stopper.best_round)
        shown = stopper.best_round if stopper.best_round is not None else records[-1]["round"]
        clients = [c for c in read_client_records(run_dir) if c["round"] == shown]
        if clients:
            record = next((r for r in records if r["round"] == shown), None)
            plot_client_accuracy(clients[-1], run_dir / "client_accuracy.png", title, record,
                                 best=stopper.best_round is not None)
    if tracking is not None:
        tracking.finish(run_dir, result)
    logger.info("best round %s: weighted test accuracy %.2f%% (%.1f s)", stopper.best_round,
                100 * (result["test_acc"] or 0.0), seconds)
    if diverged:
        raise RunDiverged(f"{diverged}; lower train.optimizer.lr or clip the gradients (grad.grad_clip); what was "
                          f"measured is in {run_dir}")
    return result
