"""The plug-in contract over the wire, real processes on 127.0.0.1 (issue 10).

- A client whose user plug-in file differs from the server's by one comment line is refused at join,
  and the refusal shows both fingerprints; a client with an identical copy (in another folder) joins,
  and the plug-in's extra tensors travel both ways through a real run.
- A TRAIN result whose plug-in extras are malformed (wrong shape, missing, unexpected, wrong dtype,
  NaN or Inf) is refused with a log line, and the run still finishes. The bad peer is this test,
  speaking raw bytes to a real `fedplug server` (as tests/test_distributed_faults.py does).
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import torch
import yaml

from fedplug.config import dump_config, load_config
from fedplug.core.messages import flatten_extras, like, payload_layout, split_payload
from fedplug.data import build_data
from fedplug.distributed.protocol import (PROTOCOL_VERSION, SERVICE, TOKEN_HEADER, Kind, decode_tensors,
                                          encode_tensors, layout, pb)
from fedplug.run.fingerprint import fingerprint
from fedplug.run.plan import build_plan
from fedplug_procs import PATIENT, Proc, env, fedplug_cmd, free_port

TOKEN = "contract-token-for-tests"


def distributed_cfg(small_cfg, **extra):
    return small_cfg(**{"data.synthetic.num_clients": 2, "federate.sample_client_rate": 1.0, "threads": 1,
                        "federate.total_round_num": 1, "federate.mode": "distributed",
                        "distribute.server_port": free_port(), "checkpoint.every": 0, **PATIENT, **extra})


# -- a client running another version of a user plug-in file ---------------------------------------------

PLUGIN_FILE = '''\
"""A user plug-in: sends the round number down, and back up each client's samples times it."""
import logging

import torch

from fedplug.algorithms.registry import register_algorithm
from fedplug.config import Key, Section, register_section
from fedplug.core.messages import Messages, UpSpec, scalar
from fedplug.core.plugin import Plugin

register_section("ct_remote", Section("a user plug-in", {"use": Key(False, "switch ct_remote on")}))


@register_algorithm
class Remote(Plugin):
    name = "ct_remote"

    def messages(self, shared):
        return Messages(down={"round": scalar()}, up={"seen": UpSpec(scalar(), "sum")})

    def broadcast(self, facts):
        return {"round": torch.tensor(float(facts.round_num) + 0.5, dtype=torch.float64)}

    def client_upload(self, view):
        # VERSION
        return {"seen": view.extras["round"] * view.metrics["train_total"]}

    def receive(self, facts):
        logging.getLogger("fedplug").info("ct_remote received %r", float(facts.extras(self.name)["seen"]))
