"""A fuzz test of the wire: a real `fedplug server` serving a run is fed random and mutated messages, refuses
each one with a log line, and still finishes with the standalone run's final JSON line, bit for bit.

Clients 0-2 are a `fedplug client` process; client 3 is this test's own ClientProcess, whose every result is
preceded by a seeded batch of bad messages derived from it (random bytes, bit flips, a wrong token, session,
client id, task, kind or round, garbled or oversized safetensors, wrong tensor names/shapes/dtypes, NaN/Inf,
bad metrics, bad joins and polls) and followed by a duplicate of it. Bounded: at most MAX_MESSAGES messages or
MAX_SECONDS of fuzzing. At seed 0 it sends 300 messages; each is refused (a gRPC error at the sender, one
`refused` line in the server's log), none crashed the server, and the run's figures are unchanged (about
13 s on 2 cores). It found two bugs, fixed: a result of a kind number no kind has was an internal error, not
a refusal; a refused join could still set the federation's client count.
"""
from __future__ import annotations

import random
import re
import struct
import time
from pathlib import Path
from typing import Any, Callable

import grpc
import torch

from fedplug.config import dump_config, load_config
from fedplug.distributed.client import ClientProcess
from fedplug.distributed.protocol import PROTOCOL_VERSION, SERVICE, TOKEN_HEADER, Kind, encode_tensors, pb
from fedplug.run.simulation import run
from fedplug_procs import PATIENT, Proc, fedplug_cmd, free_port, without_run_dir

TOKEN = "fuzz-token"
SEED = 0
MAX_MESSAGES = 300
MAX_SECONDS = 20.0
PER_RESULT = 49  # bad messages before each of client 3's 6 results (4 TRAIN, 2 EVALUATE), and a duplicate after: 300
LIMIT_MB = 0.05  # distribute.max_message_mb: an oversized message stays small
Mutation = Callable[[random.Random, Any], tuple[str, bytes, str]]  # (rng, valid Result) -> (method, raw, token)


def _load(raw: bytes) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    return load(raw)


def _result(valid: Any, **fields: Any) -> Any:
    out = pb.Result()
    out.CopyFrom(valid)
    for name, value in fields.items():
        if name == "metrics":
            out.ClearField("metrics")
            out.metrics.update(value)
        else:
            setattr(out, name, value)
    return out


def _send(valid: Any, **fields: Any) -> tuple[str, bytes, str]:
    return "SendResult", _result(valid, **fields).SerializeToString(), TOKEN


def _tensors(rng: random.Random, valid: Any, change: Callable[[random.Random, dict], None]) -> tuple[str, bytes, str]:
    tensors = _load(valid.tensors)
    change(rng, tensors)
    return _send(valid, tensors=encode_tensors(tensors))


def _pick(rng: random.Random, tensors: dict) -> str:
    return rng.choice(sorted(tensors))


def _nonfinite(rng: random.Random, tensors: dict) -> None:
    name = _pick(rng, tensors)
    flat = tensors[name].clone().reshape(-1)
    flat[rng.randrange(flat.numel())] = rng.choice([float("nan"), float("inf"), float("-inf")])
    tensors[name] = flat.reshape(tensors[name].shape)


def _rename(rng: random.Random, tensors: dict) -> None:
    tensors[_pick(rng, tensors) + rng.choice(["_", ".x", "/extra"])] = tensors.pop(_pick(rng, tensors))


def _drop_or_add(rng: random.Random, tensors: dict) -> None:
    if rng.random() < 0.5:
        tensors.pop(_pick(rng, tensors))
    else:
        tensors["scaffold/c"] = torch.zeros(3)


def _reshape(rng: random.Random, tensors: dict) -> None:
    name = _pick(rng, tensors)
    t = tensors[name]
    tensors[name] = rng.choice([t.unsqueeze(0), torch.cat([t.reshape(-1), t.reshape(-1)])[:t.numel() + 1]])


def _retype(rng: random.Random, tensors: dict) -> None:
    name = _pick(rng, tensors)
    tensors[name] = tensors[name].to(rng.choice([torch.float64, torch.float16, torch.bfloat16, torch.int32]))


def _garbled_payload(rng: random.Random, valid: Any) -> tuple[str, bytes, str]:
    raw = valid.tensors
    header = (b'{"w":{"dtype":"F32","shape":[1099511627776],"data_offsets":[0,4398046511104]}}')
    payload = rng.choice([
        raw[:rng.randrange(len(raw))],  # truncated
        bytes(b ^ 0xFF if rng.random() < 0.2 else b for b in raw[:64]) + raw[64:],  # header garbled
        struct.pack("<Q", 2 ** 62) + b"{}",  # a header of 4 EiB declared
        struct.pack("<Q", len(header)) + header,  # a 4 TiB tensor declared over no data
        rng.randbytes(rng.randrange(1, 200)),
    ])
    return _send(valid, tensors=payload)


