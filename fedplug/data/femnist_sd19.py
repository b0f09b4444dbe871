"""NIST Special Database 19 for FEMNIST: fetch its archives and match each writer's images to classes.

Implements the first steps of LEAF's data/femnist/preprocess (get_file_dirs.py, get_hashes.py,
match_hashes.py, group_by_writer.py), streaming over the zips or their extracted trees:
`by_class/<hex ASCII code>/hsf_N/*.png` gives an image's class, `by_write/hsf_N/<writer>/<kind>/*.png`
its writer; SD19 stores the same image with the same bytes in both, so LEAF joins them on the MD5 of
the file. Labels follow LEAF's relabel_class: '0'-'9' -> 0-9, 'A'-'Z' -> 10-35, 'a'-'z' -> 36-61.

Where LEAF depends on os.listdir order, fedplug is deterministic: members are taken in sorted path
order, and bytes filed under several classes get the smallest label (the first in sorted path order).
Each writer's images are listed once (LEAF's group_by_writer.py repeats the first image of every writer
but the first). The hash index is saved, so that a resumed preparation does not hash by_class again.
"""
from __future__ import annotations

import hashlib
import os
import re
import threading
import urllib.request
import zipfile
import zlib
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from fedplug.data.download import download, sha256_of
from fedplug.errors import DataError

ARCHIVES = ("by_class", "by_write")
CLASS_PNG = re.compile(r"(?:^|/)by_class/([0-9a-fA-F]{2})/hsf_\d+/[^/]+\.png$")  # LEAF: 'hsf' folders, no '.mit'
WRITE_PNG = re.compile(r"(?:^|/)by_write/hsf_\d+/([^/]+)/[^/]+/[^/]+\.png$")     # group 1: the writer, fNNNN_NN

Members = list[tuple[str, Any]]  # (path inside the source, what `read` takes)


def hex_label(folder: str) -> int | None:
    """LEAF's class of a by_class folder (the hex ASCII code of the character), None if not a class."""
    code = int(folder, 16)
    for first, last, offset in ((0x30, 0x39, 0), (0x41, 0x5A, 10), (0x61, 0x7A, 36)):
        if first <= code <= last:
            return code - first + offset
    return None


def md5(data: bytes) -> bytes:
    return hashlib.md5(data, usedforsecurity=False).digest()


class ZipSource:
    """One SD19 archive, read member by member (zipfile keeps only the central directory in memory)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.zip = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise DataError(f"{self.path} is not a complete zip archive ({e}): a truncated or corrupt download? "
                            f"Delete it and run again") from e

    def members(self) -> Iterator[tuple[str, Any]]:
        return ((i.filename, i) for i in self.zip.infolist() if not i.is_dir())

    def identity(self, key: Any) -> str:
        return f"{key.CRC:08x}:{key.file_size}"

    def read(self, key: Any) -> bytes:
        try:
            return self.zip.read(key)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
            raise DataError(f"{self.path}: member {key.filename} cannot be read ({e}); the archive is corrupt: "
                            f"delete it and fetch it again") from e

    def close(self) -> None:
        self.zip.close()


class TreeSource:
    """An extracted archive: `parent/by_class/...` or `parent/by_write/...`, walked in sorted order."""

    def __init__(self, parent: Path, name: str):
        self.parent, self.name, self.path = Path(parent), name, Path(parent) / name

    def members(self) -> Iterator[tuple[str, Any]]:
        for top, dirs, files in os.walk(self.path):
            dirs.sort()
            for f in sorted(files):
                path = Path(top) / f
                yield path.relative_to(self.parent).as_posix(), path

    def identity(self, key: Any) -> str:
        return str(key.stat().st_size)

    def read(self, key: Any) -> bytes:
        try:
            return Path(key).read_bytes()
        except OSError as e:
            raise DataError(f"cannot read {key}: {e}") from e

    def close(self) -> None:
        pass


Source = ZipSource | TreeSource


def _remote_size(url: str) -> int | None:
    """Content-Length from a HEAD request, for the progress bar; None when the server does not say."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=30) as r:
            length = r.headers.get("Content-Length")
            return int(length) if length and length.isdigit() else None
    except (OSError, ValueError):
        return None


