"""The server's gRPC service: sessions, one current task per client, results checked on arrival.

The round loop (server.py) publishes tasks and collects results; the gRPC threads serve clients.
They meet in `Mailbox`, under one lock. Every handler parses raw bytes itself, so a malformed,
oversized, unauthenticated or unexpected message is refused with a log line and a gRPC status,
and the server goes on serving; an unexpected error in a handler is logged, never fatal.
"""
from __future__ import annotations

import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import grpc

from fedplug.distributed.protocol import PROTOCOL_VERSION, SERVICE, TOKEN_HEADER, Kind, Refused, kind_name, parse, pb
from fedplug.distributed.security import same_token

logger = logging.getLogger("fedplug")
POLL_SECONDS = 5.0  # longest a GetTask call waits before answering NONE


@dataclass
class Collection:
    """What the round loop is waiting for: a kind of result for one round from some clients."""

    kind: int
    round: int
    clients: set[int]
    check: Callable[[int, Any], Any]  # (client, Result) -> what to keep; raises Refused
    received: dict[int, Any] = field(default_factory=dict)


class Mailbox:
    """Sessions, current tasks and received results; every method takes the one lock."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.sessions: dict[int, str] = {}  # client -> its current session
        self.tasks: dict[int, Any] = {}  # client -> its current pb.Task
        self.next_task_id = 1
        self.collection: Collection | None = None
        self.finished = False
        self.said_goodbye: set[int] = set()  # clients told that the run is over

    def publish(self, kind: int, round_num: int, clients: list[int], tensors: bytes, check: Callable) -> None:
        with self.cond:
            self.collection = Collection(kind, round_num, set(clients), check)
            for client in clients:
                self.tasks[client] = pb.Task(task_id=self.next_task_id, kind=kind, round=round_num, tensors=tensors)
                self.next_task_id += 1
            self.cond.notify_all()

    def collect(self, deadline: float, consume: Callable[[int, Any], None] | None = None) -> dict[int, Any]:
        """Wait until every client of the collection answered or the deadline passed; what arrived.

        With `consume`, results are handed to it in client order as soon as all clients before them
        have answered (a streaming mean then holds few uploads at once), the rest at the deadline,
        still in client order and skipping the missing; they are then dropped from the returned dict's
        values (None).
        """
        with self.cond:
            collection = self.collection
            order, cursor = sorted(collection.clients), 0
            while True:
                while consume and cursor < len(order) and order[cursor] in collection.received:
                    consume(order[cursor], collection.received[order[cursor]])
                    collection.received[order[cursor]] = None
                    cursor += 1
                left = deadline - time.monotonic()
                if len(collection.received) == len(collection.clients) or left <= 0:
                    break
                self.cond.wait(left)
            for client in order[cursor:] if consume else ():
                if client in collection.received:
                    consume(client, collection.received[client])
                    collection.received[client] = None
            self.collection = None
            for client in collection.clients:  # a late client must not run a task that is over
                self.tasks.pop(client, None)
            return dict(collection.received)

    def finish(self) -> None:
        with self.cond:
            self.finished = True
            self.cond.notify_all()


class FederationService:
    """The three RPCs of fedplug.v1.Federation, over raw bytes."""

    def __init__(self, token: str, limit: int, join: Callable[[Any, str], Any], mailbox: Mailbox) -> None:
        self.token, self.limit, self.join_check, self.mailbox = token, limit, join, mailbox

    def handler(self) -> grpc.GenericRpcHandler:
        methods = {"Join": self.join, "GetTask": self.get_task, "SendResult": self.send_result}
        return grpc.method_handlers_generic_handler(SERVICE, {
            name: grpc.unary_unary_rpc_method_handler(self._guard(name, fn), request_deserializer=None,
                                                      response_serializer=lambda m: m.SerializeToString())
            for name, fn in methods.items()})

    def _guard(self, name: str, fn: Callable) -> Callable:
        def call(raw: bytes, context: grpc.ServicerContext) -> Any:
            try:
                if not same_token(dict(context.invocation_metadata()).get(TOKEN_HEADER), self.token):
                    raise Refused("UNAUTHENTICATED", "missing or wrong token")
                if len(raw) > self.limit:
                    raise Refused("RESOURCE_EXHAUSTED", f"message of {len(raw)} bytes, over the limit of {self.limit} "
                                                        f"(distribute.max_message_mb)")
                return fn(raw)
            except Refused as refusal:
                logger.warning("refused %s from %s: %s", name, context.peer(), refusal)
                context.abort(getattr(grpc.StatusCode, refusal.code), str(refusal))
            except Exception:  # noqa: BLE001  (a bug in a handler must not take the server down)
                logger.exception("error in %s from %s", name, context.peer())
                context.abort(grpc.StatusCode.INTERNAL, "internal error")

        return call

    def _session(self, session: str, client: int) -> None:
        with self.mailbox.cond:
            owner = {s: c for c, s in self.mailbox.sessions.items()}.get(session)
        if owner is None:
            raise Refused("UNAUTHENTICATED", "unknown session (join first)")
        if owner != client:
            raise Refused("PERMISSION_DENIED", f"session of client {owner} speaks for client {client}")

    def join(self, raw: bytes) -> Any:
        request = parse(pb.JoinRequest, raw)
        if request.protocol_version != PROTOCOL_VERSION:
            raise Refused("FAILED_PRECONDITION", f"protocol version {request.protocol_version}, server speaks "
                                                 f"{PROTOCOL_VERSION}")
        resume_round = self.join_check(request)  # raises Refused: other plan, bad client id or data shape
        session = secrets.token_hex(16)
        with self.mailbox.cond:
            again = request.client_id in self.mailbox.sessions
            self.mailbox.sessions[request.client_id] = session
            self.mailbox.cond.notify_all()
        logger.info("client %d %s", request.client_id, "rejoined" if again else "joined")
        return pb.JoinReply(session=session, resume_round=resume_round)

    def get_task(self, raw: bytes) -> Any:
        request = parse(pb.TaskRequest, raw)
        self._session(request.session, request.client_id)
        box = self.mailbox
        deadline = time.monotonic() + POLL_SECONDS
        with box.cond:
            while True:
                task = box.tasks.get(request.client_id)
                if task is not None and task.task_id > request.after_task:
                    return task
                if box.finished:
                    box.said_goodbye.add(request.client_id)
                    box.cond.notify_all()
                    return pb.Task(task_id=box.next_task_id, kind=Kind.Value("FINISH"))
                if box.sessions.get(request.client_id) != request.session:
                    raise Refused("ABORTED", f"session replaced: another process joined as client {request.client_id}")
                left = deadline - time.monotonic()
                if left <= 0:
                    return pb.Task(kind=Kind.Value("NONE"))
                box.cond.wait(left)

    def send_result(self, raw: bytes) -> Any:
        result = parse(pb.Result, raw)
        self._session(result.session, result.client_id)
        box = self.mailbox
        with box.cond:
            collection, task = box.collection, box.tasks.get(result.client_id)
            if collection is None or result.round != collection.round or result.kind != collection.kind:
                raise Refused("FAILED_PRECONDITION", f"result for round {result.round} "
                                                     f"({kind_name(result.kind)}) is not awaited now")
            if result.client_id not in collection.clients or task is None or task.task_id != result.task_id:
                raise Refused("FAILED_PRECONDITION", f"client {result.client_id} has no task {result.task_id}")
            if result.client_id in collection.received:
                raise Refused("ALREADY_EXISTS", f"client {result.client_id} already sent this result")
        kept = collection.check(result.client_id, result)  # decoding outside the lock; raises Refused
        with box.cond:
            if box.collection is not collection:
                raise Refused("FAILED_PRECONDITION", f"result of client {result.client_id} came after the deadline")
            collection.received.setdefault(result.client_id, kept)
            box.cond.notify_all()
        return pb.Ack(detail="accepted")
