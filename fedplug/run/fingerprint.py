"""What makes two runs the same run: the config keys that shape the numbers, the plan and its code.

A resumed run must be given the config its checkpoint was written under, and a distributed client
must run the server's plan: both are checked here. Keys that only say where things go or how they
travel (output folder, data cache, threads, checkpoint cadence, the `distribute` and `tracking`
sections, where the Ray cluster is) or where tensors live (`device`: each process picks its own,
and a run may be resumed on another device, then equal within float rounding rather than bit for
bit) may differ; everything else must be equal.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import fedplug
from fedplug.config import ConfigNode, dotted
from fedplug.core.compose import Plan
from fedplug.errors import UserError

# Dotted prefixes that may differ between the runs that count as one.
NEUTRAL = ("outdir", "expname", "threads", "data.root", "checkpoint", "distribute", "federate.mode",
           "federate.min_received_num", "tracking", "device", "deterministic", "data.placement",
           "federate.client_state", "ray.address", "ray.lost_timeout")


def _is_neutral(path: str) -> bool:
    return any(path == n or path.startswith(n + ".") for n in NEUTRAL)


def result_config(cfg: ConfigNode | dict[str, Any]) -> dict[str, Any]:
    """The flat {dotted key: value} of the keys that shape a run's numbers."""
    tree = cfg.to_dict() if isinstance(cfg, ConfigNode) else cfg
    return {path: value for path, value in dotted(tree).items() if not _is_neutral(path)}


def plugin_code(plan: Plan) -> dict[str, str]:
    """Each active plug-in's source file, hashed: a client running another version of one is another plan."""
    hashes = {}
    for plugin in plan.plugins:
        module = sys.modules[type(plugin).__module__]
        path = getattr(module, "__file__", None)
        hashes[plugin.name] = hashlib.sha256(Path(path).read_bytes()).hexdigest() if path else type(plugin).__qualname__
    return hashes


def fingerprint(cfg: ConfigNode, plan: Plan) -> str:
    """A short hash of fedplug's version, the plan's layout, the plug-ins' code and the result-shaping config."""
    from fedplug.run.plan import describe_plan

    text = json.dumps({"version": fedplug.__version__, "plan": describe_plan(plan), "code": plugin_code(plan),
                       "config": result_config(cfg)}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_same_run(cfg: ConfigNode, saved: ConfigNode, where: str) -> None:
    """Refuse to resume `saved` (the run folder's config) with a config that changes the numbers."""
    mine, theirs = result_config(cfg), result_config(saved)
    for key in sorted(set(mine) | set(theirs)):
        if mine.get(key) != theirs.get(key):
            raise UserError(f"cannot resume {where}: config key '{key}' is {mine.get(key)!r} here but "
                            f"{theirs.get(key)!r} in the checkpointed run; resume with the same config")
