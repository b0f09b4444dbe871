"""The "Synthetic" federated dataset: FedEM's mixture-of-logistic-models generator.

This is the generator of FedEM (Marfoq et al., 2021) as used by the FederatedScope
benchmark. Each client draws Dirichlet mixture weights over a few shared linear
components; every row gets a label from one component's noisy logistic model.

All randomness comes from ONE legacy ``np.random.RandomState(seed)`` stream, consumed in
a fixed order, so the data is reproduced bit for bit. The reference code has a quirk:
when labelling a set, every component writes its labels starting at row 0 (the offset
is never advanced), so later components overwrite earlier ones and rows beyond
``max(counts)`` keep label 0 (overall train positive rate ~0.367). ``corrected=True``
advances the offset so each row is labelled once; it is off by default to match the
published data. Both variants consume the random stream identically (same x).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import shutil
import tempfile
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from fedplug.errors import DataError

logger = logging.getLogger("fedplug.data")

GENERATOR_VERSION = "fedem-synthetic-v1"
SPLITS = ("train", "val", "test")
_ARRAYS = ("x", "y", "offsets")


@dataclass(frozen=True)
class SyntheticParams:
    num_clients: int = 300
    dim: int = 150
    num_components: int = 3
    alpha: float = 0.4
    test_size: int = 5000
    val_size: int = 5000
    seed: int = 12345
    corrected: bool = False


@dataclass
class SplitArrays:
    """All clients of one split, concatenated in client order."""

    x: np.ndarray  # (total_rows, dim) float32, C-contiguous
    y: np.ndarray  # (total_rows,) int64
    offsets: np.ndarray  # (num_clients + 1,) int64; client c owns rows offsets[c]:offsets[c+1]


def _offsets(sizes: list[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)


def generate_synthetic(params: SyntheticParams, progress: Callable[[int], Any] | None = None) -> dict[str, SplitArrays]:
    """Generate train/val/test; keys "train", "val", "test". `progress(1)` after each client (a bar's update)."""
    p = params
    rng = np.random.RandomState(p.seed)
    raw = rng.lognormal(4, 2, p.num_clients).astype(int)
    sizes = {
        "train": [min(int(s) + 50, 1000) for s in raw],
        "test": [p.test_size] * p.num_clients,
        "val": [p.val_size] * p.num_clients,
    }
    weights = [rng.dirichlet(p.alpha * np.ones(p.num_components)) for _ in range(p.num_clients)]
    theta = rng.uniform(-1, 1, size=(p.num_components, p.dim))

    # Preallocate each split once; every client set is written into its slice, so no
    # list-concatenation and no whole-split float64 copy ever exists.
    out = {}
    for split in SPLITS:
        offsets = _offsets(sizes[split])
        total = int(offsets[-1])
        out[split] = SplitArrays(
            x=np.empty((total, p.dim), dtype=np.float32),
            y=np.empty(total, dtype=np.int64),
            offsets=offsets,
        )

    for client in range(p.num_clients):
        for split in ("train", "test", "val"):  # the reference's draw order
            arrays = out[split]
            lo, hi = arrays.offsets[client], arrays.offsets[client + 1]
            n = int(hi - lo)
            counts = rng.multinomial(n, weights[client])
            x = rng.uniform(-1, 1, (n, p.dim))
            y = np.zeros(n, dtype=np.int64)
            start = 0
            for c in range(p.num_components):
                m = int(counts[c])
                rows = slice(start, start + m)
                logits = x[rows] @ theta[c] + rng.normal(size=m, scale=0.1)
                y[rows] = np.round(1.0 / (1.0 + np.exp(-logits)))
                if p.corrected:  # the reference never advances the offset (the quirk)
                    start += m
            idx = np.arange(n)
            rng.shuffle(idx)
            # Casting during assignment gives the same bits as x.astype(float32)[idx].
            arrays.x[lo:hi] = x[idx]
            arrays.y[lo:hi] = y[idx]
        if progress is not None:
            progress(1)
    return out


def _cache_key(params: SyntheticParams) -> str:
    canonical = json.dumps(
        {"params": dataclasses.asdict(params), "version": GENERATOR_VERSION},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _atomic_write(folder: pathlib.Path, name: str, write) -> None:
    """Write to a temporary file in the same folder, then rename over the target."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, folder / name)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


class _Counting:
    """A file that reports what is written to it (numpy then writes an array in pieces, not at once)."""

    def __init__(self, file, progress: Callable[[int], Any]) -> None:
        self.file, self.progress = file, progress

    def write(self, data) -> int:
        written = self.file.write(data)
        self.progress(len(data))
        return written


def _save(folder: pathlib.Path, params: SyntheticParams, data: dict[str, SplitArrays],
          progress: Callable[[int], Any] | None = None) -> None:
    """The arrays as .npy files, then meta.json; `progress(n)` after each n bytes written."""
    folder.mkdir(parents=True, exist_ok=True)
    file_sizes = {}
    for split in SPLITS:
        for field in _ARRAYS:
            name = f"{split}_{field}.npy"
            arr = getattr(data[split], field)
            if progress is None:
                _atomic_write(folder, name, lambda f, a=arr: np.save(f, a, allow_pickle=False))
            else:  # the same bytes, written by numpy in 16 MiB pieces that move the bar
                _atomic_write(folder, name, lambda f, a=arr: np.save(_Counting(f, progress), a, allow_pickle=False))
            file_sizes[name] = (folder / name).stat().st_size
    names = sorted(file_sizes)
    meta = {"version": GENERATOR_VERSION, "params": dataclasses.asdict(params), "file_sizes": file_sizes,
            "sha256": dict(zip(names, _digests([folder / n for n in names])))}
    # meta.json goes last: its presence marks the folder as complete.
    _atomic_write(folder, "meta.json", lambda f: f.write(json.dumps(meta, indent=1).encode()))


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            digest.update(block)  # releases the GIL: files hash in parallel threads
    return digest.hexdigest()


def _digests(paths: list[pathlib.Path]) -> list[str]:
    """SHA-256 of each file, one thread per core (1.87 GB: docs/data.md gives the time)."""
    with ThreadPoolExecutor(max_workers=min(len(paths), os.cpu_count() or 1)) as pool:
        return list(pool.map(_sha256, paths))


# Folders whose files were hashed in this process, keyed by each file's (inode, size, mtime): a folder is
# verified once per process, and again if any file is rewritten since (the tests corrupt files in place).
_verified: set[tuple] = set()


def _verify(folder: pathlib.Path, expected: dict[str, str]) -> None:
    """Raise ValueError naming the first file whose content does not match its SHA-256 in meta.json."""
    names = sorted(expected)
    stamp = (str(folder), *((s.st_ino, s.st_size, s.st_mtime_ns) for s in ((folder / n).stat() for n in names)))
    if stamp in _verified:
        return
    for name, actual in zip(names, _digests([folder / n for n in names])):
        if actual != expected[name]:
            raise ValueError(f"{folder / name}: content differs from its SHA-256 in meta.json")
    _verified.add(stamp)


def _load(folder: pathlib.Path, params: SyntheticParams) -> dict[str, SplitArrays] | None:
    """Return the cached arrays, or None if the folder is untrusted. Raises ValueError
    naming the bad file when a file is truncated or corrupt (checked against meta.json's sizes and SHA-256)."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None  # missing or half-written meta: the folder is not complete
    if meta.get("version") != GENERATOR_VERSION or meta.get("params") != dataclasses.asdict(params):
        return None
    if set(meta.get("sha256", {})) != {f"{s}_{f}.npy" for s in SPLITS for f in _ARRAYS}:
        raise ValueError(f"{folder / 'meta.json'}: no SHA-256 of every file (written by an older fedplug?)")
    out = {}
    for split in SPLITS:
        loaded = {}
        for field in _ARRAYS:
            path = folder / f"{split}_{field}.npy"
            try:
                if path.stat().st_size != meta["file_sizes"][path.name]:
                    raise ValueError("size differs from meta.json")
                # Copy-on-write map: fast, shares pages, writable for torch.from_numpy.
                loaded[field] = np.load(path, mmap_mode="c", allow_pickle=False)
            except (OSError, ValueError, KeyError) as exc:
                raise ValueError(f"{path}: {exc}") from exc
        arrays = SplitArrays(**loaded)
        if arrays.offsets[-1] != len(arrays.x) or len(arrays.y) != len(arrays.x):
            raise ValueError(f"{folder / split}_*.npy: inconsistent shapes")
        out[split] = arrays
    try:
        _verify(folder, meta["sha256"])
    except OSError as exc:
        raise ValueError(str(exc)) from exc
    return out


def load_or_generate(params: SyntheticParams, cache_dir: pathlib.Path) -> dict[str, SplitArrays]:
    """Load the dataset from ``cache_dir`` if a complete matching copy exists, else
    generate it and cache it there."""
    folder = pathlib.Path(cache_dir) / f"synthetic-{_cache_key(params)[:16]}"
    try:
        cached = _load(folder, params)
        if cached is not None:
            return cached
    except ValueError as exc:
        logger.warning("untrusted synthetic cache: %s; regenerating it", exc)
        # Not rmtree: another process may be reading or rewriting the folder. Without meta.json it is trusted
        # by nobody until the new files (the same bytes, renamed into place one by one) and meta.json are written.
        (folder / "meta.json").unlink(missing_ok=True)
    size = expected_bytes(params)
    _check_writable(folder, size)  # before the generation's seconds, not after
    logger.info("Synthetic data: generating %d clients once and caching them in %s (%s; data.root or "
                "$FEDPLUG_CACHE moves it); later runs load them", params.num_clients, folder, human_bytes(size))
    bar = _bar(params.num_clients, "generating Synthetic", "client")
    data = generate_synthetic(params) if bar is None else generate_synthetic(params, progress=bar.update)
    if bar is not None:
        bar.close()
    bar = _bar(sum(getattr(a, f).nbytes for a in data.values() for f in _ARRAYS), "caching Synthetic", "B")
    try:
        _save(folder, params, data, progress=None if bar is None else bar.update)
    except OSError as err:
        shutil.rmtree(folder, ignore_errors=True)  # no half cache taking the space
        raise DataError(f"cannot write the Synthetic cache {err.filename or folder} ({err.strerror}); free "
                        f"{human_bytes(size)} there or set data.root (or $FEDPLUG_CACHE) to another folder") from None
    finally:
        if bar is not None:
            bar.close()
    return data


def _check_writable(folder: pathlib.Path, size: int) -> None:
    """Refuse a cache folder that cannot be created or lacks room for `size` bytes, with a sentence saying so."""
    where = "set data.root (or $FEDPLUG_CACHE) to another folder"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
        free = shutil.disk_usage(folder).free
    except OSError as err:
        raise DataError(f"cannot write the Synthetic cache in {folder} ({err.strerror}); {where}") from None
    if free < size:
        raise DataError(f"the Synthetic cache needs {human_bytes(size)} but {folder} has {human_bytes(free)} free; "
                        f"free some space or {where}")


def expected_bytes(params: SyntheticParams) -> int:
    """The arrays' size in bytes (the cache is this plus the .npy headers), before generating them."""
    # The train sizes are the stream's first draw: a fresh stream of the same seed gives them.
    raw = np.random.RandomState(params.seed).lognormal(4, 2, params.num_clients).astype(int)
    rows = sum(min(int(s) + 50, 1000) for s in raw) + params.num_clients * (params.val_size + params.test_size)
    return rows * (params.dim * 4 + 8) + len(SPLITS) * (params.num_clients + 1) * 8


def human_bytes(size: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.{2 if unit == 'GB' else 1}f} {unit}"
    return f"{size} B"


def _bar(total: int, desc: str, unit: str):
    """A progress bar on a terminal (stderr), None elsewhere."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    scale = dict(unit_scale=True, unit_divisor=1000) if unit == "B" else {}
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, **scale)
