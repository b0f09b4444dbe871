"""Checkpoints: one safetensors file per run folder, replaced atomically.

A checkpoint holds tensors (global model, server optimizer state, per-client plug-in state, RNG
states) under "/"-separated names, and everything else (round, metrics so far, early-stopping
state) as JSON in the file's metadata. Nothing is pickled, so reading a checkpoint never runs code.

Writing goes to a temporary file in the same folder, is flushed to disk, then renamed over the old
checkpoint (`os.replace` is atomic on POSIX): a crash at any point leaves either the previous
checkpoint or the new one, never a torn file.

The metadata carries a SHA-256 of the tensors (names, dtypes, shapes, bytes) and of the rest of the
metadata: a checkpoint changed after it was written (weights randomised or scaled, rounds or
metrics edited) is refused on load instead of silently continuing from it.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedplug.core.params import Params
from fedplug.errors import UserError
from fedplug.run.failpoint import failpoint

CHECKPOINT_FILE = "checkpoint.safetensors"
FORMAT_VERSION = 2  # 2: the content hash in the metadata
Nested = dict[str, Any]  # name -> tensor or nested dict of the same


def flatten(tree: Nested, prefix: str = "") -> Params:
    """{"a": {"b": t}} -> {"a/b": t}; names must not contain "/" themselves."""
    flat: Params = {}
    for name, value in tree.items():
        path = f"{prefix}{name}"
        if isinstance(value, dict):
            flat.update(flatten(value, path + "/"))
        else:
            flat[path] = value
    return flat


def unflatten(flat: Params, prefix: str) -> Nested:
    """The subtree under `prefix` ("a/" -> {"b": t}); empty when absent."""
    tree: Nested = {}
    for path, tensor in flat.items():
        if not path.startswith(prefix):
            continue
        *parents, leaf = path[len(prefix):].split("/")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = tensor
    return tree


def rng_state() -> tuple[Params, Nested]:
    """The process-wide generators (PyTorch's and NumPy's legacy one), for completeness: fedplug's own
    randomness comes from per-(seed, round, client) generators and needs no saving."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return ({"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(keys.astype(np.int64))},
            {"numpy": [kind, int(pos), int(has_gauss), float(gauss)]})


def set_rng_state(tensors: Params, meta: Nested) -> None:
    if "torch" in tensors:
        torch.set_rng_state(tensors["torch"])
    if "numpy_keys" in tensors and "numpy" in meta:
        kind, pos, has_gauss, gauss = meta["numpy"]
        np.random.set_state((kind, tensors["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, gauss))


# safetensors' dtype names (https://github.com/huggingface/safetensors, the format's README)
DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
          torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
          torch.bool: "BOOL"}


def _header(tensors: Params, meta: Nested) -> bytes:
    """The safetensors header: 8-byte little-endian length, then JSON padded to 8 bytes."""
    entries: dict[str, Any] = {"__metadata__": {"fedplug": json.dumps({"format": FORMAT_VERSION, **meta})}}
    offset = 0
    for name, tensor in tensors.items():
        size = tensor.numel() * tensor.element_size()
        entries[name] = {"dtype": DTYPES[tensor.dtype], "shape": list(tensor.shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(entries).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text


def content_hash(tensors: Params, meta: Nested) -> str:
    """SHA-256 of the tensors in name order (name, dtype, shape, bytes) and of the JSON metadata."""
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(json.dumps([name, DTYPES[tensor.dtype], list(tensor.shape)]).encode())
        if tensor.numel():
            digest.update(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
    return digest.hexdigest()


def save(path: Path, tensors: Params, meta: Nested) -> None:
    """Write `tensors` and the JSON-able `meta` to `path` as safetensors, atomically.

    Written tensor by tensor from their own memory (no copy of the whole state: per-client state
    can be most of the process's memory), into a temporary file that is then renamed.
    """
    tensors = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    meta = {**meta, "sha256": content_hash(tensors, meta)}
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(_header(tensors, meta))
            for i, tensor in enumerate(tensors.values()):
                if i == len(tensors) // 2:
                    failpoint("checkpoint_write", meta.get("round", 0))  # tests: a crash mid-write
                if tensor.numel():
                    file.write(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException as err:
        Path(temp).unlink(missing_ok=True)
        if isinstance(err, OSError):  # a full disk, say: a sentence, and the previous checkpoint stays
            raise UserError(f"cannot write the checkpoint {path} ({err.strerror}); the previous checkpoint, if any, "
                            f"is intact; free some space, then `fedplug --resume {path.parent}`") from None
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a power cut
    finally:
        os.close(directory)


def load(path: Path) -> tuple[Params, Nested]:
    """(tensors, meta) of a checkpoint file; a clear error when missing or unreadable."""
    from safetensors import safe_open

    if not path.is_file():
        raise UserError(f"no checkpoint in {path.parent} (expected {path.name}; is checkpoint.every > 0?)")
    try:
        with safe_open(str(path), framework="pt") as file:
            meta = json.loads((file.metadata() or {})["fedplug"])
            tensors = {name: file.get_tensor(name) for name in file.keys()}
    except Exception as err:  # noqa: BLE001  (a damaged file is the user's problem to hear about, not a crash)
        raise UserError(f"cannot read the checkpoint {path}: {err}") from None
    if meta.pop("format", None) != FORMAT_VERSION:
        raise UserError(f"checkpoint {path} is not of format {FORMAT_VERSION}, the one this fedplug reads; "
                        f"start the run again")
    if meta.pop("sha256", None) != content_hash(tensors, meta):
        raise UserError(f"checkpoint {path} was changed after it was written (its content no longer matches the "
                        f"SHA-256 in its metadata); resume from an intact copy or start the run again")
    return tensors, meta
