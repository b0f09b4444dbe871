"""Distributed mode, real processes on 127.0.0.1: `fedplug launch` prints the standalone run's line.

The gold standard is equality: the final JSON line of a launched run (server and client processes
over gRPC) is the standalone run's, bit for bit, apart from run_dir; also for a run killed with
SIGKILL (server and clients) and resumed from its checkpoints.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from fedplug.config import load_config
from fedplug.run.simulation import run
from fedplug_procs import PATIENT_WORDS, ROOT, Proc, fedplug_cmd, free_port, without_run_dir

CONFIG = ROOT / "configs" / "distributed_lr_on_synthetic.yaml"
COMBO = ["fedprox.use", "True", "fedprox.mu", "0.1", "fedopt.use", "True", "fedopt.optimizer.type", "Adam",
         "fedopt.optimizer.lr", "0.05", "ditto.use", "True"]


def words_to_dict(words: list[str]) -> dict:
    import yaml

    return {k: yaml.safe_load(v) for k, v in zip(words[::2], words[1::2])}


def standalone(tmp_path: Path, data_root: Path, words: list[str]) -> dict:
    overrides = {"outdir": str(tmp_path / "standalone"), "data.root": str(data_root), **words_to_dict(words)}
    return run(load_config(CONFIG, overrides))


def launch_words(tmp_path: Path, data_root: Path, per_process: int = 8) -> list[str]:
    # Every client id in one process unless a test is about several: each process imports PyTorch (the suite's
    # largest cost); the two tests here that check the prefixed logs and the children ask for 4 each.
    return ["outdir", str(tmp_path / "launched"), "data.root", str(data_root),
            "distribute.clients_per_process", str(per_process), "distribute.server_port", str(free_port()),
            *PATIENT_WORDS]


def test_launch_prints_the_standalone_result(tmp_path: Path, data_root: Path) -> None:
    expected = standalone(tmp_path, data_root, [])
    launch = Proc(fedplug_cmd("launch", "--cfg", CONFIG, *launch_words(tmp_path, data_root, per_process=4)), tmp_path)
    code, result = launch.finish()
    assert code == 0, launch.log[-3000:]
    assert without_run_dir(result) == without_run_dir(expected)
    assert result["rounds_run"] == 20 and result["best_round"] is not None
    assert "[server] client 7 joined" in launch.log and "[clients 4-7]" in launch.log  # prefixed logs
    assert Path(result["run_dir"], "summary.json").is_file()


def test_launch_killed_and_resumed_with_fedprox_fedopt_ditto_equals_standalone(tmp_path: Path,
                                                                               data_root: Path) -> None:
    """The uninterrupted reference is the standalone run (equal to an uninterrupted launch, as above)."""
    expected = standalone(tmp_path, data_root, COMBO)
    words = [*launch_words(tmp_path, data_root), *COMBO]
    first = Proc(fedplug_cmd("launch", "--cfg", CONFIG, *words), tmp_path, FEDPLUG_FAILPOINT="round_end@6")
    first.wait_for("failpoint round_end@6 reached")  # round 6 trained, not yet aggregated; checkpoint at 4
    first.kill_group()  # SIGKILL to launch, the server and every client
    (run_dir,) = (tmp_path / "launched").iterdir()
    assert sorted(p.name for p in (run_dir / "clients").iterdir())[:2] == ["client_0_round_4.safetensors",
                                                                          "client_1_round_4.safetensors"]
    resumed = Proc(fedplug_cmd("launch", "--resume", run_dir, *words), tmp_path)
    code, result = resumed.finish()
    assert code == 0, resumed.log[-3000:]
    assert "resumed from the checkpoint at round 4" in resumed.log
    assert "client 3: state of round 4 loaded" in resumed.log  # Ditto's personal models came back
    assert result["run_dir"] == str(run_dir)
    assert without_run_dir(result) == without_run_dir(expected)
    assert expected["method"] == "FedProx+Ditto+FedOpt"


@pytest.mark.parametrize("words, message", [
    (["--client-id", "x"], "--client-id 'x'"),
    (["--client-id", "9"], "clients 0..7"),
])
def test_client_refuses_bad_ids_in_one_line(data_root: Path, capsys, monkeypatch, words: list[str],
                                            message: str) -> None:
    from fedplug.cli import main

    monkeypatch.setenv("FEDPLUG_TOKEN", "t")
    assert main(["client", "--cfg", str(CONFIG), "data.root", str(data_root), *words]) == 2
    *before, last = capsys.readouterr().err.splitlines()
    assert last.startswith("fedplug: error: ") and message in last
    assert all(line.startswith("Synthetic data: generating") for line in before)  # a cold cache says so first


def children_of(pid: int) -> list[int]:
    """Process ids whose parent is `pid` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc to find the children")
def test_launch_interrupted_stops_every_process_it_started(tmp_path: Path, data_root: Path) -> None:
    import os
    import signal

    # The server freezes after round 2's clients, so the run is still going when Ctrl-C comes.
    launch = Proc(fedplug_cmd("launch", "--cfg", CONFIG, *launch_words(tmp_path, data_root, per_process=4)), tmp_path,
                  FEDPLUG_FAILPOINT="round_end@2")
    launch.wait_for("failpoint round_end@2 reached")
    children = children_of(launch.proc.pid)
    assert len(children) == 3, launch.log[-2000:]  # the server and both client processes
    os.kill(launch.proc.pid, signal.SIGINT)  # Ctrl-C, to launch alone
    code, result = launch.finish()
    assert code == 130 and result is None
    assert not [pid for pid in children if Path(f"/proc/{pid}").exists()]
