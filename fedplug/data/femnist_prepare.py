"""`fedplug data prepare femnist`: LEAF's FEMNIST json shards built from NIST SD19 by fedplug's own code.

Implements LEAF's data/femnist/preprocess/data_to_json.py after the matching of femnist_sd19.py: each
128x128 PNG -> Pillow `convert("L")` -> `thumbnail((28, 28), ANTIALIAS)` (LANCZOS, as Pillow now names
it) -> values / 255 (white background = 1.0) -> 784 floats; 100 writers per shard, written as LEAF's
`json.dump` writes `{"users", "num_samples", "user_data": {writer: {"x", "y"}}}`, byte for byte.

Streaming: the images of one batch at a time are in memory, a shard's rows go to disk as they come,
and a process pool decodes. Resumable: a shard is renamed into place when complete and then gets a
marker; a rerun skips marked shards and gives the same files (the plan is fixed by sorted paths).
"""
from __future__ import annotations

import io
import json
import multiprocessing
import os
import re
import shutil
import sys
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any, Iterator

from fedplug.data.femnist_sd19 import CLASS_PNG, Source, fingerprint, load_class_index, md5, open_sources, writer_plan
from fedplug.errors import DataError, UserError

NUM_CLASSES = 62
WRITERS_PER_SHARD = 100  # LEAF's MAX_WRITERS
BATCH = 256  # images per task sent to a worker
SIZE = (28, 28)
STATE_VERSION = 1
FLOAT_TEXT = [repr(v / 255) for v in range(256)]  # how json.dump writes LEAF's uint8 / 255 floats


def require_pillow() -> Any:
    """PIL.Image, imported only here: Pillow is the `femnist` extra, needed by this command alone."""
    try:
        from PIL import Image
    except ImportError:
        raise UserError("fedplug data prepare femnist needs Pillow: pip install 'fedplug[femnist]' "
                        "(or pip install 'pillow>=10')") from None
    return Image


def convert_png(data: bytes, name: str = "image") -> bytes:
    """LEAF's 28x28 grayscale of one SD19 PNG, as 784 uint8 in row order."""
    Image = require_pillow()
    try:
        with Image.open(io.BytesIO(data)) as img:
            gray = img.convert("L")
    except Exception as e:  # Pillow raises many types on corrupt data (OSError, SyntaxError, ValueError, ...)
        why = re.sub(r"\s*<[^>]* at 0x[0-9a-fA-F]+>|\n", " ", str(e)).strip()  # no object reprs, one line
        raise DataError(f"{name} is not a readable PNG ({type(e).__name__}: {why})") from None
    gray.thumbnail(SIZE, Image.Resampling.LANCZOS)
    if gray.size != SIZE:
        raise DataError(f"{name} gives a {gray.size[0]}x{gray.size[1]} thumbnail, not 28x28: not a square SD19 image")
    return gray.tobytes()


def convert_batch(items: list[tuple[str, bytes]]) -> list[str]:
    """A worker's task: each image as the json text of its 784 floats."""
    return ["[" + ", ".join(map(FLOAT_TEXT.__getitem__, convert_png(data, name))) + "]" for name, data in items]


