"""The Ray backend on a local Ray (2 CPUs): the sequential run's numbers, bit for bit (inner sequential) or within
1e-6 (inner vectorized, whose two runs agree bit for bit), through plug-ins with client state, extras and a robust
rule, a resume, and a worker SIGKILLed mid-round. A two-node cluster: test_ray_cluster.py."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from fedplug.errors import DataError, UserError
from fedplug.run import checkpoint
from fedplug.run.simulation import run

ray = pytest.importorskip("ray")

# Client state (Ditto's personal model, FedBN's local bias), extras (SCAFFOLD's c), every upload (median).
PLUGINS = {"ditto.use": True, "personalization.local_param": ["bias"], "scaffold.use": True,
           "aggregator.rule": "median", "aggregator.byzantine_node_num": 1}
RAY = {"federate.backend": "ray", "ray.num_workers": 2, "threads": 1}


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    if ray.is_initialized():
        ray.shutdown()
    # `local`: never a cluster another run left in /tmp/ray/ray_current_cluster (None would join it)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def outputs(result: dict) -> dict:
    """Everything a run reports: its result, metrics.jsonl, clients.jsonl and the final checkpoint's tensors."""
    run_dir = Path(result["run_dir"])
    tensors, meta = checkpoint.load(run_dir / checkpoint.CHECKPOINT_FILE)
    return {"result": {k: v for k, v in result.items() if k != "run_dir"},
            "metrics": (run_dir / "metrics.jsonl").read_text(), "clients": (run_dir / "clients.jsonl").read_text(),
            "tensors": tensors, "round": meta["round"]}


def assert_identical(a: dict, b: dict) -> None:
    assert a["result"] == b["result"] and a["metrics"] == b["metrics"] and a["clients"] == b["clients"]
    assert a["round"] == b["round"] and a["tensors"].keys() == b["tensors"].keys()
    for name in a["tensors"]:
        assert torch.equal(a["tensors"][name], b["tensors"][name]), name


def assert_close(a: dict, b: dict, tol: float = 1e-6) -> None:
    """Every reported figure (result, each metrics line, each client's figures) and tensor within `tol`."""
    def walk(x, y, where: str) -> None:
        if isinstance(x, dict):
            assert x.keys() == y.keys(), where
            for k in x:
                walk(x[k], y[k], f"{where}.{k}")
        elif isinstance(x, list):
            assert len(x) == len(y), where
            for i, (u, v) in enumerate(zip(x, y)):
                walk(u, v, f"{where}[{i}]")
        elif isinstance(x, float):
            assert math.isclose(x, y, rel_tol=tol, abs_tol=tol), (where, x, y)
        else:
            assert x == y, (where, x, y)

    walk(a["result"], b["result"], "result")
    for name in ("metrics", "clients"):
        walk([json.loads(line) for line in a[name].splitlines()], [json.loads(line) for line in b[name].splitlines()],
             name)
    for name in a["tensors"]:
        torch.testing.assert_close(a["tensors"][name], b["tensors"][name], rtol=tol, atol=tol)


def test_ray_equals_sequential_with_plugins_and_resumes(small_cfg, rewind) -> None:
    values = {**PLUGINS, "checkpoint.every": 2, "eval.freq": 1}
    sequential = run(small_cfg(**values, threads=1))
    on_ray = run(small_cfg(**values, **RAY))
    assert_identical(outputs(on_ray), outputs(sequential))
    run_dir = Path(on_ray["run_dir"])
    rewind(run_dir, 2)
    resumed = run(small_cfg(**values, **RAY), run_dir, resume=True)
    assert_identical(outputs(resumed), outputs(sequential))


@pytest.mark.slow  # a worker started twice: about 25 s
def test_killed_worker_is_replaced_and_the_round_repeats_exactly(small_cfg, tmp_path: Path, monkeypatch) -> None:
    """Inner vectorized: a run whose worker 0 is SIGKILLed in round 2 (frozen at its failpoint) equals one without
    the kill bit for bit, and both equal the sequential run within 1e-6."""
    values = {**RAY, "ray.inner": "vectorized", "personalization.local_param": ["bias"], "scaffold.use": True}
    sequential = outputs(run(small_cfg(**{**values, "federate.backend": "sequential"})))
    untouched = outputs(run(small_cfg(**values)))
    assert_close(untouched, sequential)
    once = tmp_path / "once"
    once.mkdir()
    monkeypatch.setenv("FEDPLUG_FAILPOINT", "ray_worker0_train@2")  # reaches the workers, not this process
    monkeypatch.setenv("FEDPLUG_FAILPOINT_ONCE", str(once))
    killed: list[int] = []

    def kill_when_frozen() -> None:
        marker = once / "ray_worker0_train@2"
        deadline = time.monotonic() + 120
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if marker.exists():
            pid = int(marker.read_text())
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    killer = threading.Thread(target=kill_when_frozen, daemon=True)
    killer.start()
    again = outputs(run(small_cfg(**values)))
    killer.join(timeout=5)
    assert killed, "worker 0 never reached its failpoint"
    assert_identical(again, untouched)


