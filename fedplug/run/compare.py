"""`fedplug compare RUN_DIR...`: finished runs side by side.

A markdown table of each run's best-round figures (summary.json) and of the config keys in which
the runs differ (config.yaml, flattened to dotted keys; `outdir` and `expname` are left out: the
run column names the folder), and one plot overlaying their learning curves (metrics.jsonl):
weighted test accuracy and weighted val loss against the round, one line per run.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fedplug.errors import UserError

FIGURES = ("best_round", "test_acc", "val_loss", "test_loss", "test_acc_avg", "rounds_run", "seconds")
NOT_COMPARED = ("outdir", "expname")  # differ between any two runs' folders; the run column shows them
MISSING = object()  # a key one run's config has and another's lacks (a user plug-in's section)


@dataclass
class RunFolder:
    path: Path
    summary: dict[str, Any]
    records: list[dict[str, Any]]  # metrics.jsonl, one per evaluation
    config: dict[str, Any]  # config.yaml, flattened to dotted keys


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"optimizer": {"lr": 0.1}}} -> {"train.optimizer.lr": 0.1}."""
    flat: dict[str, Any] = {}
    for name, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{name}."))
        else:
            flat[f"{prefix}{name}"] = value
    return flat


def read_run(path: Path) -> RunFolder:
    """A finished run folder, or a UserError naming the folder and what it lacks."""
    if not path.is_dir():
        raise UserError(f"compare: {path} is not a run folder (no such folder)")
    for name in ("config.yaml", "summary.json"):
        if not (path / name).is_file():
            unfinished = " (an unfinished run?)" if name == "summary.json" else ""
            raise UserError(f"compare: {path} is not a run folder: no {name} in it{unfinished}")
    try:
        summary = json.loads((path / "summary.json").read_text())
        tree = yaml.safe_load((path / "config.yaml").read_text()) or {}
    except (ValueError, yaml.YAMLError) as err:
        raise UserError(f"compare: {path}: unreadable summary.json or config.yaml ({err})") from None
    if not isinstance(summary, dict) or not isinstance(tree, dict):
        raise UserError(f"compare: {path}: summary.json or config.yaml does not hold a mapping")
    records = []
    metrics = path / "metrics.jsonl"
    if metrics.is_file():
        for number, line in enumerate(metrics.read_text().splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except ValueError:
                    raise UserError(f"compare: {metrics}:{number}: not a JSON line") from None
    return RunFolder(path, summary, records, flatten(tree))


def differing_keys(configs: list[dict[str, Any]]) -> list[str]:
    """Dotted keys whose value is not the same in every config, in the first config's order."""
    keys: dict[str, None] = {}
    for config in configs:
        keys.update(dict.fromkeys(config))
    return [k for k in keys if k not in NOT_COMPARED
            and any(c.get(k, MISSING) != configs[0].get(k, MISSING) for c in configs[1:])]


def cell(value: Any, digits: int | None = 4) -> str:
    """A table cell: floats with `digits` decimals (None: as written, for config values)."""
    if value is MISSING or value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and digits is not None:
        return f"{value:.{digits}f}"
    if isinstance(value, (list, dict)):
        value = json.dumps(value)
    return str(value).replace("|", "\\|")


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def run_names(runs: list[RunFolder]) -> list[str]:
    """Folder names, or the paths as given where two folders share a name."""
    names = [r.path.name for r in runs]
    return names if len(set(names)) == len(names) else [str(r.path) for r in runs]


def compare_table(runs: list[RunFolder]) -> str:
    keys = differing_keys([r.config for r in runs])
    rows = [[name, *(cell(r.summary.get(f), 1 if f == "seconds" else 4) for f in FIGURES),
             *(cell(r.config.get(k, MISSING), None) for k in keys)]
            for name, r in zip(run_names(runs), runs)]
    return markdown_table(["run", *FIGURES, *keys], rows)


def curve_labels(runs: list[RunFolder]) -> list[str]:
    """The differing keys' values when there are a few (`lr=0.1, seed=1`), else the folder names."""
    keys = differing_keys([r.config for r in runs])
    names = run_names(runs)
    if not keys or len(keys) > 3:
        return names
    labels = [", ".join(f"{k.rsplit('.', 1)[-1]}={cell(r.config.get(k, MISSING), None)}" for k in keys) for r in runs]
    return labels if len(set(labels)) == len(labels) else names


def plot_overlay(runs: list[RunFolder], path: Path) -> None:
    """Weighted test accuracy and weighted val loss against the round, one line per run."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(11, 4.5))
    ax_acc, ax_loss = fig.subplots(1, 2)
    for run, label in zip(runs, curve_labels(runs)):
        acc = [(r["round"], 100 * r["test_acc"]) for r in run.records if r.get("test_acc") is not None]
        loss = [(r["round"], r["val_loss"]) for r in run.records if r.get("val_loss") is not None]
        line = ax_acc.plot(*zip(*acc), marker="o", markersize=3, label=label)[0] if acc else None
        if loss:
            ax_loss.plot(*zip(*loss), marker="o", markersize=3, label=label,
                         color=line.get_color() if line is not None else None)
    ax_acc.set(xlabel="round", ylabel="weighted test accuracy (%)")
    ax_loss.set(xlabel="round", ylabel="weighted val loss")
    for ax in (ax_acc, ax_loss):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small")
    fig.suptitle(f"{len(runs)} runs")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def default_plot_path(paths: list[Path]) -> Path:
    """compare_<hash of the run folders>.png next to the first run folder (same runs, same file)."""
    digest = hashlib.sha1("\n".join(str(p.resolve()) for p in paths).encode()).hexdigest()[:8]
    return paths[0].resolve().parent / f"compare_{digest}.png"


def compare(paths: list[Path], out: Path | None = None) -> tuple[str, Path]:
    """The markdown table, and the plot's path (written)."""
    runs = [read_run(p) for p in paths]
    png = out or default_plot_path(paths)
    plot_overlay(runs, png)
    return compare_table(runs), png
