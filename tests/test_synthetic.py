import dataclasses
import hashlib
import json
import logging
import pathlib

import numpy as np
import pytest

from fedplug.data import synthetic
from fedplug.data.synthetic import SplitArrays, SyntheticParams, generate_synthetic, load_or_generate

REFERENCE = pathlib.Path(__file__).parent / "data" / "fs_synthetic_reference.json"
SMALL = SyntheticParams(num_clients=10, dim=5, test_size=50, val_size=50)


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads(REFERENCE.read_text())


@pytest.fixture(scope="module")
def full() -> dict[str, SplitArrays]:
    # Generated once per session: ~6 s and ~1.8 GB.
    return generate_synthetic(SyntheticParams())


def per_client_pos_rate(split: SplitArrays) -> np.ndarray:
    o = split.offsets
    return np.array([split.y[o[c]:o[c + 1]].mean() for c in range(len(o) - 1)])


def assert_splits_equal(a: dict[str, SplitArrays], b: dict[str, SplitArrays]) -> None:
    assert a.keys() == b.keys() == {"train", "val", "test"}
    for k in a:
        for field in ("x", "y", "offsets"):
            np.testing.assert_array_equal(getattr(a[k], field), getattr(b[k], field))


def test_reference_train_sizes(full, reference):
    assert np.diff(full["train"].offsets).tolist() == reference["train_sizes"]


