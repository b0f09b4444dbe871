"""Helpers for tests that start real fedplug processes (servers, clients, launch) on 127.0.0.1."""
from __future__ import annotations

import itertools
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

ROOT = Path(__file__).resolve().parents[1]
SILENT_TIMEOUT = 240  # a process silent this long is stuck: fail instead of hanging the suite

# Deadlines for the runs whose subject is not a deadline: at least 5x what they need on a loaded 2-core machine
# (a process start, PyTorch import included, took up to 20 s of wall time there; a round a few s), so their
# outcome does not depend on the load of `make test`'s two workers. A run that goes well waits for none of them.
PATIENT = {"distribute.join_timeout": 200.0, "distribute.round_timeout": 150.0}
PATIENT_WORDS = [str(word) for pair in PATIENT.items() for word in pair]

# The servers' ports: each pytest-xdist worker takes its own slice of 20000-31999, below Linux's ephemeral ports
# (32768-60999), so two workers never pick the same port and no outgoing connection can take a port between the
# moment it is picked and the moment a server binds it. The random start keeps apart two suites run at once.
PORTS_PER_WORKER, SLICES = 1000, 12  # 20000 + 12 x 1000 = 32000
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "gw0")  # gw0, gw1...; unset without workers
_FIRST_PORT = 20000 + PORTS_PER_WORKER * (int(_WORKER[2:]) % SLICES if _WORKER[2:].isdigit() else 0)
_START = secrets.randbelow(PORTS_PER_WORKER)
_PORTS = (_FIRST_PORT + (_START + k) % PORTS_PER_WORKER for k in itertools.count())


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing uses right now, in this worker's slice and not handed out lately."""
    for port in itertools.islice(_PORTS, PORTS_PER_WORKER):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:  # in use, or a connection of it still in TIME_WAIT
                continue
            return port
    raise RuntimeError(f"no free port in {_FIRST_PORT}-{_FIRST_PORT + PORTS_PER_WORKER - 1}")


def fedplug_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedplug", *map(str, args)]


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


def _default_sigint() -> None:
    """Give the child Ctrl-C back: a suite started in the background (`make test &`) ignores SIGINT,
    and ignored signals are inherited, so the Ctrl-C test would wait on a child that never hears it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Proc:
    """A child process whose stderr is collected line by line (and can be waited on for a line)."""

    def __init__(self, cmd: list[str], cwd: Path, **env_extra: str) -> None:
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env(**env_extra), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True,
                                     preexec_fn=_default_sigint)
        self.lines: list[str] = []
        self.stdout = ""
        self._cond = threading.Condition()
        self._readers = [threading.Thread(target=self._read, args=(self.proc.stderr,), daemon=True),
                         threading.Thread(target=self._read_stdout, daemon=True)]
        for reader in self._readers:
            reader.start()

    def _read(self, pipe: IO[str]) -> None:
        for line in pipe:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self.lines.append("")  # end of stream
            self._cond.notify_all()

    def _read_stdout(self) -> None:
        self.stdout = self.proc.stdout.read()

    @property
    def log(self) -> str:
        with self._cond:
            return "".join(self.lines)

    def wait_for(self, text: str) -> str:
        """The first stderr line containing `text`; fails if the process ends or goes silent first."""
        seen = 0
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    if text in line:
                        return line
                    if line == "":
                        raise AssertionError(f"process ended without printing {text!r}:\n{self.log[-3000:]}")
                seen = len(self.lines)
                if not self._cond.wait(SILENT_TIMEOUT):
                    raise AssertionError(f"no {text!r} after {SILENT_TIMEOUT} s of silence:\n{self.log[-3000:]}")

    def kill_group(self) -> None:
        """SIGKILL the process and everything it started (its session)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def finish(self, timeout: float = SILENT_TIMEOUT) -> tuple[int, dict | None]:
        """(exit status, the final JSON line or None)."""
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.kill_group()
        for reader in self._readers:
            reader.join(10)
        lines = [line for line in self.stdout.splitlines() if line.startswith("{")]
        return code, json.loads(lines[-1]) if lines else None


def without_run_dir(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "run_dir"}
