"""`fedplug server`: the rounds of a run, with the clients in other processes.

The round logic is the simulation's (run/rounds.py: sampling, the weighted mean folded in client
order, the plan's global update, evaluation pooling, early stopping, checkpoints); only the
clients' work travels. Per round: publish TRAIN to the sampled clients, collect their results
until all arrived or `distribute.round_timeout` passed, fold in those received (in client order,
as the simulation does), skip the round when fewer than `federate.min_received_num` arrived.
"""
from __future__ import annotations

import logging
import socket
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from fedplug.config import ConfigNode
from fedplug.core.messages import Upload, flatten_extras, payload_layout, split_payload
from fedplug.core.params import Params
from fedplug.distributed.protocol import (EVAL_METRICS, TRAIN_METRICS, Kind, Refused, check_metrics, decode_tensors,
                                          encode_tensors, layout)
from fedplug.distributed.security import grpc_options, message_limit, server_credentials, token
from fedplug.distributed.service import FederationService, Mailbox
from fedplug.errors import UserError
from fedplug.models import build_model
from fedplug.run import checkpoint
from fedplug.run.evaluation import EVAL_SPLITS
from fedplug.run.fingerprint import fingerprint
from fedplug.run.outputs import close_logging, make_run_dir, setup_logging
from fedplug.run.plan import build_plan, check_distributable
from fedplug.run.rounds import RoundKeeper, report_finished
from fedplug.run.simulation import finish_run, torch_threads
from fedplug.run.tracking import check_tracking

logger = logging.getLogger("fedplug")
FINISH_GRACE_SECONDS = 5.0  # how long the server stays up for clients to hear that the run is over


def serve(cfg: ConfigNode, run_dir: Path | None = None, resume: bool = False) -> dict[str, Any]:
    """Run the federation as its server; returns the same summary as a standalone run."""
    if resume and run_dir is not None and (done := report_finished(run_dir)) is not None:
        return done
    check_port_free(cfg.distribute.server_host, cfg.distribute.server_port)  # before a run folder is made
    with torch_threads(cfg.threads):
        return Coordinator(cfg, run_dir, resume).run()


def check_port_free(host: str, port: int) -> None:
    """Refuse a port another process listens on. SO_REUSEADDR as gRPC sets it: a port in TIME_WAIT is free."""
    if port == 0:
        return
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as err:
        raise UserError(f"cannot listen on {host}:{port} ({err.strerror}): another process uses it, or it is not "
                        f"an address of this host; set distribute.server_port (0: any free port)") from None