def _metrics(rng: random.Random, valid: Any) -> tuple[str, bytes, str]:
    metrics = dict(valid.metrics)
    name = rng.choice(sorted(metrics))
    how = rng.randrange(4)
    if how == 0:
        metrics.pop(name)
    elif how == 1:
        metrics["bonus"] = 1.0
    elif how == 2:
        metrics[name] = rng.choice([float("nan"), float("inf"), float("-inf")])
    else:  # a count that is not one (every result's metrics hold at least one count)
        name = rng.choice([n for n in sorted(metrics) if n.endswith(("_total", "_correct", "_steps"))])
        metrics[name] = rng.choice([-1.0, 0.5, -1e300])
    return _send(valid, metrics=metrics)


def _envelope(rng: random.Random, valid: Any) -> tuple[str, bytes, str]:
    """Right session and payload, wrong everything else: another client, task, kind or round."""
    field = rng.choice(["client_id", "task_id", "kind", "round"])
    choices = {"client_id": [c for c in (0, 1, 2, -1, 4, 2 ** 62)],
               "task_id": [valid.task_id + 1, valid.task_id - 1, 0, -5, 2 ** 62],
               "kind": [k for k in (0, 1, 2, 3, 4, 99) if k != valid.kind],
               "round": [valid.round + 1, valid.round - 1, 0, -1, 2 ** 62]}
    return _send(valid, **{field: rng.choice(choices[field])})


def _wrong_token(rng: random.Random, valid: Any) -> tuple[str, bytes, str]:
    return rng.choice(["SendResult", "GetTask", "Join"]), valid.SerializeToString(), rng.choice(["", "x", TOKEN + "x"])


