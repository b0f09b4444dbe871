"""Where tensors live: one place decides the run's device, the data's placement and the clients' state.

`device` (config): auto (CUDA if present, else MPS, else CPU), cpu, cuda, cuda:N or mps. The model,
the global parameters, the aggregation and the evaluation are on it. Random draws stay on CPU
generators (per seed, round and client) and are moved to the device after, so a run samples the
same batches and noise wherever it runs. Checkpoints and the wire carry CPU tensors; each process
(a distributed client, a resumed run) resolves its own device.

FederatedScope spells it `use_gpu: True` with `device: N` (a GPU index, -1: any); both are read.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
from typing import TYPE_CHECKING, Any, Iterator

import torch

from fedplug.errors import ConfigError, UserError

if TYPE_CHECKING:
    from fedplug.config import ConfigNode
    from fedplug.data.federated import FederatedData

logger = logging.getLogger("fedplug")
DEVICE_FORMAT = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
DATA_ON_DEVICE_SHARE = 0.5  # data go on the GPU when they take at most this share of its free memory


class DeviceError(UserError):
    """A device the machine does not have."""


def valid_spec(spec: str) -> bool:
    return DEVICE_FORMAT.fullmatch(spec) is not None


def from_federatedscope(device: Any, use_gpu: Any) -> Any:
    """FederatedScope's `use_gpu` / integer `device` as fedplug's device string (anything else unchanged).

    `use_gpu False`: cpu. `use_gpu True`: cuda:N for `device N` (N >= 0), else cuda. An integer `device`
    alone names a GPU (-1: cpu)."""
    if isinstance(use_gpu, str):
        use_gpu = {"true": True, "false": False}.get(use_gpu.lower(), use_gpu)
    if use_gpu is not None and not isinstance(use_gpu, bool):
        raise ConfigError(f"config key 'use_gpu' expects bool, got {use_gpu!r}")
    index = device
    if isinstance(device, str) and re.fullmatch(r"-?\d+", device.strip()):
        index = int(device)
    if use_gpu is False:
        return "cpu"
    if isinstance(index, int) and not isinstance(index, bool):
        return f"cuda:{index}" if index >= 0 else "cuda" if use_gpu else "cpu"
    if use_gpu and (device is None or device == "auto"):
        return "cuda"
    return device


def resolve(spec: str) -> torch.device:
    """The torch.device for a `device` value; one clear line when the machine lacks it."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"device {spec}: this machine has no CUDA device (torch.cuda.is_available() is False, "
                              f"PyTorch {torch.__version__}); use device cpu, or auto")
        index = int(spec.partition(":")[2] or torch.cuda.current_device())
        if index >= torch.cuda.device_count():
            raise DeviceError(f"device {spec}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                              f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
        return torch.device("cuda", index)
    if spec == "mps" and not _mps_available():
        raise DeviceError("device mps: this machine has no Apple MPS device; use device cpu, or auto")
    return torch.device(spec)


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def data_on_device(device: torch.device, nbytes: int, placement: str) -> bool:
    """Whether the data set goes on `device` (else it stays in host memory, pinned, moved a batch at a time)."""
    if device.type == "cpu":
        return True
    if placement != "auto":
        return placement == "device"
    if device.type != "cuda":  # MPS shares the host's memory
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= DATA_ON_DEVICE_SHARE * free


def describe_placement(device: torch.device, nbytes: int, on_device: bool) -> str:
    size = f"{nbytes / 2**30:.2f} GB" if nbytes >= 2**28 else f"{nbytes / 2**20:.1f} MB"
    if on_device:
        return f"data: {size} on {device}"
    return f"data: {size} in pinned host memory, moved to {device} one batch at a time (data.placement)"


def place_data(cfg: ConfigNode, data: FederatedData, spec: str | None = None) -> tuple[torch.device, FederatedData]:
    """The run's device (`device`, or `spec`), and the data moved there or pinned in host memory (`data.placement`);
    logged."""
    device = resolve(spec or cfg.device)
    if device.type == "cpu":
        logger.info("device: cpu")
        return device, data
    nbytes = data.bytes_in_ram()
    on_device = data_on_device(device, nbytes, cfg.data.placement)
    logger.info("device: %s; %s", device, describe_placement(device, nbytes, on_device))
    return device, data.to(device, pin=not on_device)


def to_device(tensors: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The same dict (nested dicts too) with its tensors on `device` (tensors already there are not copied)."""
    return {name: to_device(t, device) if isinstance(t, dict) else t.to(device) for name, t in tensors.items()}


@contextlib.contextmanager
def deterministic(enabled: bool, device: torch.device) -> Iterator[None]:
    """PyTorch's deterministic algorithms inside the block (`deterministic` key), restored after.

    On CUDA, cuBLAS also needs a fixed workspace (CUBLAS_WORKSPACE_CONFIG, read when cuBLAS starts:
    set here unless the user set it) and cuDNN must not pick kernels by timing."""
    if not enabled:
        yield
        return
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
              torch.backends.cudnn.deterministic)
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before[1], before[2]
