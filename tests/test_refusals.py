"""Mistakes that used to run silently wrong or end in a traceback: each is one `fedplug: error:` line, exit 2,
and a refused run leaves no run folder behind."""
from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Callable

import pytest

from conftest import SMALL


@pytest.fixture(autouse=True)
def no_registration_survives():
    """The first of two copies of a plug-in file registers its section and algorithm before the second is refused:
    take them back, or every config this process writes later holds a section other processes don't know."""
    import sys

    from fedplug.algorithms import registry
    from fedplug.config.schema import ROOT

    yield
    ROOT.entries.pop("twin_algo", None)
    registry._registered.pop("twin_algo", None)
    sys.modules.pop("twin_algo", None)
from fedplug.cli import main
from fedplug.run import checkpoint

PLUGIN = """
from fedplug.config import Key, Section, register_section
from fedplug.algorithms.registry import register_algorithm
from fedplug.core.plugin import Plugin

register_section("{name}", Section("test", {{"use": Key(False, "on")}}))


@register_algorithm
class Algo(Plugin):
    name = "{name}"
"""


def _write(path: Path, text: str | bytes) -> str:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


def _plugin(tmp: Path, stem: str, body: str) -> list[str]:
    return ["plugins", _write(tmp / f"{stem}.py", body)]


# (case id, args from the test's folder, what the one line must say)
CASES: list[tuple[str, Callable[[Path], list[str]], str]] = [
    ("method contradicts use", lambda t: ["federate.method", "FedProx", "fedprox.use", "False"],
     "federate.method FedProx switches fedprox on, but fedprox.use is False"),
    ("duplicate yaml key", lambda t: ["--cfg", _write(t / "dup.yaml", "train:\n  optimizer:\n    lr: 0.1\n"
                                                                 "seed: 1\ntrain:\n  local_update_steps: 2\n")],
     "duplicate key 'train' at line 5 of"),
    ("duplicate nested key", lambda t: ["--cfg", _write(t / "dup2.yaml", "federate:\n  total_round_num: 3\n"
                                                                   "  total_round_num: 4\n")],
     "duplicate key 'total_round_num' at line 3"),
    ("sample more than exist", lambda t: ["federate.sample_client_num", "13"],
     "federate.sample_client_num is 13 but there are 12 clients"),
    ("empty outdir", lambda t: ["outdir", ""], "config key 'outdir' must be a folder"),
    ("expname escapes outdir", lambda t: ["expname", "../../x"], "config key 'expname' must be a name without '/'"),
    ("binary cfg", lambda t: ["--cfg", _write(t / "model.bin", bytes(range(256)))], "is not a YAML text file"),
    ("folder as cfg", lambda t: ["--cfg", str(t)], "is a folder, not a config file"),
    ("convnet2 on synthetic", lambda t: ["model.type", "convnet2"],
     "model.type convnet2 cannot read the synthetic data (vectors of 150 features); use model.type lr"),
    ("lstm on synthetic", lambda t: ["model.type", "lstm"], "use model.type lr"),
    ("plug-in syntax error", lambda t: _plugin(t, "broken_syntax", "def f(:\n"),
     "broken_syntax.py, line 1: syntax error"),
    ("plug-in raises at import", lambda t: _plugin(t, "raises_at_import", "x = 1\nraise RuntimeError('no GPU')\n"),
     "raises_at_import.py, line 2: RuntimeError: no GPU"),
    ("plug-in takes fedprox", lambda t: _plugin(t, "takes_fedprox", PLUGIN.format(name="fedprox")),
     "config section 'fedprox' is already registered"),
    ("plug-in takes train", lambda t: _plugin(t, "takes_train", PLUGIN.format(name="train")),
     "config section 'train' is already registered"),
    ("two copies of a plug-in", lambda t: ["plugins", "[" + ",".join(
        _write(d / "twin_algo.py", PLUGIN.format(name="twin_algo")) for d in (t / "a", t / "b")
        if d.mkdir() is None) + "]"], "a module named 'twin_algo' is already loaded"),
]


@pytest.mark.parametrize("make_args, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_one_line_exit_2_no_run_folder(tmp_path: Path, data_root: Path, capsys, make_args, message: str) -> None:
    outdir = tmp_path / "runs"
    base = [w for key, value in SMALL.items() for w in (key, str(value))]
    argv = make_args(tmp_path)
    cfg = argv[:2] if argv[:1] == ["--cfg"] else []
    words = argv[len(cfg):]
    capsys.readouterr()
    code = main([*cfg, *base, "data.root", str(data_root), "outdir", str(outdir), *words])
    err = capsys.readouterr().err
    last = err.splitlines()[-1] if err else ""
    assert code == 2 and "Traceback" not in err, err
    assert last.startswith("fedplug: error: ") and message in last, last
    assert not outdir.exists() or not any(outdir.iterdir())  # nothing left behind


def test_client_id_range_backwards_says_so() -> None:
    from fedplug.distributed.commands import client_ids
    from fedplug.errors import UserError

    with pytest.raises(UserError, match="the range 5-2 runs backwards; write 2-5"):
        client_ids("5-2")
    assert client_ids("2-5") == [2, 3, 4, 5]


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _file(tmp: Path) -> Path:
    _write(tmp / "a_file", "not a folder")
    return tmp / "a_file"


def _read_only(monkeypatch, folder: Path) -> None:
    """As root, chmod does not stop writes: a read-only file system is simulated at mkdir."""
    mkdir = Path.mkdir

    def refuse(self: Path, *args, **kwargs):
        if self == folder or folder in self.parents:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refuse)