def _unknown_session(rng: random.Random, valid: Any) -> tuple[str, bytes, str]:
    """The valid result with a session never issued, then bit flips or a cut: refused whatever they make of it."""
    raw = bytearray(_result(valid, session=rng.randbytes(16).hex()).SerializeToString())
    for _ in range(rng.randrange(4)):
        raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
    return "SendResult", bytes(raw[:rng.randrange(len(raw) // 2, len(raw) + 1)]), TOKEN


def _random_bytes(rng: random.Random, valid: Any) -> tuple[str, bytes, str]:
    raw = rng.choice([rng.randbytes(rng.randrange(0, 300)), b"\x32\xff\xff\xff\xff\x0f",  # a field of 4 GiB declared
                      b"\x0a\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01"])  # a varint longer than 64 bits
    return rng.choice(["SendResult", "GetTask", "Join"]), raw, TOKEN


def _oversized(rng: random.Random, valid: Any) -> tuple[str, bytes, str]:
    return _send(valid, tensors=valid.tensors + bytes(int(LIMIT_MB * 1024 * 1024 * rng.uniform(1.0, 1.5))))


def _join(fingerprint: str) -> Mutation:
    def mutate(rng: random.Random, valid: Any) -> tuple[str, bytes, str]:
        good = dict(protocol_version=PROTOCOL_VERSION, fingerprint=fingerprint, client_id=valid.client_id,
                    input_shape=[150], num_classes=2, num_clients=4)
        bad = rng.choice([{"protocol_version": rng.choice([0, 1, 3, 2 ** 31])},
                          {"fingerprint": rng.choice(["", fingerprint[:-1] + "0", "x" * 10_000])},
                          {"client_id": rng.choice([-1, 4, 2 ** 62]), "num_clients": rng.choice([0, 4, 10 ** 9])},
                          {"input_shape": rng.choice([[], [151], [150, 1], [2 ** 40]])},
                          {"num_classes": rng.choice([0, 3, -2])}])
        return "Join", pb.JoinRequest(**{**good, **bad}).SerializeToString(), TOKEN

    return mutate


def _poll(rng: random.Random, valid: Any) -> tuple[str, bytes, str]:
    """Another client's task with this session, or a session never issued."""
    if rng.random() < 0.5:
        request = pb.TaskRequest(session=valid.session, client_id=rng.choice([0, 1, 2, -1, 2 ** 62]))
    else:
        request = pb.TaskRequest(session=rng.randbytes(16).hex(), client_id=valid.client_id)
    return "GetTask", request.SerializeToString(), TOKEN


class Fuzzer:
    """Sends seeded bad messages on a channel of its own; every one must come back as a gRPC error."""

    def __init__(self, port: int, fingerprint: str) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.rng = random.Random(SEED)
        self.common: list[Mutation] = [_wrong_token, _unknown_session, _random_bytes, _envelope, _metrics,
                                       _join(fingerprint), _poll, _oversized]
        self.train_only: list[Mutation] = [  # an EVALUATE result carries no tensors to check
            _garbled_payload, lambda r, v: _tensors(r, v, _nonfinite), lambda r, v: _tensors(r, v, _rename),
            lambda r, v: _tensors(r, v, _drop_or_add), lambda r, v: _tensors(r, v, _reshape),
            lambda r, v: _tensors(r, v, _retype)]
        self.sent: list[str] = []  # method of each message sent
        self.accepted: list[str] = []  # what should have been refused and was not
        self.internal: list[str] = []  # refusals that were a handler's own error
        self.started: float | None = None

    def _room(self) -> bool:
        self.started = self.started or time.monotonic()
        return len(self.sent) < MAX_MESSAGES and time.monotonic() - self.started < MAX_SECONDS

    def send(self, method: str, raw: bytes, token: str) -> None:
        self.sent.append(method)
        stub = self.channel.unary_unary(f"/{SERVICE}/{method}")
        try:
            stub(raw, timeout=30, metadata=((TOKEN_HEADER, token),) if token else ())
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.INTERNAL:
                self.internal.append(f"{method}: {err.details()}")
            return
        self.accepted.append(f"{method} {raw[:80]!r}")

    def before(self, valid: Any) -> None:
        pool = self.common + (self.train_only if valid.kind == Kind.Value("TRAIN") else [])
        for _ in range(PER_RESULT):
            if not self._room():
                return
            self.send(*self.rng.choice(pool)(self.rng, valid))

    def after(self, valid: Any) -> None:
        if self._room():  # the same result again: already received, or its round is over
            self.send("SendResult", valid.SerializeToString(), TOKEN)


class FuzzingClient(ClientProcess):
    """Client 3, honest, but each result it sends comes with the fuzzer's bad messages."""

    fuzzer: Fuzzer

    def _call(self, method: str, request: Any, reply_type: type, timeout: float, wait: bool = False) -> Any:
        if method != "SendResult":
            return super()._call(method, request, reply_type, timeout, wait)
        self.fuzzer.before(request)
        reply = super()._call(method, request, reply_type, timeout, wait)
        self.fuzzer.after(request)
        return reply


def test_fuzzed_server_refuses_every_bad_message_and_finishes_its_run_unchanged(tmp_path: Path, small_cfg,
                                                                               monkeypatch) -> None:
    from fedplug.run.fingerprint import fingerprint
    from fedplug.run.plan import build_plan

    cfg = small_cfg(**{"data.synthetic.num_clients": 4, "federate.sample_client_rate": 1.0, "threads": 1,
                       "federate.total_round_num": 4, "eval.freq": 2, "checkpoint.every": 0,
                       "federate.mode": "distributed", "distribute.server_port": free_port(),
                       "distribute.max_message_mb": LIMIT_MB, **PATIENT})
    path = tmp_path / "cfg.yaml"
    path.write_text(dump_config(cfg))
    cfg = load_config(path)
    expected = run(load_config(path, {"outdir": str(tmp_path / "standalone")}))  # unfuzzed: the standalone run

    server = Proc(fedplug_cmd("server", "--cfg", path), tmp_path, FEDPLUG_TOKEN=TOKEN)
    others = Proc(fedplug_cmd("client", "--cfg", path, "--client-id", "0-2"), tmp_path, FEDPLUG_TOKEN=TOKEN)
    monkeypatch.setenv("FEDPLUG_TOKEN", TOKEN)
    fuzzer = Fuzzer(cfg.distribute.server_port, fingerprint(cfg, build_plan(cfg)))
    client = FuzzingClient(cfg, [3])
    client.fuzzer = fuzzer
    assert client.run() == 0
    code, summary = server.finish()
    assert code == 0, server.log[-3000:]
    assert others.finish()[0] == 0

    assert not fuzzer.accepted and not fuzzer.internal, (fuzzer.accepted, fuzzer.internal)
    assert len(fuzzer.sent) == MAX_MESSAGES  # the message bound, not the time bound, ended the fuzzing
    refusals = re.findall(r"^refused (Join|GetTask|SendResult) from ", server.log, re.MULTILINE)
    assert sorted(refusals) == sorted(fuzzer.sent)  # one log line per bad message
    assert "error in" not in server.log and "Traceback" not in server.log
    assert without_run_dir(summary) == without_run_dir(expected)
