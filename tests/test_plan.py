"""`fedplug plan` prints the hooks per trigger point in order; the text is pinned."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

EXPECTED = """\
plan: FedAvg (plug-ins: none)
client train routine:
  on_fit_start       _hook_on_fit_start_init [core]
  on_epoch_start     _hook_on_epoch_start_shuffle [core]
  on_batch_start     _hook_on_batch_start_gather [core]
  on_batch_forward   _hook_on_batch_forward [core]
  on_batch_backward  _hook_on_batch_backward [core]
  on_batch_end       _hook_on_batch_end [core]
  on_epoch_end       -
  on_fit_end         _hook_on_fit_end [core]
client eval routine:
  on_fit_start       _hook_on_fit_start_eval_init [core]
  on_epoch_start     -
  on_batch_start     _hook_on_batch_start_slice [core]
  on_batch_forward   _hook_on_batch_forward [core]
  on_batch_backward  -
  on_batch_end       _hook_on_batch_end [core], _hook_on_batch_end_count_correct [core]
  on_epoch_end       -
  on_fit_end         _hook_on_fit_end_eval [core]
server:
  aggregate          weighted mean of uploaded parameters, weight = samples processed [core]
  update             global <- aggregate [core]
"""


def test_plan_of_the_reference_config() -> None:
    proc = subprocess.run([sys.executable, "-m", "fedplug", "plan", "--cfg", "configs/fedavg_lr_on_synthetic.yaml"],
                          capture_output=True, text=True, cwd=ROOT, check=True)
    assert proc.stdout == EXPECTED