'''


def samples_processed(size: int, batch: int, steps: int) -> int:
    """Samples in `steps` batches cycling over epochs of a client of `size` rows (the last batch short)."""
    per_epoch = [batch] * (size // batch) + ([size % batch] if size % batch else [])
    return sum(per_epoch[i % len(per_epoch)] for i in range(steps))


def test_a_client_with_another_plugin_file_is_refused_at_join_with_both_fingerprints(tmp_path: Path,
                                                                                    small_cfg) -> None:
    cfg = distributed_cfg(small_cfg)
    tree = yaml.safe_load(dump_config(cfg))
    tree["plugins"], tree["ct_remote"] = ["ct_remote.py"], {"use": True}  # found relative to each process's folder
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(tree, sort_keys=False))
    folders = {}
    for name, version in (("server", "one"), ("other", "two"), ("same", "one")):
        folders[name] = tmp_path / name
        folders[name].mkdir()
        (folders[name] / "ct_remote.py").write_text(PLUGIN_FILE.replace("VERSION", f"version {version}"))
    # The other copy's fingerprint, as its client computes it (in its own process and folder).
    theirs = subprocess.run(
        [sys.executable, "-c", "from fedplug.config import load_config; from fedplug.run.plan import build_plan; "
         "from fedplug.run.fingerprint import fingerprint; "
         f"cfg = load_config({str(cfg_path)!r}); print(fingerprint(cfg, build_plan(cfg)))"],
        cwd=folders["other"], env=env(), capture_output=True, text=True, check=True).stdout.strip()

    procs = []
    try:
        server = Proc(fedplug_cmd("server", "--cfg", cfg_path), folders["server"], FEDPLUG_TOKEN=TOKEN)
        procs.append(server)
        ours = re.search(r"fingerprint ([0-9a-f]{16})$", server.wait_for("server listening").strip()).group(1)
        assert re.fullmatch(r"[0-9a-f]{16}", theirs) and theirs != ours
        other = Proc(fedplug_cmd("client", "--cfg", cfg_path, "--client-id", "0"), folders["other"], FEDPLUG_TOKEN=TOKEN)
        procs.append(other)
        code, _ = other.finish(timeout=120)
        why = (f"plan fingerprint '{theirs}' is not the server's '{ours}': another plan, config, plug-in code or "
               "fedplug version")
        assert code == 2
        assert f"fedplug: error: client 0: FAILED_PRECONDITION: {why}\n" in other.log
        assert why in server.wait_for("refused Join")
        # An identical copy in a third folder joins: only the file's content counts.
        same = Proc(fedplug_cmd("client", "--cfg", cfg_path, "--client-id", "0-1"), folders["same"], FEDPLUG_TOKEN=TOKEN)
        procs.append(same)
        received = server.wait_for("ct_remote received")
        code, summary = server.finish()
        assert code == 0, server.log[-3000:]
        assert summary["rounds_run"] == 1 and summary["method"] == "ct_remote"
        assert same.finish(timeout=60)[0] == 0
    finally:
        for proc in procs:
            proc.kill_group()
    # The extras went down (round 1 -> 1.5) and up (1.5 x samples, summed over both clients).
    sizes = build_data(cfg).splits["train"].sizes()
    expected = sum(1.5 * samples_processed(n, cfg.dataloader.batch_size, cfg.train.local_update_steps) for n in sizes)
    assert received.strip().endswith(f"ct_remote received {expected!r}")
    assert server.log.count("refused") == 1


# -- malformed extras in a TRAIN result --------------------------------------------------------------------

class RawClient:
    """Speaks fedplug.v1 in bytes, so it can send anything."""

    def __init__(self, port: int) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")

    def call(self, method: str, payload: object) -> bytes:
        stub = self.channel.unary_unary(f"/{SERVICE}/{method}")
        return stub(payload.SerializeToString(), timeout=60, metadata=((TOKEN_HEADER, TOKEN),), wait_for_ready=True)

    def refusal(self, method: str, payload: object) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.RpcError) as err:
            self.call(method, payload)
        return err.value.code(), err.value.details()


def test_a_train_result_with_bad_extras_is_refused_and_the_run_finishes(tmp_path: Path, small_cfg) -> None:
    """SCAFFOLD sends one tensor per parameter each way; FedNova sends float64 scalars up."""
    cfg = distributed_cfg(small_cfg, **{"scaffold.use": True, "fednova.use": True})
    path = tmp_path / "cfg.yaml"
    path.write_text(dump_config(cfg))
    cfg = load_config(path)
    server = Proc(fedplug_cmd("server", "--cfg", path), tmp_path, FEDPLUG_TOKEN=TOKEN)
    try:
        server.wait_for("server listening")
        peer = RawClient(cfg.distribute.server_port)
        mine = fingerprint(cfg, build_plan(cfg))
        sessions = {c: pb.JoinReply.FromString(peer.call("Join", pb.JoinRequest(
            protocol_version=PROTOCOL_VERSION, fingerprint=mine, client_id=c, input_shape=[150], num_classes=2,
            num_clients=2))).session for c in (0, 1)}
        tasks = {c: pb.Task.FromString(peer.call("GetTask", pb.TaskRequest(session=sessions[c], client_id=c)))
                 for c in (0, 1)}
        assert {(t.kind, t.round) for t in tasks.values()} == {(Kind.Value("TRAIN"), 1)}
        from safetensors.torch import load

        sent = load(tasks[0].tensors)
        params = {n: t for n, t in sent.items() if "/" not in n}
        assert set(sent) == set(params) | {f"scaffold/{n}" for n in params}  # c went down with the model
        weight, bias = sorted(params, key=lambda n: -params[n].dim())
        honest = {**params, **{f"scaffold/{n}": torch.zeros_like(t) for n, t in params.items()},
                  **{f"fednova/{n}": torch.tensor(v, dtype=torch.float64) for n, v in
                     (("norm", 5.0), ("norm_min", 5.0), ("samples_x_norm", 50.0), ("samples_over_norm", 2.0),
                      ("samples", 10.0))}}

        def result(client: int, tensors: dict) -> pb.Result:
            out = pb.Result(session=sessions[client], client_id=client, task_id=tasks[client].task_id, round=1,
                            kind=Kind.Value("TRAIN"), tensors=encode_tensors(tensors))
            out.metrics.update({"train_total": 10.0, "train_steps": 5.0, "train_loss": 0.5})
            return out

        shape = tuple(params[weight].shape)
        bad = [
            ({**honest, f"scaffold/{weight}": params[weight][:1].clone()},
             f"tensor 'scaffold/{weight}' is torch.float32 {(1, *shape[1:])}, expected torch.float32 {shape}"),
            ({n: t for n, t in honest.items() if n != f"scaffold/{bias}"},
             f"wrong tensor names: missing ['scaffold/{bias}'], unexpected []"),
            ({**honest, "scaffold/extra": torch.ones(1)}, "wrong tensor names: missing [], unexpected ['scaffold/extra']"),
            ({n: t for n, t in honest.items() if not n.startswith("fednova/")},
             "wrong tensor names: missing ['fednova/norm', 'fednova/norm_min', 'fednova/samples']"),
            ({**honest, f"scaffold/{bias}": torch.full_like(params[bias], float("nan"))},
             f"tensor 'scaffold/{bias}' holds NaN or Inf"),
            ({**honest, "fednova/norm": torch.tensor(float("inf"), dtype=torch.float64)},
             "tensor 'fednova/norm' holds NaN or Inf"),
            ({**honest, "fednova/norm": torch.tensor(5.0)},
             "tensor 'fednova/norm' is torch.float32 (), expected torch.float64 ()"),
        ]
        for tensors, reason in bad:
            code, details = peer.refusal("SendResult", result(0, tensors))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith(reason), (details, reason)
            assert "refused SendResult" in server.wait_for(reason)

        # Still serving, still waiting for client 0: the honest results are taken and the run ends normally.
        for client in (0, 1):
            assert pb.Ack.FromString(peer.call("SendResult", result(client, honest))).detail == "accepted"
        for client in (0, 1):
            task = pb.Task(kind=Kind.Value("NONE"))
            while task.kind == Kind.Value("NONE"):  # a long poll may answer "nothing yet"
                task = pb.Task.FromString(peer.call("GetTask", pb.TaskRequest(
                    session=sessions[client], client_id=client, after_task=tasks[client].task_id)))
            assert task.kind == Kind.Value("EVALUATE")
            answer = pb.Result(session=sessions[client], client_id=client, task_id=task.task_id, round=1,
                               kind=Kind.Value("EVALUATE"))
            answer.metrics.update({f"{s}_{m}": v for s in ("val", "test")
                                   for m, v in (("total", 100.0), ("correct", 60.0), ("loss_sum", 65.0))})
            peer.call("SendResult", answer)
        code, summary = server.finish()
    finally:
        server.kill_group()
    assert code == 0, server.log[-3000:]
    assert summary["rounds_run"] == 1 and summary["test_acc"] == pytest.approx(0.6)
    run_log = (Path(summary["run_dir"]) / "run.log").read_text()
    assert run_log.count("fedplug: refused SendResult") == len(bad)  # one line each


# -- extras that share memory with a parameter or with each other (protocol level, in-process) ------------

@pytest.mark.parametrize("extras", ["the model itself", "one tensor twice"])
def test_extras_sharing_memory_travel_like_any_other(extras: str) -> None:
    params = {"fc.weight": torch.randn(2, 3), "fc.bias": torch.randn(2)}
    doubled = params["fc.bias"] * 2
    sent = {"anchor": params["fc.weight"]} if extras == "the model itself" else {"x": doubled, "y": doubled}
    raw = encode_tensors({**params, **flatten_extras({"p": sent})})  # as the server and the clients encode
    got_params, got_extras = split_payload(decode_tensors(raw, payload_layout(layout(params), {"p": like(sent)})))
    assert all(torch.equal(got_params[n], params[n]) for n in params)
    assert all(torch.equal(got_extras["p"][n], sent[n]) for n in sent)
