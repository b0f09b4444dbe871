"""The configs that ship inside the package, addressable by name wherever fedplug is installed.

    fedplug --cfg fedavg_lr_on_synthetic              # = configs/fedavg_lr_on_synthetic.yaml
    fedplug --cfg cpu/fedavg_lstm_on_shakespeare.yaml

A name is a config's path below the repository's configs/ folder, with or without `.yaml`; a
leading `configs/` is accepted too, so the README's commands work from any folder. A path that
exists as a file always wins over a name (fedplug/config/load.py asks here only when it does not).

Installed (a wheel), the configs are the package data of `fedplug.configs`: pyproject.toml maps
that package onto the repository's configs/ folder, which stays where it is. In a source checkout
(an editable install) that package may not import; the configs/ folder next to fedplug/ serves.
"""
from __future__ import annotations

import atexit
import contextlib
import importlib.resources
from importlib.resources.abc import Traversable
from pathlib import Path, PurePosixPath

PACKAGE = "fedplug.configs"
SUFFIXES = (".yaml", ".yml")
_SOURCE_TREE = Path(__file__).resolve().parents[2]  # the repository root when run from a checkout
_extracted = contextlib.ExitStack()  # configs copied out of a zipped install, removed at exit
atexit.register(_extracted.close)


def configs_root() -> Traversable | None:
    """The folder of the packaged configs: the installed `fedplug.configs`, else a checkout's configs/."""
    try:
        return importlib.resources.files(PACKAGE)
    except ModuleNotFoundError:
        pass
    checkout = _SOURCE_TREE / "configs"
    if (_SOURCE_TREE / "pyproject.toml").is_file() and checkout.is_dir():
        return checkout
    return None


def list_configs() -> list[str]:
    """Names of the packaged configs, e.g. `fedavg_lr_on_synthetic`, `cpu/fedavg_lstm_on_shakespeare`:
    the top folder's first, then each subfolder's, alphabetically."""
    root = configs_root()
    names: list[str] = []

    def walk(folder: Traversable, prefix: str) -> None:
        for entry in folder.iterdir():
            if entry.is_dir() and not entry.name.startswith((".", "_")):
                walk(entry, f"{prefix}{entry.name}/")
            elif entry.is_file() and entry.name.endswith(SUFFIXES):
                names.append(prefix + entry.name.rsplit(".", 1)[0])

    if root is not None:
        walk(root, "")
    return sorted(names, key=lambda name: (name.count("/"), name))


def normalize(name: str) -> str:
    """A name as list_configs() spells it: no `configs/` in front, no `.yaml` behind."""
    parts = PurePosixPath(str(name).replace("\\", "/")).parts
    if len(parts) > 1 and parts[0] == "configs":
        parts = parts[1:]
    text = "/".join(parts)
    for suffix in SUFFIXES:
        if text.endswith(suffix):
            return text[: -len(suffix)]
    return text


def resolve(name: str | Path) -> Path | None:
    """The file of the packaged config `name` (see the module's docstring), or None if there is none."""
    path = PurePosixPath(str(name).replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or not path.parts:
        return None
    root = configs_root()
    if root is None:
        return None
    *folders, leaf = PurePosixPath(normalize(str(name))).parts or ("",)
    for suffix in SUFFIXES:
        resource = root
        for part in (*folders, leaf + suffix):
            resource = resource.joinpath(part)
        if resource.is_file():
            return _as_path(resource)
    return None


def _as_path(resource: Traversable) -> Path:
    """A file system path for a resource: itself when installed as files (pip always does so)."""
    if isinstance(resource, Path):
        return resource
    return _extracted.enter_context(importlib.resources.as_file(resource))  # a zipped install
