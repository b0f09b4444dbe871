"""One root seed, many independent generators.

Each stream is named by a path of integers (the stream, the round, the client), hashed with
NumPy's SeedSequence. So a client's shuffling in round r depends on (seed, r, client) only, not on
which other clients were sampled or in which order they ran: runs repeat bit for bit, and a
resumed or distributed run draws the same numbers as a standalone one.
"""
from __future__ import annotations

import numpy as np
import torch

MODEL_INIT = 0
CLIENT_SAMPLING = 1
CLIENT_TRAINING = 2
ATTACKERS = 3  # the fixed set of attacking clients, drawn once per run
ATTACK_NOISE = 4  # an attacker's noise in round r (seed, ATTACK_NOISE, r, client)
DP_NOISE = 5  # the server's Gaussian noise of DP-FedAvg, per round


def derive_seed(root: int, *path: int) -> int:
    """A 63-bit seed for the stream `path` under `root`."""
    state = np.random.SeedSequence([root, *path]).generate_state(1, dtype=np.uint64)[0]
    return int(state >> np.uint64(1))


def generator(root: int, *path: int) -> torch.Generator:
    """A CPU torch generator for the stream `path` under `root`."""
    return torch.Generator().manual_seed(derive_seed(root, *path))
