"""The plan of a run, printed by `fedplug plan`: what runs where, in which order."""
from __future__ import annotations

from fedplug.config import ConfigNode
from fedplug.core.trainer import Trainer


def describe_plan(cfg: ConfigNode) -> str:
    trainer = Trainer(model=None, cfg=cfg)  # hooks do not depend on the model
    lines = [f"plan: {cfg.federate.method} (plug-ins: fedavg)"]
    for routine, table in trainer.hooks.items():
        lines.append(f"client {routine} routine:")
        for trigger, hooks in table:
            names = ", ".join(f"{h.name} [{h.owner}]" for h in hooks) or "-"
            lines.append(f"  {trigger:<18} {names}")
    lines.append("server:")
    lines.append("  aggregate          weighted mean of uploaded parameters, weight = samples processed [fedavg]")
    lines.append("  update             global <- aggregate [fedavg]")
    return "\n".join(lines)
