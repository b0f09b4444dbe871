"""FEMNIST downloader and loader, against a loopback HTTP server and tiny hand-built shards.

All shards here are TEST FIXTURES in the LEAF json layout (2-3 writers, a few 784-pixel rows);
none of it is real FEMNIST data.
"""
from __future__ import annotations

import hashlib
import http.server
import json
import math
import threading
from pathlib import Path

import numpy as np
import torch
import pytest

from fedplug.data.download import download
from fedplug.data.femnist import (MEAN, PIXELS, STD, fetch_femnist, load_femnist, load_leaf_shards,
                                  split_writers, subsample_shards)
from fedplug.errors import DataError


# ---------------------------------------------------------------- loopback server

class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves `server.files`; honours `Range: bytes=N-` when `server.honour_range`; when
    `server.cut_after` is set, sends the full Content-Length but closes after that many bytes."""

    timeout = 5

    def log_message(self, *args):  # keep pytest output quiet
        pass

    def do_GET(self):
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        body = srv.files.get(self.path.lstrip("/"))
        if body is None:
            self.send_error(404, "not found")
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and srv.honour_range and rng.startswith("bytes=") and rng.endswith("-"):
            start = int(rng[len("bytes="):-1])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        cut = srv.cut_after
        if cut is not None:
            srv.cut_after = None  # only the first request is interrupted
            self.wfile.write(payload[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(payload)


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.files, srv.requests, srv.honour_range, srv.cut_after = {}, [], True, None
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


# ---------------------------------------------------------------- tiny fixture shards

def _fixture_shard(seed: int, sizes: list[int], prefix: str) -> dict:
    """A TEST FIXTURE in LEAF layout (not real FEMNIST): random pixels in [0, 1], labels 0..61."""
    r = np.random.default_rng(seed)
    users = [f"{prefix}_w{i}" for i in range(len(sizes))]
    data = {u: {"x": np.round(r.random((n, PIXELS)), 3).tolist(), "y": r.integers(0, 62, n).tolist()}
            for u, n in zip(users, sizes)}
    return {"users": users, "num_samples": sizes, "user_data": data}


def _write(path: Path, doc) -> Path:
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return path


@pytest.fixture
def shards(tmp_path):
    a = _write(tmp_path / "a.json", _fixture_shard(1, [10, 5, 7], "a"))
    b = _write(tmp_path / "b.json", _fixture_shard(2, [4, 9], "b"))
    return [a, b]


# ---------------------------------------------------------------- download()

def test_download_full_with_checksum(server, tmp_path):
    body = bytes(range(256)) * 400
    server.files["f.bin"] = body
    dest = download(f"{server.url}/f.bin", tmp_path / "f.bin", hashlib.sha256(body).hexdigest(), chunk=4096)
    assert dest.read_bytes() == body
    assert not (tmp_path / "f.bin.part").exists()
    assert server.requests == [("/f.bin", None)]


def test_download_interrupted_then_resumed(server, tmp_path):
    body = np.random.default_rng(0).bytes(50_000)
    server.files["f.bin"] = body
    server.cut_after = 12_345
    dest = tmp_path / "f.bin"
    with pytest.raises(DataError, match="kept for resume") as exc:
        download(f"{server.url}/f.bin", dest, hashlib.sha256(body).hexdigest(), chunk=1024)
    assert f"{server.url}/f.bin" in str(exc.value)
    part = tmp_path / "f.bin.part"
    assert part.stat().st_size == 12_345 and not dest.exists()
    download(f"{server.url}/f.bin", dest, hashlib.sha256(body).hexdigest(), chunk=1024)
    assert server.requests[-1] == ("/f.bin", "bytes=12345-")
    assert dest.read_bytes() == body
    assert not part.exists()


def test_resume_restarts_when_server_ignores_range(server, tmp_path):
    body = b"0123456789" * 1000
    server.files["f.bin"] = body
    server.honour_range = False
    (tmp_path / "f.bin.part").write_bytes(b"garbage-prefix")
    dest = download(f"{server.url}/f.bin", tmp_path / "f.bin", hashlib.sha256(body).hexdigest())
    assert server.requests[-1][1] == "bytes=14-"  # asked to resume, got a 200 and restarted
    assert dest.read_bytes() == body


def test_download_checksum_mismatch_leaves_nothing(server, tmp_path):
    server.files["f.bin"] = b"payload" * 100
    wrong = "0" * 64
    with pytest.raises(DataError) as exc:
        download(f"{server.url}/f.bin", tmp_path / "f.bin", wrong)
    msg = str(exc.value)
    assert f"{server.url}/f.bin" in msg and wrong in msg
    assert hashlib.sha256(b"payload" * 100).hexdigest() in msg
    assert list(tmp_path.iterdir()) == []


def test_download_404_names_url(server, tmp_path):
    with pytest.raises(DataError, match="404") as exc:
        download(f"{server.url}/missing.json", tmp_path / "missing.json")
    assert f"{server.url}/missing.json" in str(exc.value)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- fetch_femnist()

def test_fetch_femnist_downloads_into_cache(server, tmp_path, shards):
    for p in shards:
        server.files[p.name] = p.read_bytes()
    sums = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in shards}
    got = fetch_femnist(server.url + "/", [p.name for p in shards], tmp_path / "cache", sums)
    assert got == [tmp_path / "cache" / "femnist" / p.name for p in shards]
    assert [g.read_bytes() for g in got] == [p.read_bytes() for p in shards]


def test_fetch_femnist_corrupt_shard_leaves_cache_clean(server, tmp_path):
    server.files["bad.json"] = b'{"users": ["a"], "user_data": {'  # truncated json
    with pytest.raises(DataError, match="corrupt") as exc:
        fetch_femnist(server.url, ["bad.json"], tmp_path / "cache")
    assert "bad.json" in str(exc.value)
    assert list((tmp_path / "cache" / "femnist").iterdir()) == []
    with pytest.raises(DataError, match="checksum"):
        fetch_femnist(server.url, ["bad.json"], tmp_path / "cache", {"bad.json": "1" * 64})
    assert list((tmp_path / "cache" / "femnist").iterdir()) == []


# ---------------------------------------------------------------- load_leaf_shards()

def test_load_leaf_shards_writers_shapes_dtypes(shards):
    writers = load_leaf_shards(shards)
    assert [w for w, _, _ in writers] == ["a_w0", "a_w1", "a_w2", "b_w0", "b_w1"]
    assert [len(x) for _, x, _ in writers] == [10, 5, 7, 4, 9]
    for _, x, y in writers:
        assert x.dtype == np.float32 and x.shape[1] == PIXELS
        assert y.dtype == np.int64 and y.shape == (len(x),)
    doc = json.loads(shards[1].read_text())
    np.testing.assert_allclose(writers[4][1], np.asarray(doc["user_data"]["b_w1"]["x"], np.float32))
    assert writers[4][2].tolist() == doc["user_data"]["b_w1"]["y"]


@pytest.mark.parametrize("doc", [
    "{not json",
    {"users": ["u"]},  # missing user_data
    {"users": ["u"], "user_data": {"u": {"x": [[0.5] * 10], "y": [1]}}},  # wrong row width
    {"users": ["u"], "user_data": {"u": {"x": [[0.5] * PIXELS]}}},  # missing y
])
def test_load_leaf_shards_malformed_names_file(tmp_path, shards, doc):
    bad = _write(tmp_path / "broken_shard.json", doc)
    with pytest.raises(DataError, match="broken_shard.json"):
        load_leaf_shards([shards[0], bad])


# ---------------------------------------------------------------- split_writers()

def test_split_writers_sizes_normalization_partition(shards):
    writers = load_leaf_shards(shards)
    splits = split_writers(writers, np.random.default_rng(0))
    n = [len(y) for _, _, y in writers]  # [10, 5, 7, 4, 9]
    train = [math.floor(0.6 * k + 1e-9) for k in n]
    val = [math.floor(0.8 * k + 1e-9) - t for k, t in zip(n, train)]
    assert splits["train"].sizes() == train == [6, 3, 4, 2, 5]
    assert splits["val"].sizes() == val == [2, 1, 1, 1, 2]
    assert splits["test"].sizes() == [k - t - v for k, t, v in zip(n, train, val)]
    for c, (_, x, y) in enumerate(writers):
        # un-normalize each split's rows and check they partition the writer's rows exactly
        rows = np.concatenate([splits[s].client(c)[0].numpy() * STD + MEAN for s in ("train", "val", "test")])
        labels = np.concatenate([splits[s].client(c)[1].numpy() for s in ("train", "val", "test")])
        order_got = np.lexsort(rows.T[::-1])
        order_ref = np.lexsort(x.T[::-1])
        np.testing.assert_allclose(rows[order_got], x[order_ref], atol=1e-5)
        assert labels[order_got].tolist() == y[order_ref].tolist()
    all_x = np.concatenate([x for _, x, _ in writers])
    got_x = np.concatenate([splits[s].x.numpy() for s in ("train", "val", "test")])
    assert abs(got_x.mean() - (all_x.mean() - MEAN) / STD) < 1e-3  # normalization applied
    assert splits["train"].x.dtype.is_floating_point and str(splits["train"].y.dtype) == "torch.int64"


def test_split_writers_deterministic_per_seed(shards):
    writers = load_leaf_shards(shards)
    a = split_writers(writers, np.random.default_rng(7))
    b = split_writers(writers, np.random.default_rng(7))
    c = split_writers(writers, np.random.default_rng(8))
    assert all(np.array_equal(a[s].x.numpy(), b[s].x.numpy()) and a[s].offsets == b[s].offsets for s in a)
    assert not np.array_equal(a["train"].x.numpy(), c["train"].x.numpy())


# ---------------------------------------------------------------- subsample_shards()

@pytest.mark.parametrize("n,fraction", [(36, 0.05), (20, 0.05), (10, 0.5), (7, 0.3), (5, 1.0)])
def test_subsample_shards_seeded_count(n, fraction):
    paths = [Path(f"all_data_{i}.json") for i in range(n)]
    a = subsample_shards(paths, fraction, np.random.default_rng(3))
    assert len(a) == math.ceil(round(fraction * n, 9))
    assert a == subsample_shards(paths, fraction, np.random.default_rng(3))
    assert len(set(a)) == len(a) and set(a) <= set(paths)
    assert a == sorted(a, key=paths.index)  # kept in the given order
    if len(a) < n:
        picks = {tuple(subsample_shards(paths, fraction, np.random.default_rng(s))) for s in range(20)}
        assert len(picks) > 1  # the seed matters


def test_subsample_shards_rejects_bad_fraction():
    with pytest.raises(DataError):
        subsample_shards([Path("a")], 0.0, np.random.default_rng(0))


# ---------------------------------------------------------------- load_femnist() end to end

def test_load_femnist_builds_and_caches(server, tmp_path, shards):
    for p in shards:
        server.files[p.name] = p.read_bytes()
    names = [p.name for p in shards]
    cache = tmp_path / "cache"
    data = load_femnist(server.url, names, cache, fraction=1.0, seed=0)
    assert data.num_clients == 5 and data.input_shape == (PIXELS,) and data.num_classes == 62
    n_requests = len(server.requests)
    again = load_femnist(server.url, names, cache, fraction=1.0, seed=0)
    assert len(server.requests) == n_requests  # served from cache, nothing fetched
    assert all(np.array_equal(data.splits[s].x.numpy(), again.splits[s].x.numpy()) for s in data.splits)
    other = load_femnist(server.url, names, cache, fraction=1.0, seed=1)
    assert len(list((cache / "femnist" / "built").glob("*.npz"))) == 2  # keyed by seed
    assert not np.array_equal(other.splits["train"].x.numpy(), data.splits["train"].x.numpy())


# ---------------------------------------------------------------- data.type femnist from the config

def _femnist_cfg(tmp_path, url: str, **more):
    from fedplug.config import load_config

    return load_config(None, {"data.type": "femnist", "data.root": str(tmp_path / "cache"), "data.femnist.url": url,
                              "data.femnist.num_shards": 2, "data.femnist.shard_pattern": "shard_{}.json",
                              "data.subsample": 1.0, **more})


def test_femnist_data_type_downloads_verifies_and_matches_a_local_folder(server, tmp_path):
    from fedplug.data import build_data

    folder = tmp_path / "leaf"
    folder.mkdir()
    for i, sizes in enumerate([[10, 5, 7], [4, 9]]):
        server.files[f"shard_{i}.json"] = _write(folder / f"shard_{i}.json", _fixture_shard(i, sizes, f"s{i}")).read_bytes()
    sums = tmp_path / "SHA256SUMS"
    sums.write_text("".join(f"{hashlib.sha256(server.files[n]).hexdigest()}  {n}\n" for n in sorted(server.files)))
    remote = build_data(_femnist_cfg(tmp_path, server.url, **{"data.femnist.checksums": str(sums)}))
    local = build_data(_femnist_cfg(tmp_path, str(folder)))
    assert remote.num_clients == local.num_clients == 5 and remote.num_classes == 62
    assert all(torch.equal(remote.splits[s].x, local.splits[s].x) for s in remote.splits)
    sums.write_text(f"{'0' * 64}  shard_0.json\n")
    with pytest.raises(DataError, match="sha256"):
        build_data(_femnist_cfg(tmp_path, str(folder), **{"data.femnist.checksums": str(sums), "data.femnist.seed": 1}))


def test_femnist_without_a_url_or_shard_says_what_to_do(tmp_path):
    from fedplug.data import build_data

    with pytest.raises(DataError, match="data.femnist.url is empty and no prepared FEMNIST.*mnist_standin"):
        build_data(_femnist_cfg(tmp_path, ""))
    with pytest.raises(DataError, match="shard_0.json does not exist"):
        build_data(_femnist_cfg(tmp_path, str(tmp_path)))


def test_shards_written_again_in_a_local_folder_are_built_again(tmp_path):
    """The built-array cache is keyed by each local shard's size and mtime, not only the folder's path."""
    import os

    from fedplug.data import build_data

    folder = tmp_path / "leaf"
    folder.mkdir()
    for i, sizes in enumerate([[10, 5, 7], [4, 9]]):
        _write(folder / f"shard_{i}.json", _fixture_shard(i, sizes, f"s{i}"))
    first = build_data(_femnist_cfg(tmp_path, str(folder)))
    path = _write(folder / "shard_1.json", _fixture_shard(7, [4, 9], "s1"))  # same size class, new pixels
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    second = build_data(_femnist_cfg(tmp_path, str(folder)))
    assert not torch.equal(first.splits["train"].x, second.splits["train"].x)
    assert len(list((tmp_path / "cache" / "femnist" / "built").glob("*.npz"))) == 2


def test_built_cache_with_damaged_bytes_is_rebuilt(server, tmp_path, shards, caplog):
    """Bytes overwritten in the built .npz (same size) fail its CRC-32: logged, rebuilt, the same arrays."""
    import logging

    for p in shards:
        server.files[p.name] = p.read_bytes()
    names, cache = [p.name for p in shards], tmp_path / "cache"
    data = load_femnist(server.url, names, cache, fraction=1.0, seed=0)
    [built] = (cache / "femnist" / "built").glob("*.npz")
    raw = bytearray(built.read_bytes())
    raw[len(raw) // 2: len(raw) // 2 + 8] = b"\xff" * 8
    built.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING, logger="fedplug.data"):
        again = load_femnist(server.url, names, cache, fraction=1.0, seed=0)
    assert any("rebuilding" in r.getMessage() for r in caplog.records)
    assert all(np.array_equal(data.splits[s].x.numpy(), again.splits[s].x.numpy()) for s in data.splits)
