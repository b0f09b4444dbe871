"""`fedplug plan` prints the hooks per trigger point in order and the server pipeline; the text is pinned."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from test_contract_weights import plan_text

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


SERVER_LINES = {  # a plug-in's own lines of the server pipeline, with non-default settings where it has them
    "fedopt/sgd": ({"fedopt.use": True, "fedopt.optimizer.lr": 0.5, "fedopt.optimizer.momentum": 0.9}, [
        "  update             global <- SGD(lr 0.5, momentum 0.9) step on delta = aggregate - global [fedopt]"]),
    "fedopt/adam": ({"fedopt.use": True, "fedopt.optimizer.type": "Adam", "fedopt.optimizer.lr": 0.03,
                     "fedopt.optimizer.betas": [0.8, 0.95], "fedopt.optimizer.eps": 0.01}, [
        "  update             global <- Adam(lr 0.03, betas [0.8, 0.95], eps 0.01) step on delta = aggregate - global "
        "[fedopt]"]),
    "scaffold": ({"scaffold.use": True}, [
        "  receive            c <- c + (1/N) * sum of the clients' delta c_i (sent: c down, delta c_i up) [scaffold]"]),
    "fednova": ({"fednova.use": True, "train.optimizer.momentum": 0.5}, [
        "  weights            n_i * a_ref / ||a_i||_1 (normalized updates; momentum 0.5, mu 0.0) [fednova]",
        "  transform          new = old + s * (aggregate - old), s = tau_eff * sum(n_i / ||a_i||_1) / sum(n_i) [fednova]"]),
    "feddyn": ({"feddyn.use": True, "feddyn.alpha": 0.1}, [
        "  transform          h <- h - alpha * |received|/N * (aggregate - old); new = aggregate - h / alpha, "
        "alpha = 0.1 [feddyn]"]),
    "fedem": ({"fedem.use": True, "fedem.num_models": 2}, [
        "  components         each of the 2 component models is aggregated separately (per-tensor weighted mean); "
        "mixture weights stay on the clients [fedem]"]),
    "pfedme": ({"pfedme.use": True, "personalization.beta": 0.5}, [
        "  transform          new = (1 - beta) * old + beta * aggregate, beta = 0.5 [pfedme]"]),
    "dp": ({"dp.use": True, "dp.clip": 0.5, "federate.sample_client_num": 5}, [
        "  weights            uniform (1 per client: DP-FedAvg's sensitivity) [dp]",
        "  transform          new = old + (|received| * (aggregate - old) + N(0, (z * clip)^2)) / expected clients, "
        "z = 1, clip 0.5 (after the aggregate, before the update) [dp]"]),
    "krum": ({"aggregator.rule": "krum", "aggregator.byzantine_node_num": 1, "federate.sample_client_num": 10}, [
        "  aggregate          Krum: the upload with the lowest Krum score (aggregator.rule krum, f = 1; uploads held "
        "until the round ends) [krum]"]),
    "median": ({"aggregator.rule": "median", "aggregator.byzantine_node_num": 1}, [
        "  aggregate          coordinate-wise median of the uploads (unweighted) (aggregator.rule median, f = 1; "
        "uploads held until the round ends) [median]"]),
    "trimmedmean": ({"aggregator.rule": "trimmedmean", "aggregator.byzantine_node_num": 1,
                     "aggregator.excluded_ratio": 0.2}, [
        "  aggregate          coordinate-wise trimmed mean: k = max(f, floor(0.2 * n)) values excluded at each end, "
        "the rest averaged by weight (aggregator.rule trimmedmean, f = 1; uploads held until the round ends) "
        "[trimmedmean]"]),
    "bulyan": ({"aggregator.rule": "bulyan", "aggregator.byzantine_node_num": 1, "federate.sample_client_num": 10}, [
        "  aggregate          Bulyan: Krum picks n - 2f uploads one by one; per coordinate, the mean of the n - 4f "
        "closest to their median (aggregator.rule bulyan, f = 1; uploads held until the round ends) [bulyan]"]),
    "centeredclip": ({"aggregator.rule": "centeredclip", "aggregator.byzantine_node_num": 1,
                      "aggregator.clip_tau": 0.5, "aggregator.clip_iters": 2}, [
        "  aggregate          centered clipping: 2 x v <- v + weighted mean of clip_0.5(update - v) from the last "
        "round's v; global + v (aggregator.rule centeredclip, f = 1; uploads held until the round ends) "
        "[centeredclip]"]),
    "normbounding": ({"aggregator.rule": "normbounding", "aggregator.norm_bound": 2.0}, [
        "  aggregate          norm bounding: each update clipped to L2 norm 2.0, then the weighted mean "
        "(aggregator.rule normbounding; uploads held until the round ends) [normbounding]"]),
}


@pytest.mark.parametrize("name", list(SERVER_LINES))
def test_plan_shows_each_server_side_plugins_step_with_its_settings(capsys, name: str) -> None:
    """`fedplug plan` in this process (mutation testing sees what the code under test runs here, not in a child)."""
    keys, expected = SERVER_LINES[name]
    text = plan_text(capsys, *(word for key, value in keys.items() for word in (key, str(value))))
    server = text.split("server (in this order):\n")[1].splitlines()
    owner = name.split("/")[0]
    assert [line for line in server if line.endswith(f"[{owner}]")] == expected