def _cache_disk_full(tmp: Path, monkeypatch) -> list[str]:
    import fedplug.data.synthetic as synthetic

    monkeypatch.setattr(synthetic.np, "save", _no_space)
    return ["data.root", str(tmp / "fresh_cache")]


def _fedplug_cache_under_a_file(tmp: Path, monkeypatch) -> list[str]:
    monkeypatch.setenv("FEDPLUG_CACHE", str(_file(tmp) / "cache"))
    return ["data.root", ""]


# (case id, setup(tmp, monkeypatch) -> more words, what the one line must say, may the run folder stay?)
WRITE_CASES = [
    ("outdir under a file", lambda t, m: ["outdir", str(_file(t) / "runs")], "cannot create the run folder", False),
    ("outdir read-only", lambda t, m: _read_only(m, t / "runs") or [], "cannot create the run folder", False),
    ("data.root under a file", lambda t, m: ["data.root", str(_file(t) / "cache")],
     "cannot write the Synthetic cache in", False),
    ("data.root read-only", lambda t, m: _read_only(m, t / "ro_cache") or ["data.root", str(t / "ro_cache")],
     "Read-only file system); set data.root", False),
    ("FEDPLUG_CACHE under a file", _fedplug_cache_under_a_file, "cannot write the Synthetic cache in", False),
    ("cache disk full", _cache_disk_full, "No space left on device); free", False),
    ("checkpoint disk full", lambda t, m: m.setattr(checkpoint, "failpoint", _no_space) or [],
     "cannot write the checkpoint", True),
    ("png disk full", lambda t, m: m.setattr("matplotlib.figure.Figure.savefig", _no_space) or [],
     "learning_curve.png (No space left on device)", True),
]


@pytest.mark.parametrize("setup, message, keeps_run", [c[1:] for c in WRITE_CASES], ids=[c[0] for c in WRITE_CASES])
def test_unwritable_places_and_full_disks_are_one_line(tmp_path: Path, data_root: Path, capsys, monkeypatch, setup,
                                                       message: str, keeps_run: bool) -> None:
    base = [w for key, value in SMALL.items() for w in (key, str(value))]
    more = setup(tmp_path, monkeypatch)
    capsys.readouterr()
    code = main([*base, "data.root", str(data_root), "outdir", str(tmp_path / "runs"), "checkpoint.every", "2", *more])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    last = err.splitlines()[-1]
    assert last.startswith("fedplug: error: ") and message in last, last
    runs = list((tmp_path / "runs").glob("*")) if (tmp_path / "runs").is_dir() else []
    assert bool(runs) == keeps_run
    assert not list(tmp_path.rglob("*.tmp"))  # no temporary file left behind


def test_a_server_on_a_port_in_use_is_one_line_and_leaves_no_run_folder(tmp_path: Path, data_root: Path,
                                                                         capsys) -> None:
    """The port is held by a gRPC server (SO_REUSEPORT on, gRPC's default): a second one must not share it."""
    from concurrent import futures

    import grpc

    occupant = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    port = occupant.add_insecure_port("127.0.0.1:0")
    occupant.start()
    try:
        base = [w for key, value in SMALL.items() for w in (key, str(value))]
        capsys.readouterr()
        code = main(["server", *base, "data.root", str(data_root), "outdir", str(tmp_path / "runs"),
                     "federate.mode", "distributed", "distribute.server_host", "127.0.0.1",
                     "distribute.server_port", str(port)])
    finally:
        occupant.stop(None)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.splitlines()[-1].startswith(f"fedplug: error: cannot listen on 127.0.0.1:{port} (Address already in use)")
    assert not (tmp_path / "runs").exists()


def test_a_client_says_where_it_tries_to_join(tmp_path: Path, data_root: Path, capsys) -> None:
    from fedplug_procs import free_port

    port = free_port()
    base = [w for key, value in SMALL.items() for w in (key, str(value))]
    capsys.readouterr()
    code = main(["client", "--client-id", "0", *base, "data.root", str(data_root), "federate.mode", "distributed",
                 "distribute.server_host", "127.0.0.1", "distribute.server_port", str(port),
                 "distribute.join_timeout", "1", "distribute.token", "t"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"client 0: joining the server at 127.0.0.1:{port}" in err
    assert err.splitlines()[-1].startswith(f"fedplug: error: client 0: no server reachable at 127.0.0.1:{port}")
