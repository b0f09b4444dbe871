"""Failpoints: places where a test can freeze a process to kill it there, deterministically.

`FEDPLUG_FAILPOINT=NAME@ROUND` (several separated by commas) makes `failpoint(NAME, ROUND)` print
`fedplug failpoint NAME@ROUND reached (pid P)` on stderr and block forever; the test waits for
that line and sends SIGKILL. Without the variable a failpoint is one dict lookup. Names in use:
`round_end` (standalone and server, after a round's clients, before its aggregation),
`checkpoint_write` (half the checkpoint written), `client<K>_train` (client K, inside its update),
`ray_worker<W>_train` (Ray worker W, before its share of a round).

With `FEDPLUG_FAILPOINT_ONCE=DIR` a failpoint freezes only the first process to reach it on this
machine: that process writes its pid to `DIR/NAME@ROUND`, later ones pass. A process restarted
after the kill (a Ray actor) then runs on, and the test reads the pid to kill from the file.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

_ARMED = frozenset(filter(None, os.environ.get("FEDPLUG_FAILPOINT", "").split(",")))
_ONCE = os.environ.get("FEDPLUG_FAILPOINT_ONCE", "")


def failpoint(name: str, round_num: int) -> None:
    if not _ARMED or f"{name}@{round_num}" not in _ARMED:
        return
    if _ONCE and not _first_here(f"{name}@{round_num}"):
        return
    print(f"fedplug failpoint {name}@{round_num} reached (pid {os.getpid()})", file=sys.stderr, flush=True)
    while True:  # frozen until killed
        time.sleep(3600)


def _first_here(point: str) -> bool:
    """Claim `point` in the FEDPLUG_FAILPOINT_ONCE folder (a hard link: atomic, and the pid is in it at once)."""
    folder = Path(_ONCE)
    draft = folder / f".{point}.{os.getpid()}"
    draft.write_text(str(os.getpid()))
    try:
        os.link(draft, folder / point)
        return True
    except FileExistsError:
        return False
    finally:
        draft.unlink()
