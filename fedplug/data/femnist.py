"""FEMNIST from LEAF: download json shards, subsample by shard, split each writer 60/20/20.

A LEAF shard is `{"users": [...], "num_samples": [...], "user_data": {user: {"x": [[784
floats], ...], "y": [labels 0..61]}}}` with pixels in [0, 1] (white background = 1.0).
The reference protocol keeps a seeded 5% of the shards, splits every writer's samples
60/20/20 at random into train/val/test and normalizes with mean 0.9637, std 0.1592.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from fedplug.data.download import download, sha256_of
from fedplug.data.federated import FederatedData, SplitData
from fedplug.errors import DataError

PIXELS = 784
NUM_CLASSES = 62
MEAN = 0.9637
STD = 0.1592
SPLITS = ("train", "val", "test")
CACHE_VERSION = 1

Writer = tuple[str, np.ndarray, np.ndarray]


def _read_shard(path: Path) -> list[Writer]:
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"FEMNIST shard {path} is not readable json: {e}") from e
    if not isinstance(doc, dict) or "users" not in doc or "user_data" not in doc:
        raise DataError(f"FEMNIST shard {path} lacks the LEAF keys 'users' and 'user_data'")
    users, user_data = doc["users"], doc["user_data"]
    if not isinstance(users, list) or not isinstance(user_data, dict):
        raise DataError(f"FEMNIST shard {path}: 'users' must be a list and 'user_data' a mapping")
    out: list[Writer] = []
    for user in users:
        entry = user_data.get(user)
        if not isinstance(entry, dict) or "x" not in entry or "y" not in entry:
            raise DataError(f"FEMNIST shard {path}: writer {user!r} has no 'x'/'y' in 'user_data'")
        try:
            x = np.asarray(entry["x"], dtype=np.float32)
            y = np.asarray(entry["y"], dtype=np.int64)
        except (TypeError, ValueError) as e:
            raise DataError(f"FEMNIST shard {path}: writer {user!r} has non-numeric or ragged data ({e})") from e
        if x.size == 0:
            x = x.reshape(0, PIXELS)
        if x.ndim != 2 or x.shape[1] != PIXELS:
            raise DataError(f"FEMNIST shard {path}: writer {user!r} has rows of shape {x.shape[1:]}, "
                            f"expected {PIXELS} pixels per row")
        if y.ndim != 1 or len(y) != len(x):
            raise DataError(f"FEMNIST shard {path}: writer {user!r} has {len(x)} images but {y.size} labels")
        if len(y) and (y.min() < 0 or y.max() >= NUM_CLASSES):
            raise DataError(f"FEMNIST shard {path}: writer {user!r} has labels outside 0..{NUM_CLASSES - 1}")
        out.append((str(user), x, y))
    return out


def load_leaf_shards(paths: list[Path]) -> list[Writer]:
    """(writer, x float32 (n, 784), y int64 (n,)) per writer: shard order, then each json's user order."""
    writers: list[Writer] = []
    for p in paths:
        writers.extend(_read_shard(Path(p)))
    return writers


def subsample_shards(paths: list[Path], fraction: float, rng: np.random.Generator) -> list[Path]:
    """A seeded choice of ceil(fraction * len(paths)) shards, kept in their given order."""
    if not 0.0 < fraction <= 1.0:
        raise DataError(f"FEMNIST shard fraction must be in (0, 1], got {fraction}")
    paths = list(paths)
    k = min(len(paths), math.ceil(fraction * len(paths) - 1e-9))
    chosen = np.sort(rng.choice(len(paths), size=k, replace=False))
    return [paths[i] for i in chosen]


