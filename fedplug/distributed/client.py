"""`fedplug client`: one process serving one or more client ids of a distributed run.

Each client id joins with the plan's fingerprint, then long-polls for tasks: TRAIN (the local
update from the broadcast global parameters, exactly the simulation's `train_client`), EVALUATE
(val and test with the model the client is judged by), CHECKPOINT (its own plug-in state, into
`distribute.state_dir`), FINISH. The client's data never leave the process. When the server goes
away the client joins again (the server may be restarting from its checkpoint) until
`distribute.join_timeout` runs out.
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import torch

from fedplug.backends.sequential import SequentialBackend
from fedplug.config import ConfigNode
from fedplug.data import build_data
from fedplug.data.federated import FederatedData, SplitData
from fedplug.core.messages import flatten_extras, payload_layout, split_payload
from fedplug.distributed import protocol
from fedplug.distributed.protocol import PROTOCOL_VERSION, SERVICE, TOKEN_HEADER, Kind, pb
from fedplug.distributed.security import client_channel, token
from fedplug.distributed.service import POLL_SECONDS
from fedplug.device import place_data, to_device
from fedplug.errors import DataError, UserError
from fedplug.models import build_model, check_fits
from fedplug.run import checkpoint
from fedplug.run.evaluation import EVAL_SPLITS
from fedplug.run.failpoint import failpoint
from fedplug.run.fingerprint import fingerprint
from fedplug.run.plan import build_plan, check_distributable
from fedplug.run.rounds import client_state_tree, split_client_state_tree

logger = logging.getLogger("fedplug")
JOIN_PROGRESS_SECONDS = 5.0  # a client waiting for its server says so this often
KEEP_CHECKPOINTS = 2  # the server may die between the clients' checkpoint and its own: keep the one before too


def own_data(path: str, client: int, num_classes: int) -> FederatedData:
    """A client's data file: an .npz of x_/y_ train, val and test (read without pickle), as client `client`."""
    try:
        arrays = np.load(Path(path).expanduser(), allow_pickle=False)
        splits = {}
        for split in ("train", *EVAL_SPLITS):
            x, y = torch.from_numpy(arrays[f"x_{split}"]), torch.from_numpy(arrays[f"y_{split}"]).long()
            splits[split] = SplitData(x, y, (0,) * (client + 1) + (len(y),))  # rows 0..n belong to `client`
    except (OSError, KeyError, ValueError) as err:
        raise DataError(f"distribute.data_path {path}: {err}") from None
    return FederatedData(f"own data {Path(path).name}", splits, num_classes)


