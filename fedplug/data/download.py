"""Download a URL into the cache: resumable (HTTP Range) and checksum-verified.

The bytes go to `<dest>.part` first; only a complete file whose sha256 matches (when one is
given) is renamed to `dest`, so `dest` is never a half file. A failed transfer keeps the
`.part` so that the next call resumes where it stopped.
"""
from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from fedplug.errors import DataError

TIMEOUT_S = 60.0


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def pip_fetch(pattern: str, folder: Path, command: list[str], sha256: str, what: str) -> Path:
    """The file matching `pattern` in `folder`, fetched with the pip `command` when absent, whose SHA-256 is
    `sha256` (PyPI's published one). A cached copy that differs is deleted and fetched again; a fetched one
    that differs is deleted and refused. Raises DataError naming the command to run by hand if pip fails."""
    hint = " ".join(command)
    found = sorted(folder.glob(pattern))
    if found and sha256_of(found[0]) != sha256:
        logging.getLogger("fedplug.data").warning("%s does not match the SHA-256 PyPI publishes for %s; fetching it "
                                                  "again", found[0], what)
        found[0].unlink()
        found = []
    if found:
        return found[0]
    folder.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(command, capture_output=True, text=True)
    except OSError as exc:
        raise DataError(f"could not run pip to fetch {what} ({exc}); run by hand: {hint}") from exc
    found = sorted(folder.glob(pattern))
    if proc.returncode != 0 or not found:
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-1:] or ["no file"]
        raise DataError(f"could not download {what} (no network?): {tail[0]}; run by hand: {hint}")
    actual = sha256_of(found[0])
    if actual != sha256:
        found[0].unlink()
        raise DataError(f"the downloaded {found[0].name} has SHA-256 {actual}, not the {sha256} PyPI publishes for "
                        f"{what}; it was deleted: check the index pip uses (pip config list) and try again")
    return found[0]


def _part_path(dest: Path) -> Path:
    return dest.with_suffix(dest.suffix + ".part")


def _range_start(content_range: str | None) -> int | None:
    """The first byte of a `Content-Range: bytes a-b/n` header, or None."""
    m = re.match(r"\s*bytes\s+(\d+)-", content_range or "")
    return int(m.group(1)) if m else None


def _fetch_into(url: str, part: Path, chunk: int) -> None:
    """Bring `part` to the full content of `url`, resuming when it already holds a prefix."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "fedplug"}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # our prefix is not a prefix of what is served now: restart
            e.close()
            part.unlink()
            return _fetch_into(url, part, chunk)
        raise
    with response:
        status = response.status
        if status == 206 and _range_start(response.headers.get("Content-Range")) == have:
            mode = "ab"
        elif status in (200, 206):
            # 200: the server ignored the Range header; 206 from another offset: do not trust it.
            if status == 206:
                response.close()
                part.unlink()
                return _fetch_into(url, part, chunk)
            mode, have = "wb", 0
        else:
            raise urllib.error.HTTPError(url, status, f"unexpected HTTP status {status}", response.headers, None)
        length = response.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        got = 0
        with open(part, mode) as f:
            while block := response.read(chunk):
                f.write(block)
                got += len(block)
        if expected is not None and got < expected:
            # http.client returns a short body without error when the peer closes early.
            raise http.client.IncompleteRead(b"", expected - got)


def download(url: str, dest: Path, sha256: str | None = None, chunk: int = 1 << 20) -> Path:
    """Download `url` to `dest` (resuming a previous `.part`), verify `sha256`, return `dest`.

    An existing `dest` is reused when it matches `sha256` (or when no checksum is given).
    Raises DataError on network/HTTP errors (the `.part` is kept for resume) and on a checksum
    mismatch (the `.part` is deleted).
    """
    dest = Path(dest)
    if dest.exists():
        if sha256 is None or sha256_of(dest, chunk) == sha256.lower():
            return dest
        dest.unlink()  # stale or corrupt cached file: fetch again
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = _part_path(dest)
    try:
        _fetch_into(url, part, chunk)
    except urllib.error.HTTPError as e:
        raise DataError(f"download of {url} failed: HTTP {e.code} {e.reason}; "
                        f"partial file {part} kept for resume" if part.exists() else
                        f"download of {url} failed: HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        raise DataError(f"download of {url} failed ({type(e).__name__}: {e}); "
                        f"partial file {part} kept for resume") from e
    if sha256 is not None:
        actual = sha256_of(part, chunk)
        if actual != sha256.lower():
            part.unlink(missing_ok=True)
            raise DataError(f"checksum mismatch for {url}: expected sha256 {sha256.lower()}, got {actual}; "
                            f"the partial file was deleted")
    os.replace(part, dest)
    return dest
