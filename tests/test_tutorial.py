"""The tutorial's out-of-tree FedProx (examples/my_fedprox.py) equals the built-in one."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMALL_ARGS = ["data.synthetic.num_clients=12", "data.synthetic.val_size=200", "data.synthetic.test_size=200",
              "federate.total_round_num=6", "federate.sample_client_rate=0.5", "train.local_update_steps=5",
              "dataloader.batch_size=16", "eval.freq=2", "early_stop.patience=0"]


def fedplug(tmp_path: Path, data_root: Path, *args: str) -> dict:
    """Run the CLI from a folder outside the package; return its final JSON line."""
    proc = subprocess.run([sys.executable, "-m", "fedplug", "--cfg", str(ROOT / "configs" / "fedavg_lr_on_synthetic.yaml"),
                           *SMALL_ARGS, f"data.root={data_root}", f"outdir={tmp_path}", *args],
                          capture_output=True, text=True, cwd=tmp_path, check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {k: v for k, v in result.items() if k not in ("run_dir", "method")}


def test_out_of_tree_fedprox_equals_builtin(tmp_path: Path, data_root: Path) -> None:
    ours = fedplug(tmp_path, data_root, "plugins", str(ROOT / "examples" / "my_fedprox.py"),
                   "my_fedprox.use", "True", "my_fedprox.mu", "0.1")
    builtin = fedplug(tmp_path, data_root, "fedprox.use", "True", "fedprox.mu", "0.1")
    plain = fedplug(tmp_path, data_root)
    assert ours == builtin
    assert ours != plain  # mu 0.1 does change training, so the equality above means something


def test_out_of_tree_plugin_appears_in_the_plan(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "fedplug", "plan", "--cfg",
                           str(ROOT / "configs" / "fedavg_lr_on_synthetic.yaml"), "plugins",
                           str(ROOT / "examples" / "my_fedprox.py"), "my_fedprox.use", "True"],
                          capture_output=True, text=True, cwd=tmp_path, check=True)
    assert "_hook_on_batch_forward [core], _hook_on_batch_forward_my_proximal_term [my_fedprox]" in proc.stdout
    assert "_hook_on_fit_start_init [core], _hook_on_fit_start_init_my_fedprox [my_fedprox]" in proc.stdout