class ClientProcess:
    def __init__(self, cfg: ConfigNode, client_ids: list[int]) -> None:
        self.cfg, self.client_ids = cfg, client_ids
        self.plan = build_plan(cfg)
        check_distributable(self.plan)
        self.fingerprint = fingerprint(cfg, self.plan)
        self.metadata = ((TOKEN_HEADER, token(cfg)),)
        d = cfg.distribute
        if d.data_path:
            if len(client_ids) != 1:
                raise UserError("distribute.data_path holds one client's data: give a single --client-id")
            self.data = own_data(d.data_path, client_ids[0], cfg.model.out_channels)
            self.num_clients = 0
        else:
            self.data = build_data(cfg)
            self.num_clients = self.data.num_clients
            bad = [c for c in client_ids if not 0 <= c < self.num_clients]
            if bad:
                raise UserError(f"--client-id {bad[0]}: the {self.data.name} data have clients 0..{self.num_clients - 1}")
        check_fits(cfg, self.data)
        self.device, self.data = place_data(cfg, self.data)  # each client process picks its own device
        for plugin in self.plan.with_method("setup"):
            plugin.setup(self.num_clients)  # 0 with its own data file: N unknown here
        model = build_model(cfg, self.data.input_shape, self.plan).to(self.device)
        self.backend = SequentialBackend(cfg, model, self.plan, self.data)
        shared = self.backend.shared_parameters()
        self.layout = protocol.layout(shared)  # EVALUATE: the global parameters
        messages = self.plan.messages(shared)  # TRAIN: also the plug-ins' `down` tensors
        self.train_layout = payload_layout(self.layout, {p: m.down for p, m in messages.items()})
        self.lock = threading.Lock()  # one model object: one client's work at a time
        self.state_dir = Path(d.state_dir) if d.state_dir else None
        self.channel = client_channel(cfg)
        self.failed: list[str] = []

    def _call(self, method: str, request: Any, reply_type: type, timeout: float, wait: bool = False) -> Any:
        call = self.channel.unary_unary(f"/{SERVICE}/{method}", request_serializer=lambda m: m.SerializeToString(),
                                        response_deserializer=reply_type.FromString)
        return call(request, timeout=timeout, metadata=self.metadata, wait_for_ready=wait)

    def run(self) -> int:
        threads = [threading.Thread(target=self._serve, args=(c,), name=f"client-{c}") for c in self.client_ids]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.channel.close()
        if self.failed:
            raise UserError(self.failed[0])
        return 0

    # -- one client id -----------------------------------------------------------------------------
    def _join(self, client: int) -> str:
        request = pb.JoinRequest(protocol_version=PROTOCOL_VERSION, fingerprint=self.fingerprint, client_id=client,
                                 input_shape=list(self.data.input_shape), num_classes=self.data.num_classes,
                                 num_clients=self.num_clients)
        d = self.cfg.distribute
        address = f"{d.server_host}:{d.server_port}"
        logger.info("client %d: joining the server at %s (retrying for up to distribute.join_timeout, %s s)",
                    client, address, d.join_timeout)
        started = time.monotonic()
        while True:  # attempts of JOIN_PROGRESS_SECONDS, so that a wait for an absent server shows in the log
            left = d.join_timeout - (time.monotonic() - started)
            try:
                reply = self._call("Join", request, pb.JoinReply, min(JOIN_PROGRESS_SECONDS, left), wait=True)
                break
            except grpc.RpcError as err:
                if err.code() != grpc.StatusCode.DEADLINE_EXCEEDED or left <= JOIN_PROGRESS_SECONDS:
                    raise
            logger.info("client %d: still trying %s (%.0f s of distribute.join_timeout %s s)", client, address,
                        time.monotonic() - started, d.join_timeout)
        if reply.resume_round:
            self._load_state(client, reply.resume_round)
        logger.info("client %d joined %s:%d", client, self.cfg.distribute.server_host, self.cfg.distribute.server_port)
        return reply.session

    def _serve(self, client: int) -> None:
        try:
            session, after = self._join(client), 0
            while True:
                try:
                    task = self._call("GetTask", pb.TaskRequest(session=session, client_id=client, after_task=after),
                                      pb.Task, POLL_SECONDS + 30)
                except grpc.RpcError as err:
                    # Server gone or restarted (sessions lost): join again. ABORTED, another process took
                    # this client id, is not retried: two processes would take it from each other forever.
                    if err.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                                          grpc.StatusCode.UNAUTHENTICATED):
                        raise
                    logger.warning("client %d: %s; joining again", client, err.details())
                    session, after = self._join(client), 0
                    continue
                if task.kind == Kind.Value("NONE"):
                    continue
                after = task.task_id
                if task.kind == Kind.Value("FINISH"):
                    logger.info("client %d: the run is over", client)
                    return
                self._answer(client, session, task)
        except grpc.RpcError as err:
            d = self.cfg.distribute
            why = f"{err.code().name}: {err.details()}"
            if err.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE):
                why = (f"no server reachable at {d.server_host}:{d.server_port} within distribute.join_timeout "
                       f"({d.join_timeout} s): is it running, with the same TLS settings?")
            self.failed.append(f"client {client}: {why}")
            logger.error("client %d stopped: %s", client, why)
        except UserError as err:  # e.g. its checkpoint unreadable
            self.failed.append(f"client {client}: {err}")
        except Exception as err:  # noqa: BLE001  (a bug: the traceback goes to the log, the process fails)
            logger.exception("client %d stopped", client)
            self.failed.append(f"client {client}: internal error {type(err).__name__}: {err}")

    def _answer(self, client: int, session: str, task: Any) -> None:
        result = pb.Result(session=session, client_id=client, task_id=task.task_id, round=task.round, kind=task.kind)
        try:
            self._work(client, task, result)
        except protocol.Refused as refusal:  # the server's own message did not pass the checks
            logger.error("client %d: task %d ignored: %s", client, task.task_id, refusal)
            return
        try:
            self._call("SendResult", result, pb.Ack, self.cfg.distribute.round_timeout + 30)
        except grpc.RpcError as err:  # e.g. too late for the round: the next task will come
            logger.warning("client %d: result of task %d refused: %s", client, task.task_id, err.details())

    def _work(self, client: int, task: Any, result: Any) -> None:
        with self.lock:
            if task.kind == Kind.Value("CHECKPOINT"):
                self._save_state(client, task.round)
            elif task.kind == Kind.Value("TRAIN"):
                failpoint(f"client{client}_train", task.round)
                payload = to_device(protocol.decode_tensors(task.tensors, self.train_layout), self.device)
                global_params, extras = split_payload(payload)
                update = self.backend.train_client(client, task.round, global_params, extras)
                result.tensors = protocol.encode_tensors({**update["params"], **flatten_extras(update["extras"])})
                result.metrics.update(protocol.train_metrics(update))
            else:
                global_params = to_device(protocol.decode_tensors(task.tensors, self.layout), self.device)
                for split in EVAL_SPLITS:
                    result.metrics.update(protocol.eval_metrics(split, self._evaluate(client, global_params, split)))

    def _evaluate(self, client: int, global_params: dict[str, torch.Tensor], split: str) -> dict[str, Any]:
        """As SequentialBackend.evaluate does for this one client."""
        b = self.backend
        b.download(client, global_params)
        with b.visiting([client]):
            return b.trainer.evaluate(*self.data.splits[split].client(client), split=split, client_id=client,
                                      client_states=b.client_states(client), global_params=global_params,
                                      trainer=b.trainer)

    # -- the client's own checkpoints ----------------------------------------------------------------
    def _state_file(self, client: int, round_num: int) -> Path:
        return self.state_dir / f"client_{client}_round_{round_num}.safetensors"

    def _save_state(self, client: int, round_num: int) -> None:
        if self.state_dir is None:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        kept, states = self.backend.export_client_state()
        tree = client_state_tree({c: v for c, v in kept.items() if c == client},
                                 {c: v for c, v in states.items() if c == client})
        checkpoint.save(self._state_file(client, round_num), checkpoint.flatten(tree), {"round": round_num})
        rounds = sorted(int(p.stem.rsplit("_", 1)[1]) for p in self.state_dir.glob(f"client_{client}_round_*.safetensors"))
        for old in rounds[:-KEEP_CHECKPOINTS]:
            self._state_file(client, old).unlink(missing_ok=True)

    def _load_state(self, client: int, round_num: int) -> None:
        path = self._state_file(client, round_num) if self.state_dir else None
        if path is None or not path.is_file():
            logger.warning("client %d: no checkpoint of round %d%s; starting without kept state", client, round_num,
                           f" in {self.state_dir}" if self.state_dir else " (distribute.state_dir is empty)")
            return
        tensors, _ = checkpoint.load(path)
        kept, states = split_client_state_tree(checkpoint.unflatten(tensors, ""))
        with self.lock:
            old_kept, old_states = self.backend.export_client_state()
            self.backend.import_client_state({**old_kept, **kept}, {**old_states, **states})
        logger.info("client %d: state of round %d loaded", client, round_num)