def test_reference_pos_rates(full, reference):
    np.testing.assert_allclose(per_client_pos_rate(full["train"]), reference["train_pos_rate"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(per_client_pos_rate(full["test"]), reference["test_pos_rate"], rtol=0, atol=1e-6)


def test_reference_train_sha256(full, reference):
    train, h = full["train"], hashlib.sha256()
    for c in range(len(train.offsets) - 1):
        rows = slice(train.offsets[c], train.offsets[c + 1])
        h.update(np.ascontiguousarray(train.x[rows], dtype=np.float32).tobytes())
        h.update(np.ascontiguousarray(train.y[rows], dtype=np.int64).tobytes())
    assert h.hexdigest() == reference["train_sha256_float32_int64"]


def test_reference_quirk_positive_rate(full):
    # The overwrite quirk leaves many rows at label 0: ~0.367 averaged over clients.
    assert per_client_pos_rate(full["train"]).mean() == pytest.approx(0.367, abs=0.001)
    assert full["train"].y.mean() == pytest.approx(0.374, abs=0.001)


def test_corrected_changes_labels_not_x():
    params = dataclasses.replace(SMALL, num_clients=50, dim=20)
    quirky = generate_synthetic(params)
    fixed = generate_synthetic(dataclasses.replace(params, corrected=True))
    for k in quirky:
        np.testing.assert_array_equal(quirky[k].x, fixed[k].x)
        np.testing.assert_array_equal(quirky[k].offsets, fixed[k].offsets)
    assert not np.array_equal(quirky["train"].y, fixed["train"].y)
    assert fixed["train"].y.mean() > quirky["train"].y.mean() + 0.02


@pytest.mark.parametrize("corrected", [False, True])
def test_shapes_and_offsets(corrected):
    data = generate_synthetic(dataclasses.replace(SMALL, corrected=corrected))
    assert set(data) == {"train", "val", "test"}
    for name, split in data.items():
        assert split.x.dtype == np.float32 and split.x.flags.c_contiguous
        assert split.y.dtype == np.int64 and split.offsets.dtype == np.int64
        assert split.offsets.shape == (SMALL.num_clients + 1,) and split.offsets[0] == 0
        assert np.all(np.diff(split.offsets) > 0)
        assert split.x.shape == (split.offsets[-1], SMALL.dim) and split.y.shape == (split.offsets[-1],)
        assert set(np.unique(split.y)) <= {0, 1}
        assert np.abs(split.x).max() <= 1.0
    assert np.all(np.diff(data["val"].offsets) == SMALL.val_size)
    assert np.all(np.diff(data["test"].offsets) == SMALL.test_size)
    assert np.all((np.diff(data["train"].offsets) >= 50) & (np.diff(data["train"].offsets) <= 1000))


def test_deterministic_and_seed_dependent():
    assert_splits_equal(generate_synthetic(SMALL), generate_synthetic(SMALL))
    other = generate_synthetic(dataclasses.replace(SMALL, seed=1))
    assert not np.array_equal(other["test"].x, generate_synthetic(SMALL)["test"].x)


def cache_folders(root: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in root.iterdir() if p.name.startswith("synthetic-"))


def refuse_generation(monkeypatch):
    def fail(params):
        raise AssertionError("should have loaded from cache")

    monkeypatch.setattr(synthetic, "generate_synthetic", fail)


def test_cache_writes_then_loads(tmp_path, monkeypatch):
    first = load_or_generate(SMALL, tmp_path)
    [folder] = cache_folders(tmp_path)
    names = {p.name for p in folder.iterdir()}
    assert names == {"meta.json"} | {f"{s}_{f}.npy" for s in ("train", "val", "test") for f in ("x", "y", "offsets")}
    assert_splits_equal(first, generate_synthetic(SMALL))

    refuse_generation(monkeypatch)
    second = load_or_generate(SMALL, tmp_path)
    assert_splits_equal(first, second)
    assert second["train"].x.flags.writeable  # copy-on-write map, torch-friendly


def test_cache_key_depends_on_params(tmp_path):
    load_or_generate(SMALL, tmp_path)
    load_or_generate(dataclasses.replace(SMALL, corrected=True), tmp_path)
    load_or_generate(dataclasses.replace(SMALL, seed=7), tmp_path)
    assert len(cache_folders(tmp_path)) == 3


@pytest.mark.parametrize("damage", ["truncate", "garble_header"])
def test_cache_corrupt_file_regenerates(tmp_path, caplog, damage):
    load_or_generate(SMALL, tmp_path)
    [folder] = cache_folders(tmp_path)
    bad = folder / "val_x.npy"
    raw = bad.read_bytes()
    bad.write_bytes(raw[: len(raw) // 2] if damage == "truncate" else b"garbage!" + raw[8:])

    with caplog.at_level(logging.WARNING, logger="fedplug.data"):
        data = load_or_generate(SMALL, tmp_path)
    assert any("val_x.npy" in r.getMessage() for r in caplog.records)
    assert_splits_equal(data, generate_synthetic(SMALL))
    assert bad.read_bytes() == raw  # the cache was rewritten intact


def test_cache_without_meta_is_not_trusted(tmp_path, monkeypatch):
    load_or_generate(SMALL, tmp_path)
    [folder] = cache_folders(tmp_path)
    (folder / "meta.json").unlink()
    calls = []
    real = synthetic.generate_synthetic
    monkeypatch.setattr(synthetic, "generate_synthetic", lambda p: calls.append(p) or real(p))
    assert_splits_equal(load_or_generate(SMALL, tmp_path), real(SMALL))
    assert calls == [SMALL]
    assert (folder / "meta.json").exists()


@pytest.mark.parametrize("name", ["val_x.npy", "train_offsets.npy", "test_y.npy"])
def test_cache_random_bytes_of_the_same_size_are_detected(tmp_path, caplog, name):
    """Bytes overwritten in place (size and header intact) fail meta.json's SHA-256: the folder is regenerated."""
    load_or_generate(SMALL, tmp_path)
    [folder] = cache_folders(tmp_path)
    bad = folder / name
    raw = bad.read_bytes()
    with open(bad, "r+b") as f:
        f.seek(len(raw) - 16)  # not the last offset: that one is checked against the row count
        f.write(np.random.default_rng(0).bytes(8))
    assert bad.stat().st_size == len(raw) and bad.read_bytes() != raw

    with caplog.at_level(logging.WARNING, logger="fedplug.data"):
        data = load_or_generate(SMALL, tmp_path)
    assert any(name in r.getMessage() and "regenerating" in r.getMessage() for r in caplog.records)
    assert_splits_equal(data, generate_synthetic(SMALL))
    assert bad.read_bytes() == raw


def test_cache_without_checksums_is_regenerated(tmp_path, caplog):
    load_or_generate(SMALL, tmp_path)
    [folder] = cache_folders(tmp_path)
    meta = json.loads((folder / "meta.json").read_text())
    del meta["sha256"]  # as an older fedplug wrote it
    (folder / "meta.json").write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING, logger="fedplug.data"):
        load_or_generate(SMALL, tmp_path)
    assert any("no SHA-256" in r.getMessage() for r in caplog.records)
    assert "sha256" in json.loads((folder / "meta.json").read_text())
