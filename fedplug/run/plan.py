"""The plan of a run, built once at start-up and printed by `fedplug plan`."""
from __future__ import annotations

import torch

from fedplug.algorithms.registry import active_algorithms
from fedplug.config import ConfigNode
from fedplug.core.compose import CompositionError, Plan, compose


def build_plan(cfg: ConfigNode) -> Plan:
    return compose(active_algorithms(cfg), cfg.aggregator.weighting)


def check_distributable(plan: Plan) -> None:
    """A distributed run cannot serve `transform_uploads`: no process there sees other clients' uploads."""
    simulated = plan.with_method("transform_uploads")
    if simulated:
        who = simulated[0].method or simulated[0].name
        raise CompositionError(f"{who} reads every client's upload of a round before the aggregation "
                               "(transform_uploads), which only the standalone simulation does: a distributed "
                               "server hands no client the others' uploads. Run it standalone (fedplug --cfg ...)")


def device_line(cfg: ConfigNode) -> str:
    """Where the run would train on this machine (`device`, docs/gpu.md)."""
    from fedplug.device import DeviceError, resolve

    try:
        where = str(resolve(cfg.device))
    except DeviceError as err:
        return f"device: {cfg.device}, which this machine lacks ({err})"
    return f"device: {where}" + (f" (device {cfg.device})" if cfg.device != where else "")


def describe_plan(plan: Plan, cfg: ConfigNode | None = None) -> str:
    """The plan's text; with `cfg`, also what the configured backend runs one client at a time."""
    lines = [f"plan: {plan.label} (plug-ins: {', '.join(plan.names) or 'none'})"]
    if cfg is not None:
        lines.append(device_line(cfg))
    if cfg is not None and cfg.federate.backend == "vectorized":
        from fedplug.backends.vectorized import plan_lines

        lines += plan_lines(cfg, plan)
    routines = dict(plan.tables)
    for plugin in plan.plugins:
        routines.update(plugin.extra_routines())
    for routine, table in routines.items():
        lines.append(f"client {routine} routine:")
        for trigger, hooks in table:
            names = ", ".join(f"{h.name} [{h.owner}]" for h in hooks) or "-"
            lines.append(f"  {trigger:<18} {names}")
    gradient = plan.with_method("transform_gradients")
    if gradient:
        lines.append("client gradient point (after backward, before clipping and the optimizer step):")
        lines += [f"  transform_gradients [{p.name}]" for p in gradient]
    uploads = plan.with_method("transform_upload")
    if uploads:
        lines.append("client upload point (after the local update, before sending, in this order):")
        lines += [f"  transform_upload [{p.name}]" for p in uploads]
    lines += [f"server, standalone only, before the aggregation: transform_uploads [{p.name}]"
              for p in plan.with_method("transform_uploads")]
    lines += _travel_lines(plan)
    lines.append("server (in this order):")
    lines += [f"  {text} [{owner}]" for text, owner in _server_lines(plan)]
    return "\n".join(lines)


STAGES = ("weights", "aggregate", "receive", "transform", "update")  # the order Plan runs them in


def _server_lines(plan: Plan) -> list[tuple[str, str]]:
    """(line, owner) for each step of the server pipeline, in the order it runs."""
    entries = [(text, p.name) for p in plan.plugins for text in p.describe_server()]
    if not any(text.startswith("weights") for text, _ in entries):
        entries.insert(0, (f"{'weights':<19}{plan.describe_weighting()}", plan.weigher.name if plan.weigher else "core"))
    if plan.aggregator is None:
        entries.append((f"{'aggregate':<19}streaming weighted mean of uploaded parameters", "core"))
    if plan.server_updater is None:
        entries.append((f"{'update':<19}global <- aggregate", "core"))

    def stage(entry: tuple[str, str]) -> int:
        word = entry[0].split()[0]
        return STAGES.index(word) if word in STAGES else len(STAGES)  # notes (local, components) last

    return sorted(entries, key=stage)


def _travel_lines(plan: Plan) -> list[str]:
    """What each plug-in adds to the broadcast and the upload (`<parameter>`: one tensor per shared parameter)."""
    lines = []
    for name, messages in plan.messages({"<parameter>": torch.zeros(())}).items():
        if messages.down:
            lines.append(f"  down {name}/: {', '.join(messages.down)}")
        if messages.up:
            lines.append(f"  up   {name}/: {', '.join(f'{n} ({u.reduction})' for n, u in messages.up.items())}")
    return ["travels besides the model:", *lines] if lines else []
