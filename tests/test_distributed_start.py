"""Distributed starts that fail, on 127.0.0.1: a server no client could join leaves no run folder behind, and a
client that cannot reach its server says in its log, while it retries, where it tries and for how long."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from fedplug.config import dump_config, load_config
from fedplug.errors import UserError
from fedplug_procs import Proc, fedplug_cmd, free_port

TOKEN = "start-token"
# Both tests wait out a join_timeout of a few seconds that they are about (a larger one would be as much slower):
# run alone, after the parallel part of `make test` (docs/testing.md).
pytestmark = pytest.mark.serial


def write_config(tmp_path: Path, small_cfg, **extra) -> tuple[Path, object]:
    cfg = small_cfg(**{"data.synthetic.num_clients": 2, "threads": 1, "federate.mode": "distributed",
                       "distribute.server_port": free_port(), **extra})
    path = tmp_path / "cfg.yaml"
    path.write_text(dump_config(cfg))
    return path, load_config(path)


def test_a_server_whose_only_client_is_refused_at_join_leaves_no_run_folder(tmp_path: Path, small_cfg,
                                                                            monkeypatch) -> None:
    """The client runs in this process: a client process of its own, still importing PyTorch on a loaded machine,
    could miss the server's 4 s and never ask (a client process refused at Join: test_contract_distributed.py)."""
    from fedplug.distributed.client import ClientProcess

    path, cfg = write_config(tmp_path, small_cfg, **{"distribute.join_timeout": 4.0})
    server = Proc(fedplug_cmd("server", "--cfg", path), tmp_path, FEDPLUG_TOKEN=TOKEN)
    server.wait_for("server listening")
    assert any(Path(cfg.outdir).iterdir())  # the run folder exists while it serves
    monkeypatch.setenv("FEDPLUG_TOKEN", TOKEN)
    with pytest.raises(UserError, match="plan fingerprint"):
        ClientProcess(load_config(path, ["seed", "1"]), [0]).run()
    code, summary = server.finish()
    assert code == 2 and summary is None
    assert "refused Join" in server.log and "plan fingerprint" in server.log
    assert "only 0 client(s) joined" in server.log
    assert not list(Path(cfg.outdir).iterdir())


def test_a_client_retrying_to_join_says_where_it_tries(tmp_path: Path, small_cfg, monkeypatch) -> None:
    from fedplug.distributed import client as client_module

    _, cfg = write_config(tmp_path, small_cfg, **{"distribute.join_timeout": 2.0})  # nothing listens on the port
    monkeypatch.setenv("FEDPLUG_TOKEN", TOKEN)
    monkeypatch.setattr(client_module, "JOIN_PROGRESS_SECONDS", 0.5)
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger("fedplug")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with pytest.raises(UserError, match="no server reachable"):
            client_module.ClientProcess(cfg, [0]).run()
    finally:
        logger.removeHandler(handler)
    address = f"127.0.0.1:{cfg.distribute.server_port}"
    progress = [line for line in lines if line.startswith(f"client 0: still trying {address} (")]
    assert len(progress) >= 2, lines  # after about 0.5, 1 (and 1.5) s: attempts of 0.5 s within 2 s
    assert progress[0].endswith("of distribute.join_timeout 2.0 s)")
