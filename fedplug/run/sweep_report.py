"""A sweep's report: mean ± std over the seeds of each grid point's figures, as sweep.md and sweep.csv."""
from __future__ import annotations

import csv
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedplug.run.compare import markdown_table

if TYPE_CHECKING:
    from fedplug.run.sweep import Job

FIGURES = ("test_acc", "val_loss", "best_round")


def point_stats(jobs: list[Job]) -> dict[str, Any]:
    """mean and std (n - 1) over the seeds' finished runs of each figure."""
    stats: dict[str, Any] = {"runs": sum(j.result is not None for j in jobs), "seeds": len(jobs)}
    for name in FIGURES:
        values = [j.result[name] for j in jobs if j.result is not None and j.result.get(name) is not None]
        stats[f"{name}_mean"] = statistics.fmean(values) if values else None
        stats[f"{name}_std"] = statistics.stdev(values) if len(values) > 1 else (0.0 if values else None)
    return stats


def _pm(stats: dict[str, Any], name: str, digits: int) -> str:
    mean, std = stats[f"{name}_mean"], stats[f"{name}_std"]
    return "–" if mean is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def summarize(sweep_dir: Path, keys: list[str], jobs: list[Job]) -> tuple[str, list[dict[str, Any]]]:
    """The markdown table (also written to sweep.md, with sweep.csv) and the points' figures."""
    points: dict[str, list[Job]] = {}
    for job in jobs:
        points.setdefault(job.point_name, []).append(job)
    rows = []
    for point_jobs in points.values():
        values = dict(point_jobs[0].point)
        rows.append({"point": {k: values[k] for k in keys}, "folder": point_jobs[0].point_name,
                     **point_stats(point_jobs)})
    header = [*keys, "runs", "test_acc", "val_loss", "best_round"]
    table = markdown_table(header, [[*(r["point"][k] for k in keys), f"{r['runs']}/{r['seeds']}",
                                     _pm(r, "test_acc", 4), _pm(r, "val_loss", 4), _pm(r, "best_round", 1)]
                                    for r in rows])
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / "sweep.md").write_text(table + "\n")
    with (sweep_dir / "sweep.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        figures = [f"{name}_{s}" for name in FIGURES for s in ("mean", "std")]
        writer.writerow([*keys, "runs", "seeds", *figures, "folder"])
        for r in rows:
            writer.writerow([*(r["point"][k] for k in keys), r["runs"], r["seeds"],
                             *("" if r[f] is None else r[f] for f in figures), r["folder"]])
    return table, rows
