"""`fedplug data prepare femnist` on a small SD19-shaped fixture the tests generate.

The fixture is NOT NIST data: a few writers, a few random-stroke 128x128 PNGs per class, filed like SD19
(`by_class/<hex>/hsf_N/` and `by_write/hsf_N/<writer>/<kind>/`, the same bytes in both trees), as
extracted trees and as zips whose members are shuffled. It also has what LEAF's matching must get
right: a `train_<hex>` copy and a `.mit` file (ignored), bytes filed under two classes (smallest label
wins) and a by_write image without a by_class twin (skipped, counted).
"""
from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import random
import shutil
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

Image = pytest.importorskip("PIL.Image")
from PIL import ImageDraw  # noqa: E402

from fedplug.cli import main  # noqa: E402
from fedplug.data import femnist_prepare, femnist_sd19  # noqa: E402
from fedplug.data.femnist_prepare import convert_png, prepare_femnist  # noqa: E402
from fedplug.data.femnist_sd19 import ZipSource, class_index, hex_label  # noqa: E402
from fedplug.errors import DataError  # noqa: E402

KINDS = {range(0, 10): "d", range(10, 36): "u", range(36, 62): "l"}  # SD19's digit/upper/lower folders
CLASSES = ["30", "37", "41", "5a", "61", "7a"]  # '0', '7', 'A', 'Z', 'a', 'z'
WRITERS = [("hsf_0", "f0000_14"), ("hsf_0", "f0003_41"), ("hsf_1", "f0500_07"), ("hsf_4", "f2100_33"),
           ("hsf_6", "f3000_10")]


def _png(rng: random.Random, mode: str) -> bytes:
    """A 128x128 'character': black strokes on white, saved as PNG (mode RGB, L or 1)."""
    img = Image.new("L", (128, 128), 255)
    draw = ImageDraw.Draw(img)
    for _ in range(3):
        draw.line([(rng.randrange(20, 108), rng.randrange(20, 108)) for _ in range(3)], fill=0, width=rng.randrange(3, 9))
    buf = io.BytesIO()
    img.convert(mode).save(buf, "PNG")
    return buf.getvalue()


def make_sd19(root: Path, corrupt: bool = False) -> dict:
    """Write the fixture as trees (root/tree) and zips (root/zips); return the truth:
    {writer: [(by_write path, label, png bytes)] in path order, matched images only}."""
    rng = random.Random(7)
    files: dict[str, bytes] = {}
    truth: dict[str, list] = {}
    counters: dict[str, int] = {}

    def by_class(hx: str, part: str, data: bytes) -> None:
        n = counters[hx + part] = counters.get(hx + part, -1) + 1
        files[f"by_class/{hx}/{part}/{part}_{n:05d}.png"] = data

    for part, writer in WRITERS:
        for hx in CLASSES:
            label = hex_label(hx)
            kind = next(k for r, k in KINDS.items() if label in r) + writer[1:]
            for j in range(rng.randrange(0, 3) + (writer == WRITERS[0][1])):  # the first writer has every class
                data = _png(rng, rng.choice(["RGB", "L", "1"]))
                path = f"by_write/{part}/{writer}/{kind}/{kind}_{label:02d}{j:03d}.png"
                files[path] = data
                by_class(hx, part, data)
                truth.setdefault(writer, []).append((path, label, data))
    w0 = truth["f0000_14"]
    lower = next(item for item in w0 if item[1] == 36)
    files["by_class/30/train_30/train_30_00000.png"] = lower[2]  # LEAF reads hsf_N only: must stay 'a'
    files["by_class/30/hsf_0.mit"] = b"30 hsf_0 listing"
    upper = next(item for item in w0 if item[1] == 10)
    by_class("61", "hsf_0", upper[2])  # the same bytes as 'A' and 'a': the smaller label, 10, wins
    files["by_write/hsf_0/f0000_14/l0000_14/l0000_14_99999.png"] = _png(rng, "L")  # no by_class twin
    if corrupt:
        bad = w0[0]
        bad_bytes = b"\x89PNG\r\n\x1a\n" + b"not really a png"
        files = {k: (bad_bytes if v == bad[2] else v) for k, v in files.items()}
    for writer in truth:
        truth[writer].sort()
    for path, data in files.items():
        (root / "tree" / path).parent.mkdir(parents=True, exist_ok=True)
        (root / "tree" / path).write_bytes(data)
    (root / "zips").mkdir(parents=True, exist_ok=True)
    for name in ("by_class", "by_write"):
        members = [p for p in files if p.startswith(name + "/")]
        random.Random(1).shuffle(members)  # member order must not matter
        with zipfile.ZipFile(root / "zips" / f"{name}.zip", "w", zipfile.ZIP_DEFLATED) as z:
            for p in members:
                z.writestr(p, files[p])
    return truth


