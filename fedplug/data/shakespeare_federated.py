"""Shakespeare as federated data: clients, subsampling and splits, with windows stored as views.

A client is a token stream (its role's text, encoded) and the start of every window it owns. From
the Gutenberg plays every position gives a window (LEAF's samples: 80 characters in, the next
one out); LEAF's own json files give their windows explicitly, and consecutive ones share text.
All clients' tokens are concatenated once (uint8) and each split holds start indices into them,
so the 4 million samples of the full set cost about 17 bytes each instead of 80 x 8.

Splits: "random" (FederatedScope, the reference) deals each client's windows at random into
train/val/test; "temporal" (LEAF's option) gives the first windows to train, the next to val, the
last to test. A client is kept only if each split gets at least one window.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from fedplug.data.federated import FederatedData, SplitData, TokenWindows
from fedplug.data.shakespeare import VOCAB, build_clients, encode, fetch_texts
from fedplug.errors import DataError

SPLITS = ("train", "val", "test")
Client = tuple[np.ndarray, np.ndarray]  # (tokens uint8, window starts int64 into them)


def gutenberg_clients(cache_dir: Path, min_lines: int = 3, seq_len: int = 80) -> dict[str, Client]:
    """Every (play, role) with at least `min_lines` lines, with all its windows."""
    clients = {}
    for name, text in build_clients(fetch_texts(cache_dir), min_lines).items():
        tokens = encode(text)
        clients[name] = (tokens, np.arange(max(0, len(tokens) - seq_len), dtype=np.int64))
    return clients


def _encode_strict(text: str, where: str) -> np.ndarray:
    tokens = encode(text)
    if len(tokens) != len(text):
        bad = next(c for c in text if c not in VOCAB)
        raise DataError(f"{where}: character {bad!r} is not in the 80-symbol vocabulary")
    return tokens


def _user_windows(xs: list, ys: list, seq_len: int, where: str) -> Client:
    """LEAF's (x, y) pairs as one stream: a window that continues the previous one adds one token."""
    pieces: list[str] = []
    starts: list[int] = []
    length, previous = 0, None
    for x, y in zip(xs, ys):
        if not isinstance(x, str) or not isinstance(y, str) or len(x) != seq_len or len(y) != 1:
            raise DataError(f"{where}: each x must be a string of {seq_len} characters and each y one character")
        if previous is not None and x == previous[1:]:
            starts.append(starts[-1] + 1)
            pieces.append(y)
            length += 1
        else:
            starts.append(length)
            pieces.append(x + y)
            length += seq_len + 1
        previous = x + y
    return _encode_strict("".join(pieces), where), np.asarray(starts, dtype=np.int64)


def read_leaf_dir(folder: Path, seq_len: int = 80) -> dict[str, Client]:
    """Users of every LEAF json file in `folder` (e.g. data/shakespeare/data/all_data), by name."""
    folder = Path(folder)
    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not files:
        raise DataError(f"data.shakespeare.leaf_dir: no LEAF .json files in {folder}")
    samples: dict[str, tuple[list, list]] = {}
    for path in files:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            user_data = doc["user_data"]
            for user in doc["users"]:
                xs, ys = samples.setdefault(str(user), ([], []))
                xs.extend(user_data[user]["x"])
                ys.extend(user_data[user]["y"])
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise DataError(f"{path} is not a LEAF json file ({type(e).__name__}: {e})") from e
    return {user: _user_windows(xs, ys, seq_len, f"{folder}: user {user!r}") for user, (xs, ys) in samples.items()}


def _bounds(n: int, fractions: tuple[float, float, float]) -> tuple[int, int]:
    return math.floor(fractions[0] * n + 1e-9), math.floor((fractions[0] + fractions[1]) * n + 1e-9)


def usable(clients: dict[str, Client], fractions: tuple[float, float, float]) -> list[str]:
    """Clients whose every split gets at least one window."""
    def ok(n: int) -> bool:
        b1, b2 = _bounds(n, fractions)
        return b1 > 0 and b2 > b1 and n > b2
    return [name for name, (_, starts) in clients.items() if ok(len(starts))]


def subsample(names: list[str], fraction: float, rng: np.random.Generator) -> list[str]:
    """A seeded choice of round(fraction * len(names)) names (at least one), in their given order."""
    if fraction >= 1.0:
        return list(names)
    k = max(1, round(fraction * len(names)))
    return [names[i] for i in np.sort(rng.choice(len(names), size=k, replace=False))]


def split_clients(clients: dict[str, Client], names: list[str], fractions: tuple[float, float, float], kind: str,
                  rng: np.random.Generator, seq_len: int = 80) -> dict[str, SplitData]:
    """Train/val/test SplitData over one shared token stream; client c is names[c]."""
    streams, bases, base = [], [], 0
    for name in names:
        streams.append(clients[name][0])
        bases.append(base)
        base += len(clients[name][0])
    tokens = torch.from_numpy(np.concatenate(streams) if streams else np.zeros(0, np.uint8))
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for name, offset in zip(names, bases):
        starts = clients[name][1]
        b1, b2 = _bounds(len(starts), fractions)
        order = np.arange(len(starts)) if kind == "temporal" else rng.permutation(len(starts))
        for split, idx in zip(SPLITS, (order[:b1], order[b1:b2], order[b2:])):
            parts[split].append(offset + starts[np.sort(idx)])
    out = {}
    for split, chunks in parts.items():
        starts = torch.from_numpy(np.concatenate(chunks) if chunks else np.zeros(0, np.int64))
        offsets = tuple(int(o) for o in np.concatenate([[0], np.cumsum([len(c) for c in chunks], dtype=np.int64)]))
        out[split] = SplitData(TokenWindows(tokens, starts, seq_len), tokens[starts + seq_len].long(), offsets)
    return out

