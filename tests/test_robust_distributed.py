"""Robust aggregation rules in distributed mode: `fedplug launch` (server and clients over gRPC on 127.0.0.1)
prints the standalone run's line bit for bit, for centered clipping (server state across rounds) with FedOpt's
momentum, and for Multi-Krum (a selection: SCAFFOLD's extras reduced over the kept clients) with SCAFFOLD."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import cli_call
from fedplug_procs import Proc, fedplug_cmd, without_run_dir
from test_distributed import CONFIG, launch_words, standalone

# 8 clients, 4 sampled per round; every sampled result is awaited (a rule is checked against the fewest a round
# may aggregate, federate.min_received_num)
CENTERED_FEDOPT = ["aggregator.rule", "centeredclip", "aggregator.byzantine_node_num", "1", "aggregator.clip_tau",
                   "0.1", "federate.min_received_num", "4", "fedopt.use", "True", "fedopt.optimizer.lr", "0.5",
                   "fedopt.optimizer.momentum", "0.5"]
MULTIKRUM_SCAFFOLD = ["aggregator.rule", "multikrum", "aggregator.krum_agg_num", "2", "federate.min_received_num", "4",
                      "scaffold.use", "True"]


@pytest.mark.parametrize("words, method", [(CENTERED_FEDOPT, "FedOpt+CenteredClip"),
                                           (MULTIKRUM_SCAFFOLD, "SCAFFOLD+Multi-Krum")],
                         ids=["centeredclip+fedopt", "multikrum+scaffold"])
def test_launch_equals_standalone(tmp_path: Path, data_root: Path, words: list[str], method: str) -> None:
    expected = standalone(tmp_path, data_root, words)
    assert expected["method"] == method
    launch = Proc(fedplug_cmd("launch", "--cfg", CONFIG, *launch_words(tmp_path, data_root), *words), tmp_path)
    code, result = launch.finish()
    assert code == 0, launch.log[-3000:]
    assert without_run_dir(result) == without_run_dir(expected)


def test_launch_refuses_too_few_results_per_round_at_start_up(tmp_path: Path, data_root: Path, capsys) -> None:
    """The config's federate.min_received_num 2 lets a round aggregate 2 uploads: too few for Krum with f = 0.
    `fedplug launch` in this process: the refusal comes before any process starts."""
    code, _, err = cli_call(capsys, "launch", "--cfg", str(CONFIG), *map(str, launch_words(tmp_path, data_root)),
                            "aggregator.rule", "krum")
    assert code == 2
    assert err == ("fedplug: error: aggregator.rule krum cannot aggregate a distributed round of "
                   "federate.min_received_num 2 uploads: Krum needs more than 2f + 2 = 2 uploads "
                   "(f = aggregator.byzantine_node_num 0)\n")
