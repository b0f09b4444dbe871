"""The wire: protobuf messages (fedplug.proto), safetensors payloads, and their checks.

Every byte a peer sends is parsed here and checked before anything else sees it: a malformed
message, a payload that is not safetensors, a tensor with another name, dtype or shape than
expected, or a NaN/Inf value becomes a `Refused` with a reason for the log, never an exception
the server dies of. Nothing is unpickled.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from fedplug.core.params import Params
from fedplug.distributed import fedplug_pb2 as pb

PROTOCOL_VERSION = 2  # 2: plug-ins' extra tensors in the payloads, train_steps
SERVICE = "fedplug.v1.Federation"
TOKEN_HEADER = "x-fedplug-token"
MiB = 1024 * 1024
TRAIN_METRICS = ("train_total", "train_steps", "train_loss")
EVAL_METRICS = ("total", "correct", "loss_sum")


class Refused(Exception):
    """A message the server will not act on; the text says why (it is logged and sent back)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code  # a grpc.StatusCode name, e.g. "INVALID_ARGUMENT"


def parse(message_type: type, raw: bytes) -> Any:
    """A protobuf message from bytes; Refused when they are not one."""
    message = message_type()
    try:
        message.ParseFromString(raw)
    except Exception as err:  # noqa: BLE001  (the protobuf runtime raises DecodeError and others)
        raise Refused("INVALID_ARGUMENT", f"malformed {message_type.__name__}: {err}") from None
    return message


def encode_tensors(tensors: Params) -> bytes:
    """Safetensors bytes. Tensors sharing storage (a plug-in's extra that is a parameter, or one tensor
    under two names) are copied: safetensors refuses shared memory."""
    from safetensors.torch import save

    out, storages = {}, set()
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()  # the wire carries CPU tensors, whatever the sender's device
        storage = t.untyped_storage().data_ptr()
        out[name] = t.clone() if storage in storages else t
        storages.add(storage)
    return save(out)


def decode_tensors(raw: bytes, expected: dict[str, tuple[torch.dtype, tuple[int, ...]]]) -> Params:
    """Tensors from safetensors bytes, exactly the `expected` names, dtypes and shapes, all finite."""
    from safetensors.torch import load

    try:
        tensors = load(raw)
    except Exception as err:  # noqa: BLE001  (a bad header is the peer's fault, not ours)
        raise Refused("INVALID_ARGUMENT", f"tensor payload is not safetensors: {str(err)[:120]}") from None
    if set(tensors) != set(expected):
        missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        raise Refused("INVALID_ARGUMENT", f"wrong tensor names: missing {missing[:3]}, unexpected {extra[:3]}")
    for name, tensor in tensors.items():
        dtype, shape = expected[name]
        if tensor.dtype != dtype or tuple(tensor.shape) != shape:
            raise Refused("INVALID_ARGUMENT", f"tensor '{name}' is {tensor.dtype} {tuple(tensor.shape)}, "
                                              f"expected {dtype} {shape}")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise Refused("INVALID_ARGUMENT", f"tensor '{name}' holds NaN or Inf")
    return tensors


def layout(tensors: Params) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    return {name: (t.dtype, tuple(t.shape)) for name, t in tensors.items()}


def check_metrics(metrics: Any, names: tuple[str, ...]) -> dict[str, float]:
    """Exactly `names`, all finite; counts (`*_total`, `*_correct`, `*_steps`) non-negative whole numbers."""
    values = dict(metrics)
    if set(values) != set(names):
        raise Refused("INVALID_ARGUMENT", f"metrics {sorted(values)} where {sorted(names)} were expected")
    for name, value in values.items():
        if not math.isfinite(value):
            raise Refused("INVALID_ARGUMENT", f"metric '{name}' is {value}")
        if name.endswith(("_total", "_correct", "_steps")) and (value < 0 or value != int(value)):
            raise Refused("INVALID_ARGUMENT", f"metric '{name}' is {value}, not a count")
    return values


def train_metrics(result: dict[str, Any]) -> dict[str, float]:
    return {name: float(result[name]) for name in TRAIN_METRICS}


def eval_metrics(split: str, result: dict[str, Any]) -> dict[str, float]:
    return {f"{split}_{name}": float(result[f"{split}_{name}"]) for name in EVAL_METRICS}


Kind = pb.Task.Kind


def kind_name(kind: int) -> str:
    """A task kind's name for a log line; a number no kind has (proto3 lets a peer send one) stays a number."""
    return Kind.Name(kind) if kind in Kind.values() else f"kind {kind}"

__all__ = ["pb", "Kind", "Refused", "PROTOCOL_VERSION", "SERVICE", "TOKEN_HEADER"]
