"""Nothing silently wrong, nothing lost: damaged caches, checkpoints and run folders are noticed."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from fedplug.run.simulation import run


def without_run_dir(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "run_dir"}


def test_run_on_a_damaged_synthetic_cache_equals_a_clean_run(small_cfg, tmp_path: Path, caplog) -> None:
    root = tmp_path / "cache"  # a cache of this test's own: it is damaged below
    clean = run(small_cfg(**{"data.root": str(root)}))
    [val_x] = root.glob("synthetic-*/val_x.npy")
    with open(val_x, "r+b") as f:
        f.seek(val_x.stat().st_size - 64)
        f.write(np.random.default_rng(1).bytes(64))
    with caplog.at_level(logging.WARNING, logger="fedplug"):
        again = run(small_cfg(**{"data.root": str(root)}))
    assert without_run_dir(again) == without_run_dir(clean)
    log = (Path(again["run_dir"]) / "run.log").read_text()
    assert "val_x.npy" in log and "regenerating" in log
