"""`fedplug config show`: every key with its type, value and one-line description."""
from __future__ import annotations

from fedplug.config.load import type_name
from fedplug.config.schema import ROOT, ConfigNode, Section
from fedplug.errors import ConfigError


def show_config(cfg: ConfigNode, section: str | None = None) -> str:
    root, prefix = ROOT, ""
    if section:
        found = ROOT.find(section)
        if not isinstance(found, Section):
            sections = [name for name, entry in ROOT.entries.items() if isinstance(entry, Section)]
            raise ConfigError(f"no config section '{section}'; sections are {', '.join(sections)}")
        root, prefix = found, section + "."
    rows = []
    for path, key in root.walk(prefix):
        value = cfg.get(path)
        note = f" (one of {', '.join(map(str, key.choices))})" if key.choices else ""
        rows.append((path, type_name(key), repr(value), key.help + note))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{p:<{widths[0]}}  {t:<{widths[1]}}  {v:<{widths[2]}}  {h}" for p, t, v, h in rows)