@pytest.fixture(scope="module")
def sd19(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("sd19")
    return root, make_sd19(root)


def _prepare(src: Path | str, out: Path, **kw) -> dict:
    return prepare_femnist(str(src), out, out.parent / "downloads", **{"writers_per_shard": 2, **kw})


def _shards(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("all_data_*.json"))}


def _leaf_by_hand(png: bytes) -> list[float]:
    """LEAF's data_to_json.py steps, written out with Pillow and NumPy."""
    gray = Image.open(io.BytesIO(png)).convert("L")
    gray.thumbnail((28, 28), Image.Resampling.LANCZOS)  # LEAF: Image.ANTIALIAS, LANCZOS's old name
    return (np.asarray(gray).copy().flatten() / 255).tolist()


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fedplug: error: ")
    return err[0]


# ---------------------------------------------------------------- matching

def test_hex_labels_follow_leaf():
    assert [hex_label(h) for h in ("30", "39", "41", "5a", "61", "7a", "4A")] == [0, 9, 10, 35, 36, 61, 19]
    assert hex_label("2f") is None and hex_label("5b") is None and hex_label("7b") is None


def test_class_index_joins_on_md5_of_hsf_files_only(sd19):
    root, truth = sd19
    index, clashes = class_index(ZipSource(root / "zips" / "by_class.zip"))
    for writer, items in truth.items():
        for _, label, data in items:
            assert index[hashlib.md5(data).digest()] == label
    assert clashes == 1  # the 'A' image also filed under 'a'
    assert len(index) == sum(map(len, truth.values()))  # train_30 copy and .mit file not indexed apart


# ---------------------------------------------------------------- conversion

def test_conversion_is_leafs_pixel_for_pixel(sd19):
    _, truth = sd19
    for _, _, data in truth["f0000_14"] + truth["f2100_33"]:
        by_hand = _leaf_by_hand(data)
        assert len(by_hand) == 784 and max(by_hand) == 1.0  # white background = 1.0
        assert [b / 255 for b in convert_png(data)] == by_hand
        assert json.loads(femnist_prepare.convert_batch([("x", data)])[0]) == by_hand


# ---------------------------------------------------------------- shards

def test_shards_group_writers_with_labels_and_pixels(sd19, tmp_path):
    root, truth = sd19
    summary = _prepare(root / "zips", tmp_path / "out")
    writers = sorted(truth)
    assert summary["shards"] == 3 and summary["writers"] == 5 and summary["unmatched_images"] == 1
    assert summary["samples"] == sum(map(len, truth.values())) and summary["hashes_in_several_classes"] == 1
    assert summary["classes"] == len(CLASSES)
    seen = []
    for name, text in _shards(tmp_path / "out").items():
        doc = json.loads(text)
        assert json.dumps(doc).encode() == text  # exactly what LEAF's json.dump writes
        assert list(doc) == ["users", "num_samples", "user_data"]
        seen += doc["users"]
        for user, n in zip(doc["users"], doc["num_samples"]):
            entry = doc["user_data"][user]
            assert n == len(truth[user]) == len(entry["x"]) == len(entry["y"])
            assert entry["y"] == [label for _, label, _ in truth[user]]
            assert entry["x"] == [_leaf_by_hand(data) for _, _, data in truth[user]]
    assert seen == writers  # sorted writers, two per shard
    assert [len(json.loads(t)["users"]) for t in _shards(tmp_path / "out").values()] == [2, 2, 1]


def test_trees_and_a_process_pool_give_the_same_bytes(sd19, tmp_path):
    root, _ = sd19
    _prepare(root / "zips", tmp_path / "a", jobs=1)
    _prepare(root / "tree", tmp_path / "b", jobs=2)
    assert _shards(tmp_path / "a") == _shards(tmp_path / "b") != {}


