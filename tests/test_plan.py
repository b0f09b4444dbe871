"""`fedplug plan` prints the hooks per trigger point in order and the server pipeline; the text is pinned."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

EXPECTED = """\
plan: FedAvg (plug-ins: none)
device: cpu
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
server (in this order):
  weights            samples processed in the local update (aggregator.weighting samples) [core]
  aggregate          streaming weighted mean of uploaded parameters [core]
  update             global <- aggregate [core]
"""


EXPECTED_FEDPROX_FEDOPT_DITTO = """\
plan: FedProx+Ditto+FedOpt (plug-ins: fedprox, ditto, fedopt)
device: cpu
client train routine:
  on_fit_start       _hook_on_fit_start_ditto_personal [ditto], _hook_on_fit_start_init [core]
  on_epoch_start     _hook_on_epoch_start_shuffle [core]
  on_batch_start     _hook_on_batch_start_gather [core]
  on_batch_forward   _hook_on_batch_forward [core], _hook_on_batch_forward_add_proximal_term [fedprox]
  on_batch_backward  _hook_on_batch_backward [core]
  on_batch_end       _hook_on_batch_end [core]
  on_epoch_end       -
  on_fit_end         _hook_on_fit_end [core]
client eval routine:
  on_fit_start       _hook_on_fit_start_ditto_load_personal [ditto], _hook_on_fit_start_eval_init [core]
  on_epoch_start     -
  on_batch_start     _hook_on_batch_start_slice [core]
  on_batch_forward   _hook_on_batch_forward [core]
  on_batch_backward  -
  on_batch_end       _hook_on_batch_end [core], _hook_on_batch_end_count_correct [core]
  on_epoch_end       -
  on_fit_end         _hook_on_fit_end_eval [core]
client ditto personal (10 steps, lr 0.1) routine:
  on_fit_start       _hook_on_fit_start_init [core]
  on_epoch_start     _hook_on_epoch_start_shuffle [core]
  on_batch_start     _hook_on_batch_start_gather [core]
  on_batch_forward   _hook_on_batch_forward [core], _hook_on_batch_forward_ditto_add_personal_term [ditto]
  on_batch_backward  _hook_on_batch_backward [core]
  on_batch_end       _hook_on_batch_end [core]
  on_epoch_end       -
  on_fit_end         _hook_on_fit_end [core]
server (in this order):
  weights            samples processed in the local update (aggregator.weighting samples) [core]
  aggregate          streaming weighted mean of uploaded parameters [core]
  update             global <- SGD(lr 1.0, momentum 0.0) step on delta = aggregate - global [fedopt]
"""


def plan(*overrides: str) -> str:
    return subprocess.run([sys.executable, "-m", "fedplug", "plan", "--cfg", "configs/fedavg_lr_on_synthetic.yaml",
                           "device", "cpu", *overrides], capture_output=True, text=True, cwd=ROOT, check=True).stdout


def test_plan_of_the_reference_config() -> None:
    assert plan() == EXPECTED


def test_plan_of_fedprox_fedopt_ditto() -> None:
    assert plan("fedprox.use", "True", "fedopt.use", "True", "ditto.use", "True") == EXPECTED_FEDPROX_FEDOPT_DITTO


def test_plan_names_fedopts_adaptive_server_optimizer_with_its_settings() -> None:
    text = plan("fedopt.use", "True", "fedopt.optimizer.type", "Adam", "fedopt.optimizer.lr", "0.03",
                "fedopt.optimizer.betas", "[0.8, 0.95]", "fedopt.optimizer.eps", "0.01")
    assert ("  update             global <- Adam(lr 0.03, betas [0.8, 0.95], eps 0.01) step on delta = aggregate - global "
            "[fedopt]") in text.splitlines()
