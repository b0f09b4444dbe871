"""The Ray backend on a two-node cluster on this machine (`ray.cluster_utils.Cluster`, one CPU per node, so one
worker per node): the sequential run's numbers; a node lost mid-round with no room left for its worker stops the run
with one line and a checkpoint, and the run resumed on a replacement node equals the uninterrupted one."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from fedplug.errors import BackendLost
from fedplug.run import checkpoint
from fedplug.run.simulation import run
from test_ray import assert_identical, outputs

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

# serial: Ray's health checks declare a node dead after 1.5 s without an answer, and the lost node's round gives up
# after ray.lost_timeout 2 s; a local cluster also writes Ray's machine-wide /tmp/ray. Run alone (docs/testing.md).
pytestmark = [pytest.mark.slow, pytest.mark.serial]
RAY = {"federate.backend": "ray", "ray.num_workers": 2, "threads": 1, "scaffold.use": True,
       "personalization.local_param": ["bias"], "checkpoint.every": 3, "eval.freq": 1}


@pytest.fixture(scope="module")
def cluster():
    if ray.is_initialized():
        ray.shutdown()
    # A removed node is declared dead after about 1.5 s of failed health checks (Ray's default: about 15 s).
    checks = {"health_check_period_ms": 500, "health_check_failure_threshold": 3}
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                          "_system_config": checks})
    nodes.add_node(num_cpus=1)
    nodes.wait_for_nodes()
    ray.init(address=nodes.address, log_to_driver=False)
    yield nodes
    ray.shutdown()
    nodes.shutdown()


def test_two_nodes_equal_sequential_and_a_lost_node_stops_at_a_checkpoint(cluster, small_cfg, tmp_path: Path,
                                                                          monkeypatch) -> None:
    sequential = outputs(run(small_cfg(**{**RAY, "federate.backend": "sequential"})))
    on_cluster = outputs(run(small_cfg(**RAY, ray__address=cluster.address)))
    assert_identical(on_cluster, sequential)

    # Worker 1 freezes in round 5; its node is then removed: the head's one CPU holds worker 0, no room is left.
    once = tmp_path / "once"
    once.mkdir()
    monkeypatch.setenv("FEDPLUG_FAILPOINT", "ray_worker1_train@5")
    monkeypatch.setenv("FEDPLUG_FAILPOINT_ONCE", str(once))
    second = [n for n in cluster.list_all_nodes() if n is not cluster.head_node][0]

    def remove_node_when_frozen() -> None:
        deadline = time.monotonic() + 120
        while not (once / "ray_worker1_train@5").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        cluster.remove_node(second, allow_graceful=False)

    remover = threading.Thread(target=remove_node_when_frozen, daemon=True)
    remover.start()
    cfg = small_cfg(**RAY, ray__address=cluster.address, ray__lost_timeout=2.0)
    with pytest.raises(BackendLost, match=r"the Ray cluster at .* is gone: .*resume with --resume") as lost:
        run(cfg)
    remover.join(timeout=5)
    assert "\n" not in str(lost.value)
    run_dir = Path(str(lost.value).rsplit("--resume ", 1)[1])
    assert checkpoint.load(run_dir / checkpoint.CHECKPOINT_FILE)[1]["round"] == 4  # the last finished round

    cluster.add_node(num_cpus=1)  # a replacement machine joins
    cluster.wait_for_nodes()
    monkeypatch.delenv("FEDPLUG_FAILPOINT")
    assert_identical(outputs(run(cfg, run_dir, resume=True)), sequential)
