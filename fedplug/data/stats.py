"""`fedplug data stats NAME`: the shape of a federated data set as one JSON object."""
from __future__ import annotations

from typing import Any

import numpy as np

from fedplug.data.federated import FederatedData


def data_stats(data: FederatedData) -> dict[str, Any]:
    """Clients, samples, samples per client (mean, std over clients, all splits together), per-split
    totals, and the bytes the data hold in RAM."""
    per_client = np.sum([split.sizes() for split in data.splits.values()], axis=0)
    return {
        "data": data.name,
        "clients": data.num_clients,
        "samples": int(per_client.sum()),
        "samples_per_client_mean": round(float(per_client.mean()), 2),
        "samples_per_client_std": round(float(per_client.std()), 2),
        "samples_per_client_min": int(per_client.min()),
        "samples_per_client_max": int(per_client.max()),
        "splits": {name: len(split.y) for name, split in data.splits.items()},
        "classes": data.num_classes,
        "input_shape": list(data.input_shape),
        "bytes_in_ram": data.bytes_in_ram(),
    }
