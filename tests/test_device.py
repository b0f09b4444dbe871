"""The `device` key: the same run wherever it trains. Parametrised over the devices this machine has (CPU always;
CUDA and MPS when present, skipped with the reason otherwise): benchmarks/gpu_check.sh runs this file on a GPU."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import cli_call
from fedplug.config import load_config
from fedplug.data.federated import FederatedData, SplitData, TokenWindows
from fedplug.device import deterministic, from_federatedscope, resolve, to_device
from fedplug.errors import ConfigError
from fedplug.run.simulation import run
from test_vectorized import PLUGINS, UNEVEN

HAS_CUDA = torch.cuda.is_available()
HAS_MPS = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
ACCELERATORS = [pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device on this machine")),
                pytest.param("mps", marks=pytest.mark.skipif(not HAS_MPS, reason="no MPS device on this machine"))]
DEVICES = [pytest.param("cpu"), *ACCELERATORS]
FIGURES = ("test_acc", "val_acc", "val_loss", "test_loss", "test_acc_avg")
# CPU vs an accelerator: the same batches, noise and initial model; float32 sums in another order.
ACROSS_DEVICES = dict(rel=1e-4, abs=1e-5)
PERSONAL = {**UNEVEN, **PLUGINS["fedprox+fedopt+ditto"], "personalization__local_param": ["bias"]}


def figures(result: dict) -> dict:
    return {key: result[key] for key in (*FIGURES, "best_round", "rounds_run")}


# -- config ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("given, expected", [
    ({}, "auto"), ({"device": "cuda:1"}, "cuda:1"), ({"device": 0}, "cuda:0"), ({"device": -1}, "cpu"),
    ({"use_gpu": True}, "cuda"), ({"use_gpu": True, "device": 2}, "cuda:2"), ({"use_gpu": False, "device": 2}, "cpu"),
    ({"use_gpu": True, "device": -1}, "cuda"),
])
def test_federatedscope_spellings(given: dict, expected: str) -> None:
    assert load_config(None, given).device == expected
    words = [str(w) for key, value in given.items() for w in (key, value)]
    assert load_config(None, words).device == expected  # the same as CLI words


def test_bad_device_values_are_refused_with_the_choices() -> None:
    with pytest.raises(ConfigError, match="'device' must be auto, cpu, cuda, cuda:N or mps; got 'gpu'"):
        load_config(None, {"device": "gpu"})
    with pytest.raises(ConfigError, match="'use_gpu' expects bool"):
        from_federatedscope(None, "yes")


@pytest.mark.skipif(HAS_CUDA, reason="this machine has CUDA")
def test_cuda_on_a_machine_without_it_is_one_error_line(capsys, small_cfg, tmp_path) -> None:
    outdir = tmp_path / "runs"
    code, out, err = cli_call(capsys, "data.root", small_cfg().data.root, "outdir", str(outdir), "device", "cuda")
    assert code != 0 and out == ""
    assert err.strip().splitlines() == [err.strip()] and err.startswith("fedplug: error: device cuda: this machine "
                                                                        "has no CUDA device")
    assert not outdir.exists() or not any(outdir.iterdir())  # refused before any run folder


def test_auto_resolves_to_an_available_device() -> None:
    expected = "cuda" if HAS_CUDA else "mps" if HAS_MPS else "cpu"
    assert resolve("auto").type == expected and resolve("cpu") == torch.device("cpu")


def test_deterministic_switch_is_restored_after() -> None:
    before = torch.are_deterministic_algorithms_enabled()
    with deterministic(True, torch.device("cpu")):
        assert torch.are_deterministic_algorithms_enabled()
    assert torch.are_deterministic_algorithms_enabled() == before


def test_nested_state_moves_and_token_windows_keep_their_rows() -> None:
    tree = {"a": torch.ones(2), "b": {"c": torch.zeros(1, dtype=torch.int64)}}
    moved = to_device(tree, torch.device("cpu"))
    assert moved["a"] is tree["a"] and moved["b"]["c"] is tree["b"]["c"]  # already there: no copy
    windows = TokenWindows(torch.arange(20, dtype=torch.uint8), torch.tensor([0, 5, 9]), 4)
    data = FederatedData("t", {"train": SplitData(windows, torch.arange(3), (0, 3))}, 3).to(torch.device("cpu"))
    assert torch.equal(data.splits["train"].x[torch.tensor([2, 0])], torch.tensor([[9, 10, 11, 12], [0, 1, 2, 3]]))


# -- runs on each device --------------------------------------------------------------------------------
def test_auto_on_this_machine_is_its_default_device(small_cfg) -> None:
    """`device auto` (the default) gives what naming the device gives, bit for bit."""
    named = "cuda" if HAS_CUDA else "mps" if HAS_MPS else "cpu"
    assert figures(run(small_cfg(**UNEVEN))) == figures(run(small_cfg(**UNEVEN, device=named)))


def on_each_device(cpu: list[str], accelerators: list[str]) -> list:
    """(device, case) parameters: the CPU cases (tests/test_vectorized.py and test_checkpoint.py cover the rest
    there) and every case on each accelerator."""
    return [pytest.param("cpu", case, id=f"cpu-{case}") for case in cpu] + [
        pytest.param(acc.values[0], case, marks=acc.marks, id=f"{acc.values[0]}-{case}")
        for acc in ACCELERATORS for case in accelerators]


@pytest.mark.parametrize("device, name", on_each_device(["fedavg"], ["fedavg", "ditto", "fedem",
                                                                    "scaffold+fedopt+fedbn_epochs_clip"]))
def test_vectorized_equals_sequential_on_the_device(small_cfg, device: str, name: str) -> None:
    over = {**UNEVEN, **PLUGINS[name], "device": device}
    seq, vec = run(small_cfg(**over)), run(small_cfg(**over, federate__backend="vectorized"))
    for key in FIGURES:
        assert seq[key] == pytest.approx(vec[key], rel=1e-5), key
    assert seq["best_round"] == vec["best_round"]


@pytest.mark.parametrize("device, backend", on_each_device(["vectorized"], ["sequential", "vectorized"]))
def test_resume_on_the_device_equals_the_uninterrupted_run(small_cfg, rewind, device: str, backend: str) -> None:
    cfg = small_cfg(**PERSONAL, device=device, federate__backend=backend, checkpoint__every=2)
    whole = run(cfg)
    rewind(Path(whole["run_dir"]), 2)
    resumed = run(cfg, Path(whole["run_dir"]), resume=True)
    assert figures(resumed) == figures(whole)


@pytest.mark.parametrize("device", DEVICES)
def test_client_state_in_host_memory_changes_nothing(small_cfg, device: str) -> None:
    over = {**PERSONAL, "device": device, "federate__backend": "vectorized"}
    host = run(small_cfg(**over, federate__client_state="host"))
    on_device = run(small_cfg(**over, federate__client_state="device"))
    assert figures(host) == figures(on_device)


@pytest.mark.parametrize("device", ACCELERATORS)
@pytest.mark.parametrize("backend", ["sequential", "vectorized"])
def test_data_in_pinned_host_memory_changes_nothing(small_cfg, device: str, backend: str) -> None:
    over = {**PERSONAL, "device": device, "federate__backend": backend}
    assert figures(run(small_cfg(**over, data__placement="host"))) == \
        figures(run(small_cfg(**over, data__placement="device")))


@pytest.mark.parametrize("name", list(PLUGINS))
@pytest.mark.parametrize("device", ACCELERATORS)
def test_every_plugin_on_the_device_agrees_with_cpu(small_cfg, device: str, name: str) -> None:
    over = {**UNEVEN, **PLUGINS[name]}
    on_cpu, on_device = run(small_cfg(**over, device="cpu")), run(small_cfg(**over, device=device))
    for key in FIGURES:
        assert on_device[key] == pytest.approx(on_cpu[key], **ACROSS_DEVICES), key


@pytest.mark.parametrize("device", DEVICES)
def test_robust_rule_dp_and_an_attack_run_on_the_device(small_cfg, device: str) -> None:
    over = {**UNEVEN, "device": device, "aggregator__rule": "median", "aggregator__byzantine_node_num": 1,
            "attack__type": "gaussian", "attack__fraction": 0.2, "dp__use": True, "dp__clip": 1.0,
            "dp__noise_multiplier": 0.1}
    result = run(small_cfg(**over))
    assert result["epsilon"] > 0 and 0 <= result["test_acc"] <= 1
    if device != "cpu":
        on_cpu = run(small_cfg(**{**over, "device": "cpu"}))
        for key in FIGURES:
            assert result[key] == pytest.approx(on_cpu[key], **ACROSS_DEVICES), key


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic_runs_repeat_bit_for_bit(small_cfg, device: str) -> None:
    over = {**PERSONAL, "device": device, "deterministic": True, "federate__backend": "vectorized"}
    first, second = run(small_cfg(**over)), run(small_cfg(**over))
    assert figures(first) == figures(second)


def test_fedplug_plan_says_where_the_run_trains(small_cfg) -> None:
    from fedplug.run.plan import build_plan, describe_plan

    cfg = small_cfg()
    expected = "cuda" if HAS_CUDA else "mps" if HAS_MPS else "cpu"
    assert f"device: {expected} (device auto)" in describe_plan(build_plan(cfg), cfg).splitlines()[1]
    if not HAS_CUDA:
        lacking = small_cfg(device="cuda:1")
        assert "device: cuda:1, which this machine lacks" in describe_plan(build_plan(lacking), lacking)
