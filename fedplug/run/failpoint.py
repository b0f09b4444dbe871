"""Failpoints: places where a test can freeze a process to kill it there, deterministically.

`FEDPLUG_FAILPOINT=NAME@ROUND` (several separated by commas) makes `failpoint(NAME, ROUND)` print
`fedplug failpoint NAME@ROUND reached (pid P)` on stderr and block forever; the test waits for
that line and sends SIGKILL. Without the variable a failpoint is one dict lookup. Names in use:
`round_end` (standalone and server, after a round's clients, before its aggregation),
`checkpoint_write` (half the checkpoint written), `client<K>_train` (client K, inside its update).
"""
from __future__ import annotations

import os
import sys
import time

_ARMED = frozenset(filter(None, os.environ.get("FEDPLUG_FAILPOINT", "").split(",")))


def failpoint(name: str, round_num: int) -> None:
    if not _ARMED or f"{name}@{round_num}" not in _ARMED:
        return
    print(f"fedplug failpoint {name}@{round_num} reached (pid {os.getpid()})", file=sys.stderr, flush=True)
    while True:  # frozen until killed
        time.sleep(3600)
