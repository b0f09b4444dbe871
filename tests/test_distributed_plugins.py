"""Distributed mode with the plug-ins whose tensors travel besides the model: `fedplug launch` (server and
clients over gRPC on 127.0.0.1) prints the standalone run's line bit for bit, for SCAFFOLD (c down,
delta c_i up, c_i kept by the client processes) with FedOpt, and for FedNova (scalars up, its own
weights and server step) with FedProx when clients take different step counts."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from fedplug.config import load_config
from fedplug.data import build_data
from fedplug_procs import Proc, fedplug_cmd, without_run_dir
from test_distributed import CONFIG, launch_words, standalone, words_to_dict

SCAFFOLD_FEDOPT = ["scaffold.use", "True", "fedopt.use", "True", "fedopt.optimizer.lr", "0.5"]
FEDNOVA_FEDPROX = ["fednova.use", "True", "fedprox.use", "True", "fedprox.mu", "0.1", "train.batch_or_epoch", "epoch",
                   "train.local_update_steps", "1", "train.optimizer.momentum", "0.5"]


@pytest.mark.parametrize("words, method", [(SCAFFOLD_FEDOPT, "SCAFFOLD+FedOpt"), (FEDNOVA_FEDPROX, "FedProx+FedNova")],
                         ids=["scaffold+fedopt", "fednova+fedprox"])
def test_launch_equals_standalone(tmp_path: Path, data_root: Path, words: list[str], method: str) -> None:
    if "fednova.use" in words:  # one epoch each: the clients' step counts, hence normalizers, differ
        cfg = load_config(CONFIG, {"data.root": str(data_root), **words_to_dict(words)})
        train = build_data(cfg).splits["train"]
        steps = {math.ceil(train.client(i)[0].shape[0] / cfg.dataloader.batch_size) for i in range(8)}
        assert len(steps) > 1, steps
    expected = standalone(tmp_path, data_root, words)
    assert expected["method"] == method
    launch = Proc(fedplug_cmd("launch", "--cfg", CONFIG, *launch_words(tmp_path, data_root), *words), tmp_path)
    code, result = launch.finish()
    assert code == 0, launch.log[-3000:]
    assert without_run_dir(result) == without_run_dir(expected)
