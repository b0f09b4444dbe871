"""Splitters: turn a centralized labelled dataset into per-client index arrays.

Two splitters are provided, both seeded only through a ``numpy.random.Generator``
(pass ``np.random.default_rng(seed)``) so that a split is reproducible:

* ``iid_split`` shuffles all sample indices once and cuts the permutation into
  ``num_clients`` contiguous parts whose sizes differ by at most one. Every client
  sees (in expectation) the global label distribution.
* ``dirichlet_split`` is the latent Dirichlet allocation (LDA) protocol common in
  non-IID federated benchmarks: for every class, the class's shuffled indices are
  divided among the clients in proportions drawn from
  ``Dirichlet(alpha * ones(num_clients))``. The whole draw is repeated (at most
  ``max_tries`` times) until every client holds at least ``min_size`` samples.
  ``alpha`` controls label skew: a small ``alpha`` (e.g. 0.1) gives each client
  only a few dominant classes, a large ``alpha`` (e.g. 100) approaches IID.

Both return a list of ``np.ndarray`` of int64 indices, one per client, that
together form a partition of ``range(num_samples)``: every index exactly once.
``to_split_data`` then gathers the rows, in client order, into one contiguous
``SplitData`` (tensors plus offsets); no per-sample Python objects are created.
"""
from __future__ import annotations

import numpy as np
import torch

from fedplug.data.federated import SplitData
from fedplug.errors import DataError


def _check_clients(num_samples: int, num_clients: int) -> None:
    if not isinstance(num_clients, (int, np.integer)) or num_clients < 1:
        raise DataError(f"num_clients must be an integer >= 1, got {num_clients!r}")
    if num_clients > num_samples:
        raise DataError(f"num_clients ({num_clients}) is larger than the number of samples ({num_samples}); "
                        "every client needs at least one sample")


def iid_split(num_samples: int, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A random permutation of ``range(num_samples)`` cut into ``num_clients`` nearly equal parts."""
    if not isinstance(num_samples, (int, np.integer)) or num_samples < 0:
        raise DataError(f"num_samples must be a non-negative integer, got {num_samples!r}")
    _check_clients(num_samples, num_clients)
    perm = rng.permutation(num_samples).astype(np.int64)
    return [part.copy() for part in np.array_split(perm, num_clients)]


def dirichlet_split(labels: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator,
                    min_size: int = 10, max_tries: int = 100) -> list[np.ndarray]:
    """Label-skewed (LDA) split: per class, proportions ~ Dirichlet(alpha * ones(num_clients)).

    Retries the whole draw up to ``max_tries`` times until every client has at least
    ``min_size`` samples; raises ``DataError`` if that never happens.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"labels must be a 1-D integer array, got shape {labels.shape} and dtype {labels.dtype}")
    num_samples = len(labels)
    _check_clients(num_samples, num_clients)
    if not alpha > 0:
        raise DataError(f"alpha must be > 0, got {alpha!r}")
    if min_size < 0:
        raise DataError(f"min_size must be >= 0, got {min_size!r}")
    if max_tries < 1:
        raise DataError(f"max_tries must be >= 1, got {max_tries!r}")

    class_indices = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    below = num_clients
    for _ in range(max_tries):
        buckets: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for idx in class_indices:
            idx = rng.permutation(idx)
            props = rng.dirichlet(np.full(num_clients, float(alpha)))
            cuts = (np.cumsum(props)[:-1] * len(idx)).astype(np.int64)
            for client, chunk in enumerate(np.split(idx, cuts)):
                buckets[client].append(chunk)
        parts = [np.concatenate(b).astype(np.int64) if b else np.empty(0, np.int64) for b in buckets]
        sizes = np.array([len(p) for p in parts])
        below = int((sizes < min_size).sum())
        if below == 0:
            return [rng.permutation(p) for p in parts]
    raise DataError(
        f"dirichlet_split could not give every client at least min_size={min_size} samples in "
        f"{max_tries} tries ({below} of {num_clients} clients were below min_size in the last try, "
        f"with {num_samples} samples and alpha={alpha}); lower min_size, use more data, "
        f"fewer clients or a higher alpha")


def to_split_data(x: torch.Tensor, y: torch.Tensor, parts: list[np.ndarray]) -> SplitData:
    """Gather rows in client order into one contiguous tensor per field, with offsets."""
    if len(x) != len(y):
        raise DataError(f"x has {len(x)} rows but y has {len(y)}")
    sizes = [len(p) for p in parts]
    order = np.concatenate([np.asarray(p, dtype=np.int64) for p in parts]) if parts else np.empty(0, np.int64)
    if len(order) and (order.min() < 0 or order.max() >= len(x)):
        raise DataError(f"parts hold indices outside 0..{len(x) - 1}")
    index = torch.from_numpy(order).to(x.device)
    offsets = tuple(int(o) for o in np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]))
    return SplitData(x[index].contiguous(), y[index.to(y.device)].contiguous(), offsets)
