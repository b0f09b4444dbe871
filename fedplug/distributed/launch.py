"""`fedplug launch`: a server and the configured clients on this machine, as one command.

Starts `fedplug server` and `fedplug client` processes (each hosting `distribute.clients_per_process`
client ids) on the configured address, with a fresh random token when none is configured, streams
their logs to stderr with a `[server]` / `[client K]` prefix, prints the server's final JSON line,
and stops every process it started when it ends, fails, or is interrupted (Ctrl-C, SIGTERM).
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

from fedplug.config import ConfigNode
from fedplug.errors import UserError

STOP_GRACE_SECONDS = 5.0
CLIENT_EXIT_SECONDS = 30.0


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def count_clients(cfg: ConfigNode) -> int:
    if cfg.federate.client_num:
        return cfg.federate.client_num
    if cfg.data.type == "synthetic":
        return cfg.data.synthetic.num_clients
    from fedplug.data import build_data

    return build_data(cfg).num_clients


def _stream(pipe: IO[str], prefix: str, keep: list[str] | None) -> None:
    for line in pipe:
        if keep is not None:
            keep.append(line)
        else:
            sys.stderr.write(f"{prefix} {line}")
            sys.stderr.flush()


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM every child still running, then SIGKILL what is left after a grace period."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def launch(cfg: ConfigNode, cfg_file: str | None, overrides: list[str], resume: Path | None) -> int:
    from fedplug.run.outputs import make_run_dir
    from fedplug.run.plan import build_plan, check_distributable
    from fedplug.run.rounds import report_finished
    from fedplug.run.tracking import check_tracking

    check_tracking(cfg)  # before any process starts
    if resume is not None and (done := report_finished(resume)) is not None:
        print(json.dumps(done), flush=True)
        return 0
    plan = build_plan(cfg)
    check_distributable(plan)
    d = cfg.distribute
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if not d.token and not env.get(d.token_env):
        env[d.token_env] = secrets.token_hex(16)  # loopback only: a secret for this launch alone
    port = d.server_port or free_port(d.server_host)
    run_dir = resume or make_run_dir(cfg, plan.label)
    state_dir = d.state_dir or str(run_dir / "clients")
    base = [sys.executable, "-m", "fedplug"]
    config = (["--cfg", cfg_file] if cfg_file else []) + list(overrides) + [f"distribute.server_port={port}"]
    server_cmd = base + ["server", *(["--resume", str(run_dir)] if resume else ["--run-dir", str(run_dir)]), *config]
    ids = list(range(count_clients(cfg)))
    groups = [ids[i:i + d.clients_per_process] for i in range(0, len(ids), d.clients_per_process)]

    procs: list[subprocess.Popen] = []
    threads: list[threading.Thread] = []
    server_out: list[str] = []

    def start(cmd: list[str], name: str, keep_stdout: bool = False) -> subprocess.Popen:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
        procs.append(proc)
        for pipe, keep in ((proc.stdout, server_out if keep_stdout else None), (proc.stderr, None)):
            thread = threading.Thread(target=_stream, args=(pipe, f"[{name}]", keep), daemon=True)
            thread.start()
            threads.append(thread)
        return proc

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        server = start(server_cmd, "server", keep_stdout=True)
        for group in groups:
            name = f"client {group[0]}" if len(group) == 1 else f"clients {group[0]}-{group[-1]}"
            start(base + ["client", "--client-id", ",".join(map(str, group)), *config,
                          f"distribute.state_dir={state_dir}"], name)
        code = server.wait()
        for proc in procs[1:]:
            try:
                proc.wait(CLIENT_EXIT_SECONDS)
            except subprocess.TimeoutExpired:
                break
    finally:
        signal.signal(signal.SIGTERM, previous)
        _stop(procs)
    for thread in threads:
        thread.join(timeout=STOP_GRACE_SECONDS)
    if code != 0:
        raise UserError(f"the server exited with status {code} (its log is above, prefixed [server])")
    lines = [line for line in server_out if line.strip()]
    if not lines:
        raise UserError("the server printed no result")
    print(lines[-1].rstrip("\n"), flush=True)
    return 0