@pytest.mark.parametrize("backend", ["sequential", "vectorized"])
@pytest.mark.parametrize("local", [[], ["bias"]], ids=["global", "per_client"])
def test_a_block_of_clients_evaluates_as_in_the_whole(small_cfg, backend: str, local: list[str]) -> None:
    """What a worker evaluates (a contiguous block, evaluation.py's `clients`) is the whole evaluation's slice."""
    from fedplug.backends import build_backend
    from fedplug.backends.ray_backend import blocks
    from fedplug.data import build_data
    from fedplug.models import build_model
    from fedplug.run.plan import build_plan

    cfg = small_cfg(federate__backend=backend, personalization__local_param=local, eval__batch_size=50)
    plan, data = build_plan(cfg), build_data(cfg)
    model = build_backend(cfg, build_model(cfg, data.input_shape, plan), plan, data)
    params = {n: t + 0.1 for n, t in model.shared_parameters().items()}
    for split in ("val", "test"):
        whole = model.evaluate(params, split)
        parts = [r for block in blocks(range(data.num_clients), 5) for r in model.evaluate(params, split, block)]
        assert len(parts) == len(whole) and [r[f"{split}_total"] for r in parts] == [r[f"{split}_total"] for r in whole]
        for a, b in zip(parts, whole):
            assert a[f"{split}_correct"] == b[f"{split}_correct"]
            assert math.isclose(a[f"{split}_loss_sum"], b[f"{split}_loss_sum"], rel_tol=1e-6)


def test_a_worker_that_cannot_start_says_why_in_one_line(small_cfg) -> None:
    from fedplug.backends import build_backend
    from fedplug.data import build_data
    from fedplug.models import build_model
    from fedplug.run.plan import build_plan

    def no_data(cfg):  # nested: Ray sends it by value, the workers need not import this module
        raise DataError("this node has no data")

    cfg = small_cfg(**RAY, ray__num_workers=1)
    plan, data = build_plan(cfg), build_data(cfg)
    with pytest.raises(UserError, match=r"^a Ray worker could not start: DataError: this node has no data$"):
        build_backend(cfg, build_model(cfg, data.input_shape, plan), plan, data, no_data)


def test_an_address_nothing_answers_at_is_one_line() -> None:
    from fedplug.backends.ray_backend import check_reachable

    with pytest.raises(UserError, match=r"nothing answers at ray.address 127.0.0.1:1 .*ray start --head"):
        check_reachable("127.0.0.1:1")
    check_reachable("auto")  # left to Ray


def test_empty_address_starts_a_local_ray_whatever_ray_address_says(small_cfg, monkeypatch) -> None:
    """Ray's ray.init() with no address joins RAY_ADDRESS, or the machine's last `ray start` even when it is gone."""
    from fedplug.backends import ray_backend
    from fedplug.data import build_data
    from fedplug.models import build_model
    from fedplug.run.plan import build_plan

    calls: list[dict] = []

    class NotStarted:  # Ray as it is before ray.init: record the call and stop there
        @staticmethod
        def is_initialized() -> bool:
            return False

        @staticmethod
        def init(**kwargs) -> None:
            calls.append(kwargs)
            raise ConnectionError("stopped by the test")

    monkeypatch.setattr(ray_backend, "import_ray", lambda: NotStarted)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    for address, joins in (("", "local"), ("auto", "auto")):
        cfg = small_cfg(**RAY, ray__address=address)
        plan, data = build_plan(cfg), build_data(cfg)
        with pytest.raises(UserError, match=r"^federate.backend ray: cannot start or join Ray at .*stopped by"):
            ray_backend.RayBackend(cfg, build_model(cfg, data.input_shape, plan), plan, data)
        assert calls.pop()["address"] == joins


def test_without_ray_one_line_names_the_extra(small_cfg, monkeypatch) -> None:
    from fedplug.backends.ray_backend import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    with pytest.raises(UserError, match=r"pip install 'fedplug\[ray\]'"):
        import_ray()


def test_other_backends_never_import_ray() -> None:
    code = ("import sys; from fedplug.run import simulation; from fedplug import cli; from fedplug.backends import "
            "build_backend; assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
