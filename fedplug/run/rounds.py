"""The server's side of the rounds, shared by the simulation and the distributed server.

Both run the same code for everything but the clients' work: sampling (from the round's own
generator), the round's facts and the plug-ins' broadcast, the folding of uploads
(server/round.py), the plan's global update, evaluation pooling, early stopping, metrics and
checkpoints. So a distributed run and a standalone run of one config agree bit for
bit, and a run resumed from a checkpoint continues exactly where the checkpoint was taken.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from fedplug.config import ConfigNode
from fedplug.core.compose import Plan
from fedplug.core.messages import RoundFacts
from fedplug.core.params import Params
from fedplug.device import to_device
from fedplug.errors import UserError
from fedplug.run import checkpoint
from fedplug.run.early_stop import EarlyStopper
from fedplug.run.evaluation import per_client, pool
from fedplug.run.failpoint import failpoint
from fedplug.run.fingerprint import check_same_run
from fedplug.run.outputs import MetricsLog
from fedplug.run.tracking import Tracking, start_tracking
from fedplug.seeding import CLIENT_SAMPLING, generator
from fedplug.server.round import RoundAggregation
from fedplug.server.sampling import clients_per_round, sample_clients

logger = logging.getLogger("fedplug")
CLIENTS_FILE = "clients.jsonl"  # one line per evaluation: each client's test accuracy, loss and samples
SUMMARY_FILE = "summary.json"  # written when a run ends: its presence marks a finished run
Evaluate = Callable[[Params], dict[str, list[dict[str, Any]]]]  # global params -> per split, per client


class RoundKeeper:
    """Global model, early stopping, metrics and checkpoints of one run, round after round."""

    def __init__(self, cfg: ConfigNode, plan: Plan, run_dir: Path, num_clients: int, global_params: Params, *,
                 save_client_state: Callable[[int], dict[str, Any]],
                 load_client_state: Callable[[dict[str, Any]], None]) -> None:
        self.cfg, self.plan, self.run_dir = cfg, plan, run_dir
        self.num_clients = num_clients
        self.per_round = clients_per_round(cfg, num_clients)
        self.global_params = global_params
        self.messages = plan.messages(global_params)  # what travels besides the model, by plug-in
        for plugin in plan.with_method("setup"):
            plugin.setup(num_clients)  # before the first round (an attack refuses client ids outside 0..N-1)
        self.stopper = EarlyStopper(cfg.early_stop.patience, cfg.early_stop.delta)
        self.rounds_run = 0
        self.records: list[dict[str, Any]] = []
        self.client_records: list[dict[str, Any]] = []  # clients.jsonl's lines, one per record
        # Per-client state lives with the clients: these move it into and out of checkpoints.
        self.save_client_state, self.load_client_state = save_client_state, load_client_state
        self.metrics: MetricsLog | None = None
        self.clients: MetricsLog | None = None
        self.diverged: str | None = None  # what went NaN or infinite, and in which round; the run stops there
        self.tracking = Tracking([])  # TensorBoard, MLflow: started by open(), finished by finish_run

    # -- the rounds ----------------------------------------------------------------------------
    def open(self, resume: bool) -> None:
        """Start fresh, or continue from the run folder's checkpoint (metrics.jsonl, clients.jsonl cut back to it)."""
        if resume:
            self._restore()
            self.client_records = read_client_records(self.run_dir, [r["round"] for r in self.records])
        self.metrics = self._jsonl("metrics.jsonl", self.records)
        self.clients = self._jsonl(CLIENTS_FILE, self.client_records)
        self.tracking = start_tracking(self.cfg, self.run_dir, self.plan.label, resume, self.rounds_run, self.records,
                                       self.client_records)

    def _jsonl(self, name: str, lines: list[dict[str, Any]]) -> MetricsLog:
        path = self.run_dir / name
        path.write_text("".join(json.dumps(line) + "\n" for line in lines))
        log = MetricsLog(path)
        log.records = lines
        return log

    def rounds(self) -> range:
        return range(self.rounds_run + 1, self.cfg.federate.total_round_num + 1)

    def sample(self, round_num: int) -> list[int]:
        return sample_clients(self.num_clients, self.per_round, generator(self.cfg.seed, CLIENT_SAMPLING, round_num))

    def begin_round(self, round_num: int, sampled: list[int]) -> tuple[RoundAggregation, dict[str, Params]]:
        """The round's fold of uploads (with its facts) and what the plug-ins broadcast with the model."""
        aggregation = self.new_aggregation(round_num, sampled)
        return aggregation, self.plan.broadcast(aggregation.facts, self.messages)

    def new_aggregation(self, round_num: int, sampled: list[int]) -> RoundAggregation:
        facts = RoundFacts(round_num, self.num_clients, tuple(sampled), self.global_params)
        return RoundAggregation(self.plan, facts, self.messages)

    def end_round(self, round_num: int, aggregation: RoundAggregation, evaluate: Evaluate) -> bool:
        """Global update, evaluation when due, early stopping, checkpoint when due; True: stop now."""
        failpoint("round_end", round_num)
        if not aggregation.empty:
            aggregate = aggregation.aggregate()
            self.global_params = self.plan.update_global(self.global_params, aggregate, aggregation.facts)
        else:
            logger.warning("round %d: no client result; the global model stays", round_num)
        self.rounds_run = round_num
        self.diverged = self._divergence(round_num, aggregation)
        stop = False
        # A diverged round is evaluated too, so that its NaN or infinite figures are on record.
        if (round_num % self.cfg.eval.freq == 0 or round_num == self.cfg.federate.total_round_num
                or self.diverged is not None):
            results = evaluate(self.global_params)
            record = {"round": round_num, "train_loss": aggregation.train_loss, **pool(results),
                      **self.plan.report(aggregation.facts)}
            clients = {"round": round_num, **per_client(results)}
            self.metrics.write(record)
            self.clients.write(clients)
            self.tracking.log(record, clients)
            stop = self.stopper.update(round_num, record["val_loss"], record)
            logger.info("round %d: val_loss %.4f, val_acc %.4f, test_acc %.4f", round_num, record["val_loss"],
                        record["val_acc"], record["test_acc"])
            if stop:
                logger.info("early stop at round %d: no better val loss for %d evaluations", round_num,
                            self.stopper.patience)
        if self.diverged is not None:
            logger.error("%s; the run stops here", self.diverged)
            return True  # no checkpoint of a diverged model: the previous one stays the one to resume from
        every = self.cfg.checkpoint.every
        # Also at the run's end (last round or early stop): the final model and state are kept.
        if every and (round_num % every == 0 or stop or round_num == self.cfg.federate.total_round_num):
            self.save(round_num)
        return stop

    def report(self) -> dict[str, Any]:
        """The plug-ins' figures after the rounds run so far (DP's epsilon), for the summary and final line."""
        facts = RoundFacts(self.rounds_run, self.num_clients, tuple(self.sample(self.rounds_run)), self.global_params)
        return self.plan.report(facts)

    def _divergence(self, round_num: int, aggregation: RoundAggregation) -> str | None:
        """A sentence when the round's training loss or the new global model is NaN or infinite, else None."""
        loss = aggregation.train_loss
        if not aggregation.empty and not math.isfinite(loss):
            return f"the run diverged in round {round_num}: the clients' training loss is {loss}"
        bad = sorted(name for name, t in self.global_params.items()
                     if t.is_floating_point() and not bool(torch.isfinite(t).all()))
        if bad:
            return f"the run diverged in round {round_num}: the global model's {', '.join(bad)} hold NaN or infinite values"
        return None

    def close(self) -> None:
        for log in (self.metrics, self.clients):
            if log is not None:
                log.close()

    # -- checkpoints ---------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / checkpoint.CHECKPOINT_FILE

    def save(self, round_num: int) -> None:
        rng_tensors, rng_meta = checkpoint.rng_state()
        tree = {"global": self.global_params, "rng": rng_tensors, "clients": self.save_client_state(round_num),
                "server": {p.name: p.server_state() for p in self.plan.plugins}}
        s = self.stopper
        meta = {"round": round_num, "records": self.records, "rng": rng_meta, "config_sha256": self._config_hash(),
                "early_stop": {"best_round": s.best_round, "best_value": s.best_value, "best_metrics": s.best_metrics,
                               "evals_without_improvement": s.evals_without_improvement}}
        checkpoint.save(self.checkpoint_path, checkpoint.flatten(tree), meta)
        logger.info("checkpoint at round %d: %s", round_num, self.checkpoint_path)

    def _config_hash(self) -> str | None:
        """SHA-256 of the run folder's config.yaml, recorded in each checkpoint (None: no such file)."""
        path = self.run_dir / "config.yaml"
        return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None

    def _restore(self) -> None:
        from fedplug.config import load_config

        tensors, meta = checkpoint.load(self.checkpoint_path)
        if meta.get("config_sha256") != self._config_hash():
            raise UserError(f"cannot resume {self.run_dir}: its config.yaml was changed after the checkpoint was "
                            f"written (SHA-256 differs from the one in {self.checkpoint_path.name}); put the original "
                            f"back, or start a new run with the new config")
        check_same_run(self.cfg, load_config(self.run_dir / "config.yaml"), str(self.run_dir))
        missing = set(self.global_params) - set(checkpoint.unflatten(tensors, "global/"))
        if missing:
            raise UserError(f"checkpoint {self.checkpoint_path} lacks parameters {sorted(missing)}")
        device = next(iter(self.global_params.values())).device  # checkpoints hold CPU tensors
        self.global_params = {name: tensors[f"global/{name}"].to(device) for name in self.global_params}
        for plugin in self.plan.plugins:
            plugin.load_server_state(to_device(checkpoint.unflatten(tensors, f"server/{plugin.name}/"), device))
        self.rounds_run = meta["round"]
        self.load_client_state(checkpoint.unflatten(tensors, "clients/"))
        checkpoint.set_rng_state(checkpoint.unflatten(tensors, "rng/"), meta["rng"])
        self.records = meta["records"]
        for name, value in meta["early_stop"].items():
            setattr(self.stopper, name, value)
        logger.info("resumed from the checkpoint at round %d (%s)", self.rounds_run, self.checkpoint_path)


