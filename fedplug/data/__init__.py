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


BUILDERS = {"synthetic": _synthetic}


def build_data(cfg: ConfigNode) -> FederatedData:
    data = BUILDERS[cfg.data.type](cfg)
    if cfg.federate.client_num:
        data = data.first_clients(cfg.federate.client_num)
    return data