class _Inline:
    """`--jobs 1`: the executor interface, run in this process."""

    def submit(self, fn: Any, *args: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as e:  # noqa: BLE001 - handed to .result(), like a pool does
            future.set_exception(e)
        return future

    def shutdown(self, cancel_futures: bool = False) -> None:
        pass


def _converted(items: Iterator[tuple[Any, str, bytes]], pool: Any, window: int) -> Iterator[tuple[Any, str]]:
    """(meta, row text) in input order, with at most `window` batches in flight (bounded memory)."""
    pending: deque = deque()
    batch: list = []

    def send() -> None:
        pending.append(([m for m, _, _ in batch], pool.submit(convert_batch, [(n, d) for _, n, d in batch])))
        batch.clear()

    for item in items:
        batch.append(item)
        if len(batch) == BATCH:
            send()
        while len(pending) > window:
            metas, future = pending.popleft()
            yield from zip(metas, future.result())
    if batch:
        send()
    while pending:
        metas, future = pending.popleft()
        yield from zip(metas, future.result())


def _build_shard(writers: list, source: Source, index: dict[bytes, int], dest: Path, pool: Any, window: int,
                 progress: Any) -> dict[str, Any]:
    """Write one shard (rows streamed to a body file, then the header and body renamed into place)."""
    stats = {"writers": 0, "samples": 0, "unmatched": 0, "labels": [0] * NUM_CLASSES}

    def matched() -> Iterator[tuple[tuple[str, int], str, bytes]]:
        for writer, members in writers:
            for name, key in members:
                data = source.read(key)
                label = index.get(md5(data))
                progress.update(1)
                if label is None:  # LEAF would stop on a KeyError; SD19 has none, so count and go on
                    stats["unmatched"] += 1
                    continue
                yield (writer, label), name, data

    users, counts, labels = [], [], []
    body, part = dest.with_name(dest.name + ".body.part"), dest.with_name(dest.name + ".part")

    def end_writer(f: Any) -> None:
        f.write('], "y": ' + json.dumps(labels) + "}")
        counts.append(len(labels))

    with open(body, "w", encoding="utf-8") as f:
        for (writer, label), row in _converted(matched(), pool, window):
            if not users or users[-1] != writer:
                if users:
                    end_writer(f)
                f.write((", " if users else "") + json.dumps(writer) + ': {"x": [')
                users.append(writer)
                labels = []
            f.write((", " if labels else "") + row)
            labels.append(label)
            stats["labels"][label] += 1
        if users:
            end_writer(f)
    with open(part, "w", encoding="utf-8") as out, open(body, encoding="utf-8") as b:
        out.write('{"users": ' + json.dumps(users) + ', "num_samples": ' + json.dumps(counts) + ', "user_data": {')
        shutil.copyfileobj(b, out)
        out.write("}}")
    os.replace(part, dest)
    body.unlink()
    stats.update(writers=len(users), samples=sum(counts), bytes=dest.stat().st_size)
    return stats


def _start_state(state: Path, out: Path, key: str) -> None:
    """Keep the finished shards of an interrupted run of the same plan; drop those of another plan."""
    plan_file = state / "plan.json"
    try:
        if json.loads(plan_file.read_text()).get("key") == key:
            return
    except (OSError, ValueError):
        pass  # no plan yet, or an unreadable one: start over
    for marker in state.glob("*.done"):
        (out / marker.name[:-len(".done")]).unlink(missing_ok=True)
        marker.unlink()
    plan_file.write_text(json.dumps({"version": STATE_VERSION, "key": key}))


def _finished(state: Path, dest: Path) -> dict[str, Any] | None:
    marker = state / (dest.name + ".done")
    try:
        stats = json.loads(marker.read_text())
        return stats if dest.stat().st_size == stats["bytes"] else None
    except (OSError, ValueError, KeyError):
        return None


def prepare_femnist(source: str, out: Path, download_dir: Path, sha256: dict[str, str] | None = None,
                    jobs: int = 1, writers_per_shard: int = WRITERS_PER_SHARD,
                    shard_pattern: str = "all_data_{}.json") -> dict[str, Any]:
    """Build LEAF's FEMNIST shards in `out` from SD19 at `source` (URL or folder); return the totals."""
    Image = require_pillow()
    from tqdm import tqdm

    if jobs < 1:
        raise UserError(f"--jobs must be >= 1, got {jobs}")
    if shard_pattern.format(0) == shard_pattern.format(1):
        raise UserError(f"data.femnist.shard_pattern {shard_pattern!r} needs a {{}} for the shard number")
    out, state = Path(out), Path(out) / ".prepare"
    out.mkdir(parents=True, exist_ok=True)
    sources = open_sources(source, Path(download_dir), sha256 or {})
    try:
        state.mkdir(exist_ok=True)
        class_key = fingerprint(sources["by_class"], CLASS_PNG)
        index, clashes = load_class_index(state / "class_index.npz", sources["by_class"], class_key, tqdm)
        sources.pop("by_class").close()  # frees its central directory (about 600 bytes a member)
        plan, plan_key = writer_plan(sources["by_write"])
        shards = [plan[i:i + writers_per_shard] for i in range(0, len(plan), writers_per_shard)]
        # Pillow's version is part of the plan: another resampler could change pixels between resumed shards.
        _start_state(state, out, f"{class_key}:{plan_key}:{writers_per_shard}:{shard_pattern}:{Image.__version__}")
        totals = {"writers": 0, "samples": 0, "unmatched": 0, "labels": [0] * NUM_CLASSES}
        # fork on Linux: workers inherit the imported modules instead of importing torch again each
        fork = multiprocessing.get_context("fork") if sys.platform == "linux" else None
        pool = _Inline() if jobs == 1 else ProcessPoolExecutor(jobs, mp_context=fork)
        with tqdm(total=sum(len(m) for _, m in plan), desc="FEMNIST shards", unit=" images", disable=None) as bar:
            try:
                for i, writers in enumerate(shards):
                    dest = out / shard_pattern.format(i)
                    stats = _finished(state, dest)
                    if stats is None:
                        stats = _build_shard(writers, sources["by_write"], index, dest, pool, 2 * jobs, bar)
                        (state / (dest.name + ".done")).write_text(json.dumps(stats))
                    else:
                        bar.update(sum(len(m) for _, m in writers))
                    for k in ("writers", "samples", "unmatched"):
                        totals[k] += stats[k]
                    totals["labels"] = [a + b for a, b in zip(totals["labels"], stats["labels"])]
            finally:
                pool.shutdown(cancel_futures=True)
    finally:
        for s in sources.values():
            s.close()
    summary = {"data": "femnist", "folder": str(out), "shards": len(shards), "shard_pattern": shard_pattern,
               "writers": totals["writers"], "samples": totals["samples"],
               "classes": sum(1 for n in totals["labels"] if n), "unmatched_images": totals["unmatched"],
               "hashes_in_several_classes": clashes, "pillow": Image.__version__}
    (out / "prepare.json").write_text(json.dumps({**summary, "samples_per_class": totals["labels"]}, indent=1))
    return summary


def prepare_from_config(cfg: Any, source: str | None, jobs: int) -> dict[str, Any]:
    """The CLI's entry: SD19 from `--from` or data.femnist.sd19_url; shards into <data.root>/femnist/prepared."""
    from fedplug.data import cache_dir

    f = cfg.data.femnist
    root = cache_dir(cfg) / "femnist"
    sums = {n: getattr(f, f"sd19_{n}_sha256") for n in ("by_class", "by_write") if getattr(f, f"sd19_{n}_sha256")}
    summary = prepare_femnist(source or f.sd19_url, root / "prepared", root / "sd19", sums,
                              jobs or os.cpu_count() or 1, shard_pattern=f.shard_pattern)
    more = "" if summary["shards"] == f.num_shards else f" data.femnist.num_shards {summary['shards']}"
    # data.type femnist reads <data.root>/femnist/prepared when data.femnist.url is empty
    summary["next"] = f"fedplug data stats femnist data.root {cache_dir(cfg)}{more}"
    print(f"fedplug: FEMNIST shards ready; use them with: {summary['next']}", file=sys.stderr)
    return summary