def finished_result(run_dir: Path) -> dict[str, Any] | None:
    """A finished run's final result (its summary.json, less `seconds` and `best`), else None."""
    path = run_dir / SUMMARY_FILE
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    return {k: v for k, v in summary.items() if k not in ("seconds", "best")}


def report_finished(run_dir: Path) -> dict[str, Any] | None:
    """`--resume` of a finished run: say so on stderr and return its result (nothing is run or written)."""
    done = finished_result(run_dir)
    if done is not None:
        print(f"fedplug: {run_dir} is a finished run ({done.get('rounds_run')} rounds, {SUMMARY_FILE}); nothing to "
              f"resume, nothing changed", file=sys.stderr, flush=True)
    return done


def read_client_records(run_dir: Path, rounds: list[int] | None = None) -> list[dict[str, Any]]:
    """clients.jsonl's lines (those of `rounds` when given: a resumed run's, up to its checkpoint)."""
    path = run_dir / CLIENTS_FILE
    lines: list[dict[str, Any]] = []
    if path.is_file():
        for text in path.read_text().splitlines():
            try:
                lines.append(json.loads(text))
            except json.JSONDecodeError:  # a line torn by a kill: nothing after it was written whole
                break
    if rounds is None:
        return lines
    wanted = set(rounds)
    kept = {line["round"]: line for line in lines if line.get("round") in wanted}
    if len(kept) < len(wanted):
        logger.warning("%s lacks the per-client results of round(s) %s: client_accuracy.png and the histograms "
                       "will miss them", path, sorted(wanted - set(kept))[:10])
    return [kept[r] for r in rounds if r in kept]


def client_state_tree(kept: dict[int, Params], states: dict[int, dict[str, Params]]) -> dict[str, Any]:
    """Per-client kept tensors and plug-in states as one checkpoint subtree (clients by id)."""
    tree: dict[str, Any] = {}
    for client, tensors in kept.items():
        tree.setdefault(str(client), {})["kept"] = tensors
    for client, per_plugin in states.items():
        nonempty = {name: state for name, state in per_plugin.items() if state}
        if nonempty:
            tree.setdefault(str(client), {})["state"] = nonempty
    return tree


def split_client_state_tree(tree: dict[str, Any]) -> tuple[dict[int, Params], dict[int, dict[str, Params]]]:
    kept = {int(c): v["kept"] for c, v in tree.items() if "kept" in v}
    states = {int(c): v["state"] for c, v in tree.items() if "state" in v}
    return kept, states