def test_interrupted_preparation_resumes_to_identical_shards(sd19, tmp_path, monkeypatch):
    root, truth = sd19
    _prepare(root / "zips", tmp_path / "clean")
    monkeypatch.setattr(femnist_prepare, "BATCH", 2)
    real, calls = femnist_prepare.convert_batch, []

    first_shard = sum(len(truth[w]) for w in sorted(truth)[:2])
    assert sum(len(truth[w]) for w in sorted(truth)[2:4]) > 2 * 2

    def flaky(items):
        calls.append([name for name, _ in items])
        if len(calls) == -(-first_shard // 2) + 2:  # the second batch of the second shard
            raise KeyboardInterrupt
        return real(items)

    monkeypatch.setattr(femnist_prepare, "convert_batch", flaky)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        _prepare(root / "zips", out)
    first = out / "all_data_0.json"
    done = (first.stat().st_ino, first.stat().st_mtime_ns)
    assert not (out / "all_data_1.json").exists() and (out / "all_data_1.json.body.part").exists()
    calls.clear()
    monkeypatch.setattr(femnist_sd19, "class_index", None)  # the saved by_class index must be reused
    _prepare(root / "zips", out)
    assert (first.stat().st_ino, first.stat().st_mtime_ns) == done  # the finished shard was kept
    redone = {name.split("/")[2] for batch in calls for name in batch}
    assert redone == set(sorted(truth)[2:])  # only the writers of unfinished shards were converted again
    assert _shards(out) == _shards(tmp_path / "clean")
    assert not list(out.glob("*.part"))


def test_another_plan_in_the_same_folder_starts_over(sd19, tmp_path):
    root, truth = sd19
    out = tmp_path / "out"
    _prepare(root / "zips", out)
    assert len(_shards(out)) == 3
    summary = _prepare(root / "tree", out, writers_per_shard=100)  # same images, other shard size
    assert summary["shards"] == 1 and list(_shards(out)) == ["all_data_0.json"]
    assert json.loads((out / "all_data_0.json").read_text())["users"] == sorted(truth)


# ---------------------------------------------------------------- fetching over HTTP

class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_fetch_over_loopback_http_with_checksums(sd19, tmp_path):
    root, _ = sd19
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root / "zips")))
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/"
        sums = {n: hashlib.sha256((root / "zips" / f"{n}.zip").read_bytes()).hexdigest()
                for n in ("by_class", "by_write")}
        with pytest.raises(DataError, match="checksum mismatch"):
            _prepare(url, tmp_path / "bad", sha256={**sums, "by_write": "0" * 64})
        _prepare(url, tmp_path / "out", sha256=sums)
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)
    assert (tmp_path / "downloads" / "by_write.zip").read_bytes() == (root / "zips" / "by_write.zip").read_bytes()
    _prepare(root / "zips", tmp_path / "local")
    assert _shards(tmp_path / "out") == _shards(tmp_path / "local")


# ---------------------------------------------------------------- errors

def test_corrupt_png_is_one_clear_error(tmp_path, capsys):
    make_sd19(tmp_path, corrupt=True)
    with pytest.raises(DataError, match=r"by_write/hsf_0/f0000_14/.*\.png is not a readable PNG"):
        _prepare(tmp_path / "tree", tmp_path / "out")
    args = ["data", "prepare", "femnist", "--from", str(tmp_path / "zips"), "--jobs", "2", "data.root", str(tmp_path)]
    assert main(args) == 2
    assert "is not a readable PNG" in _one_error_line(capsys)


def test_truncated_zip_is_one_clear_error(sd19, tmp_path, capsys):
    root, _ = sd19
    shutil.copy(root / "zips" / "by_class.zip", tmp_path)
    data = (root / "zips" / "by_write.zip").read_bytes()
    (tmp_path / "by_write.zip").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="by_write.zip is not a complete zip archive"):
        _prepare(tmp_path, tmp_path / "out")
    assert main(["data", "prepare", "femnist", "--from", str(tmp_path), "data.root", str(tmp_path)]) == 2
    assert "not a complete zip archive" in _one_error_line(capsys)


def test_prepare_of_another_data_set_is_refused(tmp_path, capsys):
    assert main(["data", "prepare", "shakespeare", "data.root", str(tmp_path)]) == 2
    assert "only femnist" in _one_error_line(capsys)


def test_without_pillow_the_command_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)
    assert main(["data", "prepare", "femnist", "--from", str(tmp_path), "data.root", str(tmp_path)]) == 2
    assert "pip install 'fedplug[femnist]'" in _one_error_line(capsys)


# ---------------------------------------------------------------- the prepared folder through data.type femnist

def test_cli_prepare_then_the_existing_loader_and_stats(sd19, tmp_path, capsys):
    from fedplug.config import load_config
    from fedplug.data import build_data

    root, truth = sd19
    cache = tmp_path / "cache"
    assert main(["data", "prepare", "femnist", "--from", str(root / "zips"), "--jobs", "1", "data.root", str(cache)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    out = cache / "femnist" / "prepared"
    assert summary["folder"] == str(out) and summary["shards"] == 1 and summary["writers"] == len(truth)
    assert summary["next"] == f"fedplug data stats femnist data.root {cache} data.femnist.num_shards 1"
    # data.femnist.url left empty (as in the reference configs): the prepared folder is read
    cfg = load_config(None, {"data.type": "femnist", "data.root": str(cache), "data.femnist.num_shards": 1,
                             "data.subsample": 1.0})
    data = build_data(cfg)
    assert data.num_clients == len(truth) and data.num_classes == 62
    for c, writer in enumerate(sorted(truth)):
        labels = np.concatenate([data.splits[s].client(c)[1].numpy() for s in ("train", "val", "test")])
        assert sorted(labels.tolist()) == sorted(label for _, label, _ in truth[writer])
    assert main(["data", "stats", "femnist", "data.root", str(cache), "data.femnist.url", str(out),
                 "data.femnist.num_shards", "1"]) == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (stats["clients"], stats["samples"], stats["classes"]) == (len(truth), summary["samples"], 62)
