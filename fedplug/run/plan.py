"""The plan of a run, built once at start-up and printed by `fedplug plan`."""
from __future__ import annotations

from fedplug.algorithms.registry import active_algorithms
from fedplug.config import ConfigNode
from fedplug.core.compose import Plan, compose


def build_plan(cfg: ConfigNode) -> Plan:
    return compose(active_algorithms(cfg))


def describe_plan(plan: Plan, cfg: ConfigNode | None = None) -> str:
    """The plan's text; with `cfg`, also what the configured backend runs one client at a time."""
    lines = [f"plan: {plan.label} (plug-ins: {', '.join(plan.names) or 'none'})"]
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
    lines.append("server:")
    lines.append("  aggregate          weighted mean of uploaded parameters, weight = samples processed [core]")
    for plugin in plan.plugins:
        lines += [f"  {line} [{plugin.name}]" for line in plugin.describe_server()]
    if plan.server_updater is None:
        lines.append("  update             global <- aggregate [core]")
    return "\n".join(lines)
