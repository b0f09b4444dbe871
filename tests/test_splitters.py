import numpy as np
import pytest
import torch

from fedplug.data.splitters import dirichlet_split, iid_split, to_split_data
from fedplug.errors import DataError

N, K, C = 2000, 10, 10


def _labels(seed=0):
    return np.random.default_rng(seed).integers(0, C, size=N)


def _is_partition(parts, n):
    allidx = np.concatenate(parts)
    return len(allidx) == n and np.array_equal(np.sort(allidx), np.arange(n))


def _same(a, b):
    return len(a) == len(b) and all(np.array_equal(p, q) for p, q in zip(a, b))


@pytest.mark.parametrize("split", [
    lambda rng: iid_split(N, K, rng),
    lambda rng: dirichlet_split(_labels(), K, 0.5, rng),
])
def test_partition_and_seeding(split):
    a, b, c = split(np.random.default_rng(1)), split(np.random.default_rng(1)), split(np.random.default_rng(2))
    assert len(a) == K
    assert _is_partition(a, N)
    assert _same(a, b)
    assert not _same(a, c)


def test_iid_sizes_nearly_equal():
    sizes = [len(p) for p in iid_split(1003, 7, np.random.default_rng(0))]
    assert sum(sizes) == 1003 and max(sizes) - min(sizes) <= 1


def test_dirichlet_min_size_respected():
    parts = dirichlet_split(_labels(), K, 0.1, np.random.default_rng(3), min_size=50)
    assert min(len(p) for p in parts) >= 50


def _skew(parts, labels):
    return np.mean([np.bincount(labels[p], minlength=C).max() / len(p) for p in parts])


def test_small_alpha_more_skew():
    labels = _labels()
    skewed = _skew(dirichlet_split(labels, K, 0.1, np.random.default_rng(4)), labels)
    flat = _skew(dirichlet_split(labels, K, 100.0, np.random.default_rng(4)), labels)
    assert skewed > flat + 0.2


def test_dirichlet_impossible_raises():
    with pytest.raises(DataError, match=r"clients were below min_size.*lower min_size"):
        dirichlet_split(_labels(), K, 0.5, np.random.default_rng(0), min_size=N, max_tries=3)


@pytest.mark.parametrize("call, word", [
    (lambda: iid_split(10, 0, np.random.default_rng(0)), "num_clients"),
    (lambda: iid_split(3, 5, np.random.default_rng(0)), "num_clients"),
    (lambda: dirichlet_split(_labels(), K, 0.0, np.random.default_rng(0)), "alpha"),
    (lambda: dirichlet_split(np.zeros((4, 2), int), 2, 1.0, np.random.default_rng(0)), "labels"),
    (lambda: dirichlet_split(np.zeros(40, float), 2, 1.0, np.random.default_rng(0)), "labels"),
])
def test_bad_arguments(call, word):
    with pytest.raises(DataError, match=word):
        call()


def test_to_split_data():
    x = torch.arange(20 * 3, dtype=torch.float32).reshape(20, 3)
    y = torch.arange(20, dtype=torch.int64)
    parts = iid_split(20, 3, np.random.default_rng(0))
    sd = to_split_data(x, y, parts)
    assert sd.offsets == (0, len(parts[0]), len(parts[0]) + len(parts[1]), 20)
    assert sd.sizes() == [len(p) for p in parts]
    for c, p in enumerate(parts):
        cx, cy = sd.client(c)
        assert torch.equal(cx, x[torch.from_numpy(p)])
        assert torch.equal(cy, y[torch.from_numpy(p)])