def split_writers(writers: list[Writer], rng: np.random.Generator,
                  fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)) -> dict[str, SplitData]:
    """Split each writer's rows at random into train/val/test; normalize; concatenate per split.

    Writer c owns rows offsets[c]:offsets[c + 1] of every split. Boundaries are
    floor(f_train * n) and floor((f_train + f_val) * n); the rest goes to test.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise DataError(f"FEMNIST split fractions must be three non-negative numbers summing to 1, got {fractions}")
    parts: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {s: ([], []) for s in SPLITS}
    for _, x, y in writers:
        n = len(y)
        perm = rng.permutation(n)
        b1 = math.floor(fractions[0] * n + 1e-9)
        b2 = math.floor((fractions[0] + fractions[1]) * n + 1e-9)
        for name, idx in zip(SPLITS, (perm[:b1], perm[b1:b2], perm[b2:])):
            parts[name][0].append(x[idx])
            parts[name][1].append(y[idx])
    out: dict[str, SplitData] = {}
    for name, (xs, ys) in parts.items():
        sizes = [len(a) for a in ys]
        offsets = tuple(int(o) for o in np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]))
        x = np.concatenate(xs) if xs else np.zeros((0, PIXELS), np.float32)
        y = np.concatenate(ys) if ys else np.zeros((0,), np.int64)
        x = ((x - np.float32(MEAN)) / np.float32(STD)).astype(np.float32, copy=False)
        out[name] = SplitData(torch.from_numpy(x), torch.from_numpy(y.astype(np.int64, copy=False)), offsets)
    return out


def fetch_femnist(base_url: str, shard_names: list[str], cache_dir: Path,
                  sha256: dict[str, str] | None = None) -> list[Path]:
    """Download each shard to `cache_dir/femnist/<name>`; return their paths in the given order.

    A freshly downloaded shard that fails its checksum or does not parse as a LEAF shard is
    removed, so the cache never holds a corrupt or half file; a DataError says which one.
    """
    sha256 = sha256 or {}
    if "://" not in base_url:
        return _local_shards(Path(base_url).expanduser(), shard_names, sha256)
    folder = Path(cache_dir) / "femnist"
    paths = []
    for name in shard_names:
        if not name or "/" in name or "\\" in name or name in (".", ".."):
            raise DataError(f"FEMNIST shard name {name!r} must be a plain file name")
        dest = folder / name
        fresh = not dest.exists()
        url = base_url.rstrip("/") + "/" + name
        download(url, dest, sha256.get(name))
        if fresh:
            try:
                _read_shard(dest)
            except DataError as e:
                dest.unlink(missing_ok=True)
                raise DataError(f"downloaded FEMNIST shard from {url} is corrupt and was removed: {e}") from e
        paths.append(dest)
    return paths


def _local_shards(folder: Path, shard_names: list[str], sha256: dict[str, str]) -> list[Path]:
    """Shards already on disk (e.g. a LEAF checkout): used in place, checked like downloads."""
    paths = []
    for name in shard_names:
        path = folder / name
        if not path.is_file():
            raise DataError(f"FEMNIST shard {path} does not exist (data.femnist.url is the local folder {folder})")
        if name in sha256 and sha256_of(path) != sha256[name].lower():
            raise DataError(f"FEMNIST shard {path} does not match its sha256 checksum")
        paths.append(path)
    return paths


def read_checksums(path: Path) -> dict[str, str]:
    """{file name: sha256} from a sha256sum-style file ('<64 hex>  <name>' per line)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise DataError(f"cannot read the checksum file {path}: {e}") from e
    sums = {}
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or len(fields[0]) != 64 or any(c not in "0123456789abcdefABCDEF" for c in fields[0]):
            raise DataError(f"{path}, line {number}: expected '<64 hex digits>  <file name>', got {line!r}")
        sums[fields[1].lstrip("*")] = fields[0].lower()
    return sums


def _local_stamp(base_url: str, shard_names: list[str]) -> dict[str, list[int]]:
    """Size and modification time of each shard of a local folder: shards written again (a new
    `fedplug data prepare`) make a new cache entry instead of reusing arrays built from the old ones."""
    if "://" in base_url:
        return {}
    folder = Path(base_url).expanduser()
    stats = {name: (folder / name).stat() for name in shard_names if (folder / name).is_file()}
    return {name: [st.st_size, st.st_mtime_ns] for name, st in stats.items()}


def _cache_key(base_url: str, shard_names: list[str], fraction: float, seed: int,
               fractions: tuple[float, float, float], sha256: dict[str, str] | None) -> str:
    spec = {"version": CACHE_VERSION, "url": base_url, "shards": list(shard_names), "fraction": float(fraction),
            "seed": int(seed), "fractions": [float(f) for f in fractions], "mean": MEAN, "std": STD,
            "sha256": {k: v.lower() for k, v in sorted((sha256 or {}).items())},
            "local": _local_stamp(base_url, shard_names)}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def load_femnist(base_url: str, shard_names: list[str], cache_dir: Path, fraction: float = 0.05,
                 seed: int = 0, sha256: dict[str, str] | None = None,
                 fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)) -> FederatedData:
    """FEMNIST per the reference protocol, with the built arrays cached under a key made of
    everything that shaped them (shard list, checksums, fraction, seed, split fractions).

    Shards are subsampled *before* download, so only the chosen ones are fetched.
    """
    rng = np.random.default_rng(seed)
    chosen = subsample_shards(list(shard_names), fraction, rng)
    built = Path(cache_dir) / "femnist" / "built" / f"{_cache_key(base_url, shard_names, fraction, seed, fractions, sha256)}.npz"
    if built.exists():
        try:
            with np.load(built, allow_pickle=False) as z:
                splits = {s: SplitData(torch.from_numpy(z[f"{s}_x"]), torch.from_numpy(z[f"{s}_y"]),
                                       tuple(int(o) for o in z[f"{s}_offsets"])) for s in SPLITS}
            return FederatedData("femnist", splits, NUM_CLASSES)
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as err:
            # np.savez stores each array with its CRC-32, checked as it is read: damaged bytes end up here.
            logging.getLogger("fedplug.data").warning("untrusted FEMNIST cache %s (%s); rebuilding it", built, err)
            built.unlink(missing_ok=True)
    paths = fetch_femnist(base_url, [str(p) for p in chosen], cache_dir, sha256)
    splits = split_writers(load_leaf_shards(paths), rng, fractions)
    built.parent.mkdir(parents=True, exist_ok=True)
    tmp = built.with_name(built.name + f".{os.getpid()}.tmp")
    arrays = {}
    for s, d in splits.items():
        arrays.update({f"{s}_x": d.x.numpy(), f"{s}_y": d.y.numpy(), f"{s}_offsets": np.asarray(d.offsets, np.int64)})
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, built)
    return FederatedData("femnist", splits, NUM_CLASSES)