def fetch_archive(url: str, dest: Path, sha256: str | None) -> Path:
    """`download` (resumable, checksummed) with a progress bar that follows the growing `.part` file."""
    if dest.exists() and (sha256 is None or sha256_of(dest) == sha256.lower()):
        return dest
    from tqdm import tqdm

    part = dest.with_name(dest.name + ".part")  # download.py's name for the partial file
    stop = threading.Event()
    with tqdm(total=_remote_size(url), unit="B", unit_scale=True, desc=dest.name, disable=None) as bar:
        def follow() -> None:
            while not stop.wait(0.5):
                bar.update((part.stat().st_size if part.exists() else bar.n) - bar.n)
            if dest.exists():
                bar.update(dest.stat().st_size - bar.n)

        watcher = threading.Thread(target=follow, daemon=True)
        watcher.start()
        try:
            return download(url, dest, sha256)
        finally:
            stop.set()
            watcher.join()


def open_sources(source: str, download_dir: Path, sha256: dict[str, str]) -> dict[str, Source]:
    """`by_class` and `by_write` from an http(s) base URL (downloaded into `download_dir`) or a local
    folder holding `by_class.zip`/`by_write.zip` or the extracted `by_class/`/`by_write/` trees."""
    if "://" in source:
        return {n: ZipSource(fetch_archive(f"{source.rstrip('/')}/{n}.zip", Path(download_dir) / f"{n}.zip",
                                           sha256.get(n))) for n in ARCHIVES}
    folder = Path(source).expanduser()
    out: dict[str, Source] = {}
    for n in ARCHIVES:
        archive = folder / f"{n}.zip"
        if archive.is_file():
            if n in sha256 and sha256_of(archive) != sha256[n].lower():
                raise DataError(f"{archive} does not match its sha256 checksum (data.femnist.sd19_{n}_sha256)")
            out[n] = ZipSource(archive)
        elif (folder / n).is_dir():
            out[n] = TreeSource(folder, n)
        else:
            raise DataError(f"{folder} holds neither {n}.zip nor an extracted {n}/ folder of NIST SD19")
    return out


def fingerprint(source: Source, pattern: re.Pattern) -> str:
    """A digest of the paths and sizes (zip: and CRCs) of the PNGs `pattern` selects: same files, same digest."""
    h = hashlib.sha256()
    for name, key in source.members():
        if pattern.search(name):
            h.update(f"{name}\0{source.identity(key)}\n".encode())
    return h.hexdigest()


def class_index(by_class: Source, progress: Any = None) -> tuple[dict[bytes, int], int]:
    """{MD5 of a by_class PNG: its label} and how many digests appear under more than one class."""
    index: dict[bytes, int] = {}
    clashes: set[bytes] = set()
    for name, key in by_class.members():
        m = CLASS_PNG.search(name)
        label = hex_label(m.group(1)) if m else None
        if label is None:
            continue
        digest = md5(by_class.read(key))
        old = index.get(digest)
        if old is not None and old != label:
            clashes.add(digest)
        if old is None or label < old:
            index[digest] = label
        if progress is not None:
            progress.update(1)
    return index, len(clashes)


def writer_plan(by_write: Source) -> tuple[list[tuple[str, Members]], str]:
    """[(writer, its PNGs in path order)] in writer order, and a fingerprint of the plan."""
    groups: dict[str, Members] = defaultdict(list)
    for name, key in by_write.members():
        m = WRITE_PNG.search(name)
        if m:
            groups[m.group(1)].append((name, key))
    plan = [(w, sorted(groups[w], key=lambda member: member[0])) for w in sorted(groups)]
    h = hashlib.sha256()
    for w, members in plan:
        h.update(f"{w}\n".encode())
        for name, key in members:
            h.update(f"{name}\0{by_write.identity(key)}\n".encode())
    return plan, h.hexdigest()


def load_class_index(path: Path, by_class: Source, key: str, progress_cls: Any) -> tuple[dict[bytes, int], int]:
    """`class_index`, saved to `path` and read back from it while the by_class files keep the fingerprint `key`."""
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["fingerprint"]) == key:
                    raw = z["digests"].tobytes()
                    return dict(zip((raw[i:i + 16] for i in range(0, len(raw), 16)), z["labels"].tolist())), \
                        int(z["clashes"])
        except (OSError, KeyError, ValueError):
            pass  # unreadable: hash again
    with progress_cls(desc="hashing by_class", unit=" images", disable=None) as bar:
        index, clashes = class_index(by_class, bar)
    digests = np.frombuffer(b"".join(index), np.uint8).reshape(-1, 16)
    tmp = path.with_name(f"class_index.{os.getpid()}.tmp.npz")
    np.savez(tmp, digests=digests, labels=np.fromiter(index.values(), np.uint8, len(index)),
             clashes=np.int64(clashes), fingerprint=np.str_(key))
    os.replace(tmp, path)
    return index, clashes