class Coordinator:
    def __init__(self, cfg: ConfigNode, run_dir: Path | None, resume: bool) -> None:
        self.started = time.perf_counter()
        self.cfg, self.resume = cfg, resume
        self.plan = build_plan(cfg)
        check_distributable(self.plan)
        check_tracking(cfg)  # a tracker switched on without its package: refused before any work
        self.fingerprint = fingerprint(cfg, self.plan)
        self.token = token(cfg)
        self.run_dir = run_dir or make_run_dir(cfg, self.plan.label)
        setup_logging(self.run_dir)
        self.resume_round = checkpoint.load(self.run_dir / checkpoint.CHECKPOINT_FILE)[1]["round"] if resume else 0
        self.num_clients = cfg.federate.client_num  # 0: told by the first client to join
        self.data_shape: tuple[tuple[int, ...], int] | None = None  # (input shape, classes), from the first join
        self.mailbox = Mailbox()
        self.global_layout: dict[str, Any] = {}
        self.upload_layout: dict[str, Any] = {}  # parameters and the plug-ins' `up` tensors
        self.current_round = 0
        self.rounds_begun = False

    # -- joining ---------------------------------------------------------------------------------
    def check_join(self, request: Any) -> int:
        if request.fingerprint != self.fingerprint:
            raise Refused("FAILED_PRECONDITION", f"plan fingerprint {request.fingerprint[:16]!r} is not the server's "
                                                 f"{self.fingerprint!r}: another plan, config, plug-in code or fedplug version")
        shape = (tuple(request.input_shape), request.num_classes)
        with self.mailbox.cond:
            # Adopted only once every check passed: a refused join changes nothing.
            num_clients = self.num_clients or max(request.num_clients, 0)
            if not 0 <= request.client_id < max(num_clients, 1):
                raise Refused("INVALID_ARGUMENT", f"client id {request.client_id} outside 0..{num_clients - 1}")
            if self.data_shape is not None and shape != self.data_shape:
                raise Refused("INVALID_ARGUMENT", f"client {request.client_id} has data of shape {shape}, the "
                                                  f"federation {self.data_shape}")
            self.num_clients, self.data_shape = num_clients, shape
        return self.resume_round

    def wait_for_clients(self) -> None:
        deadline = time.monotonic() + self.cfg.distribute.join_timeout
        box = self.mailbox
        with box.cond:
            while not (self.num_clients and len(box.sessions) >= self.num_clients) and time.monotonic() < deadline:
                box.cond.wait(max(deadline - time.monotonic(), 0.01))
            joined = len(box.sessions)
        if joined < max(self.cfg.federate.min_received_num, 1) or self.data_shape is None:
            raise UserError(f"only {joined} client(s) joined within distribute.join_timeout "
                            f"({self.cfg.distribute.join_timeout} s); federate.min_received_num is "
                            f"{self.cfg.federate.min_received_num}")
        if joined < self.num_clients:
            logger.warning("%d of %d clients joined; starting without the others (they may join later)", joined,
                           self.num_clients)

    def initial_global(self) -> Params:
        """The shared parameters of the seeded model, exactly as the simulation starts them."""
        model = build_model(self.cfg, self.data_shape[0], self.plan)
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        local = set().union(*(p.local_parameters(names) for p in self.plan.plugins))
        params = dict(model.named_parameters())
        return {n: params[n].detach().clone() for n in names if n not in local}

    # -- checking results ------------------------------------------------------------------------
    def check_train(self, client: int, result: Any) -> Upload:
        metrics = check_metrics(result.metrics, TRAIN_METRICS)
        if metrics["train_total"] <= 0 or metrics["train_steps"] <= 0:
            raise Refused("INVALID_ARGUMENT", f"client {client} reports {metrics['train_total']} samples in "
                                              f"{metrics['train_steps']} steps")
        params, extras = split_payload(decode_tensors(result.tensors, self.upload_layout))
        metrics = {"train_total": int(metrics["train_total"]), "train_steps": int(metrics["train_steps"]),
                   "train_loss": metrics["train_loss"]}
        return Upload(client, params, metrics, extras)

    def check_eval(self, client: int, result: Any) -> dict[str, dict[str, float]]:
        names = tuple(f"{split}_{name}" for split in EVAL_SPLITS for name in EVAL_METRICS)
        metrics = check_metrics(result.metrics, names)
        if any(metrics[f"{split}_total"] <= 0 for split in EVAL_SPLITS):
            raise Refused("INVALID_ARGUMENT", f"client {client} evaluated no sample")
        return {split: {k: v for k, v in metrics.items() if k.startswith(split + "_")} for split in EVAL_SPLITS}

    # -- the run ---------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        d = self.cfg.distribute
        # Every client holds one worker in its long poll: room for all of them, and for the other calls.
        workers = self.num_clients or (self.cfg.data.synthetic.num_clients if self.cfg.data.type == "synthetic" else 256)
        # SO_REUSEPORT off: otherwise a second server on a port in use binds too and the two share the clients.
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers + 16),
                             options=[*grpc_options(self.cfg), ("grpc.so_reuseport", 0)])
        service = FederationService(self.token, message_limit(self.cfg), self.check_join, self.mailbox)
        server.add_generic_rpc_handlers((service.handler(),))
        address = f"{d.server_host}:{d.server_port}"
        credentials = server_credentials(self.cfg)
        try:
            port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
        except RuntimeError:  # newer gRPC raises where older returned 0
            port = 0
        if port == 0:
            raise UserError(f"cannot listen on {address} (in use, or not an address of this host)")
        server.start()
        logger.info("run folder %s", self.run_dir)
        logger.info("server listening on %s:%d (%s), plan %s, fingerprint %s", d.server_host, port,
                    "TLS" if credentials else "no TLS", self.plan.label, self.fingerprint)
        try:
            return self._rounds()
        finally:
            self.mailbox.finish()
            self._wait_for_goodbyes()
            server.stop(grace=1.0).wait()
            if not self.rounds_begun and not self.resume:
                self._discard_run_dir()

    def _rounds(self) -> dict[str, Any]:
        self.wait_for_clients()
        self.rounds_begun = True
        # Client processes keep their own state and read it back from their own checkpoints when they resume.
        keeper = RoundKeeper(self.cfg, self.plan, self.run_dir, self.num_clients, self.initial_global(),
                             save_client_state=self._checkpoint_clients, load_client_state=lambda tree: None)
        self.global_layout = layout(keeper.global_params)
        self.upload_layout = payload_layout(self.global_layout, {p: m.up_specs() for p, m in keeper.messages.items()})
        keeper.open(self.resume)
        logger.info("%s, distributed: %d clients, %d per round, %d rounds", self.plan.label, self.num_clients,
                    keeper.per_round, self.cfg.federate.total_round_num)
        for round_num in keeper.rounds():
            sampled = keeper.sample(round_num)
            self.current_round = round_num
            aggregation, extras = keeper.begin_round(round_num, sampled)
            # Folded in client order as they arrive: the simulation's order, hence its exact sums.
            results = self._exchange(Kind.Value("TRAIN"), round_num, sampled,
                                     {**keeper.global_params, **flatten_extras(extras)}, self.check_train,
                                     lambda client, upload: aggregation.add(upload))
            if len(results) < self.cfg.federate.min_received_num:
                logger.warning("round %d: %d result(s), fewer than federate.min_received_num %d; round skipped",
                               round_num, len(results), self.cfg.federate.min_received_num)
                aggregation = keeper.new_aggregation(round_num, sampled)  # nothing of this round counts
            if keeper.end_round(round_num, aggregation, self._evaluate):
                break
        keeper.close()
        return finish_run(self.cfg, self.plan.label, self.run_dir, keeper.records, keeper.stopper, keeper.rounds_run,
                          time.perf_counter() - self.started, keeper.tracking, keeper.report(),
                          keeper.diverged)

    def _exchange(self, kind: int, round_num: int, clients: list[int], tensors: Params | None,
                  check: Any, consume: Any = None) -> dict[int, Any]:
        """Publish one task to `clients`, collect their checked results until the round's deadline."""
        blob = encode_tensors(tensors) if tensors is not None else b""
        self.mailbox.publish(kind, round_num, clients, blob, check)
        results = self.mailbox.collect(time.monotonic() + self.cfg.distribute.round_timeout, consume)
        missing = sorted(set(clients) - set(results))
        if missing:
            logger.warning("round %d (%s): no result from client(s) %s by the deadline; going on without them",
                           round_num, Kind.Name(kind), missing)
        return results

    def _evaluate(self, global_params: Params) -> dict[str, list[dict[str, Any]]]:
        results = self._exchange(Kind.Value("EVALUATE"), self.current_round, list(range(self.num_clients)), global_params,
                                 self.check_eval)
        if not results:
            raise UserError("no client answered the evaluation before distribute.round_timeout")
        return {split: [{**results[c][split], "client": c} for c in sorted(results)] for split in EVAL_SPLITS}

    def _checkpoint_clients(self, round_num: int) -> dict[str, Any]:
        """Clients keep their own state: each writes its checkpoint of this round before the server does."""
        with self.mailbox.cond:
            joined = sorted(self.mailbox.sessions)
        done = self._exchange(Kind.Value("CHECKPOINT"), round_num, joined, None, lambda client, result: True)
        logger.info("round %d: %d of %d clients wrote their checkpoint", round_num, len(done), len(joined))
        return {}

    def _discard_run_dir(self) -> None:
        """No round began (too few clients joined, or stopped while waiting): the folder holds nothing but the
        config and the log, already on stderr. Those go, and the folder with them unless something else is in it
        (a `--run-dir` given may be a folder of the user's)."""
        close_logging()
        for name in ("run.log", "config.yaml"):
            (self.run_dir / name).unlink(missing_ok=True)
        try:
            self.run_dir.rmdir()
        except OSError:
            pass

    def _wait_for_goodbyes(self) -> None:
        deadline = time.monotonic() + FINISH_GRACE_SECONDS
        box = self.mailbox
        with box.cond:
            while box.sessions.keys() - box.said_goodbye and time.monotonic() < deadline:
                box.cond.wait(max(deadline - time.monotonic(), 0.01))
