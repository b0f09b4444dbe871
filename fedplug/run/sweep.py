"""`fedplug sweep --cfg FILE KEY=v1,v2 ... [--seeds K] [--jobs N] [--out DIR]`: a grid of runs.

The grid is the cartesian product of the listed values, times the seeds (`--seeds K`: seeds
0..K-1 through the `seed` key; or the values of a `seed=...` axis; default: the config's own seed).
Every grid point's config is validated (`load_config`, then the plan's refusals) before any run
starts. Each run is a `python -m fedplug` process (with `threads 1` when several run at once) whose
run folder lands in its own deterministic place:

    DIR/<point>/seed<S>/<point>_seed<S>_<time>/     <point>: KEY=VALUE pairs joined by "__"
    DIR/<point>/seed<S>/output.log                  the process's stdout and stderr

A run whose folder there holds a summary.json and the same config is finished: a second
invocation with the same DIR skips it (so an interrupted sweep continues, and a grown grid runs
only its new points). DIR/sweep.md and DIR/sweep.csv get mean ± std (sample standard deviation,
n - 1; 0 for one seed) over the seeds of test_acc, val_loss and best_round per point; the best
point is the one with the lowest mean val loss (the figure runs select their best round by).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import re
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fedplug.errors import UserError
from fedplug.run.compare import flatten
from fedplug.run.sweep_report import summarize

SET_BY_SWEEP = ("outdir", "expname")
IGNORED_IN_MATCH = ("threads",)  # a run's thread count differs with --jobs, its result does not
SAFE_NAME = re.compile(r"[^A-Za-z0-9._=,+\-]")
_print_lock = threading.Lock()


@dataclass
class Job:
    point: tuple[tuple[str, str], ...]  # (key, raw value) per axis
    point_name: str
    seed: int
    words: list[str]  # the run's KEY=VALUE overrides
    folder: Path  # DIR/<point>/seed<S>: the run's outdir
    expected: dict[str, Any] = field(default_factory=dict)  # its resolved config, flattened
    result: dict[str, Any] | None = None  # summary.json of its finished run

    @property
    def label(self) -> str:
        return f"{self.point_name} seed {self.seed}"


def split_values(text: str) -> list[str]:
    """Comma-separated values; commas inside brackets or quotes stay: `[0.6,0.2,0.2],[0.8,0.1,0.1]`."""
    values, depth, quote, start = [], 0, "", 0
    for i, char in enumerate(text):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            values.append(text[start:i].strip())
            start = i + 1
    values.append(text[start:].strip())
    return values


def parse_grid(words: list[str]) -> list[tuple[str, list[str]]]:
    """`KEY=v1,v2` words -> [(key, [values])], checked for shape (the values are checked by the config)."""
    axes: list[tuple[str, list[str]]] = []
    for word in words:
        key, eq, raw = word.partition("=")
        if not eq or not key:
            raise UserError(f"sweep: '{word}' is not KEY=v1,v2,...: give each key its values after '='")
        values = split_values(raw)
        if not raw.strip() or "" in values:
            raise UserError(f"sweep: {key}: empty value in '{word}'; write KEY=v1,v2,...")
        if len(set(values)) < len(values):
            raise UserError(f"sweep: {key}: a value is listed twice in '{word}'")
        if key in SET_BY_SWEEP:
            raise UserError(f"sweep: {key} is set by the sweep (one folder per run); use --out DIR for the sweep")
        if key in (k for k, _ in axes):
            raise UserError(f"sweep: {key} is given twice; list all its values in one KEY=v1,v2,...")
        axes.append((key, values))
    return axes


def point_name(point: tuple[tuple[str, str], ...]) -> str:
    """The point's folder name: `train.optimizer.lr=0.1__fedprox.mu=0.01` (a hash where that is not a safe name)."""
    if not point:
        return "base"
    name = "__".join(f"{k}={v}" for k, v in point)
    safe = SAFE_NAME.sub("_", name)
    if safe != name or len(safe) > 120:
        safe = f"{safe[:100]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return safe


def plan_jobs(cfg_file: str | None, words: list[str], seeds: int | None, out: str | None) -> tuple[Path, list[str], list[Job]]:
    """The sweep folder, the axis keys and every run of the grid, each point's config validated."""
    from fedplug.config import dump_config, load_config
    from fedplug.run.plan import build_plan

    axes = parse_grid(words)
    seed_axis = [values for key, values in axes if key == "seed"]
    axes = [(key, values) for key, values in axes if key != "seed"]
    if seeds is not None and seed_axis:
        raise UserError("sweep: give the seeds either as --seeds K or as seed=v1,v2, not both")
    if seeds is not None and seeds < 1:
        raise UserError(f"sweep: --seeds must be >= 1, got {seeds}")
    seed_words: list[str | None] = (seed_axis[0] if seed_axis else
                                    [str(s) for s in range(seeds)] if seeds is not None else [None])
    points = list(itertools.product(*[[(key, v) for v in values] for key, values in axes]))

    def load(point: tuple[tuple[str, str], ...], seed: str | None, extra: list[str]):
        overrides = [f"{k}={v}" for k, v in point] + ([f"seed={seed}"] if seed is not None else []) + extra
        try:
            cfg = load_config(cfg_file, overrides)
            build_plan(cfg)  # impossible combinations are refused now, not after other runs
        except UserError as err:  # a config mistake, or plug-ins that cannot be combined
            label = ", ".join(f"{k}={v}" for k, v in point) or "the config"
            raise UserError(f"sweep point {label}{f' seed {seed}' if seed is not None else ''}: {err}") from None
        return cfg, overrides

    checked = {(point, seed): load(point, seed, [])[0] for point in points for seed in seed_words}
    stem = Path(cfg_file).stem if cfg_file else "defaults"
    sweep_dir = Path(out) if out else Path(next(iter(checked.values())).outdir) / f"sweep_{stem}"
    sweep_dir = sweep_dir.expanduser().resolve()
    jobs = []
    for (point, seed), cfg in checked.items():
        name = point_name(point)
        folder = sweep_dir / name / f"seed{cfg.seed}"
        cfg, overrides = load(point, seed, [f"outdir={folder}", f"expname={name}_seed{cfg.seed}"])
        expected = flatten(yaml.safe_load(dump_config(cfg)))
        jobs.append(Job(point, name, cfg.seed, overrides, folder, expected))
    seen: dict[Path, Job] = {}
    for job in jobs:
        if job.folder in seen:
            raise UserError(f"sweep: {seen[job.folder].label} and {job.label} are the same run (same seed)")
        seen[job.folder] = job
    return sweep_dir, [key for key, _ in axes], jobs


def finished_run(job: Job) -> dict[str, Any] | None:
    """summary.json of the newest finished run in the job's folder whose config is the job's, or None."""
    for summary in sorted(job.folder.glob("*/summary.json"), reverse=True):
        try:
            config = flatten(yaml.safe_load((summary.parent / "config.yaml").read_text()) or {})
            result = json.loads(summary.read_text())
        except (OSError, ValueError, yaml.YAMLError):
            continue
        # Keys the run has must hold the job's values (a user plug-in's section may be missing from either).
        if all(job.expected.get(k, v) == v for k, v in config.items() if k not in IGNORED_IN_MATCH):
            return {**result, "run_dir": str(summary.parent)}
    return None


def launch(command: list[str], log: Path) -> int:
    """One run, its output to `log`; its exit status."""
    with log.open("w") as out:
        return subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode


def _num(value: Any, digits: int = 4) -> str:
    return "–" if not isinstance(value, (int, float)) else f"{value:.{digits}f}"


def _last_line(log: Path) -> str:
    """': <the last line of the run's output>' (its error, as a rule), or ''."""
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return f": {lines[-1].strip()[:300]}" if lines else ""


def _say(message: str) -> None:
    with _print_lock:
        print(message, file=sys.stderr, flush=True)


def prepare_data(jobs: list[Job], cfg_file: str | None) -> None:
    """Build each distinct data set once here, so that runs started together do not all generate its cache."""
    from fedplug.config import load_config
    from fedplug.data import build_data

    logger = logging.getLogger("fedplug")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    done: set[str] = set()
    for job in jobs:
        cfg = load_config(cfg_file, job.words)
        key = json.dumps(cfg.data.to_dict(), sort_keys=True, default=str)
        if key not in done:
            done.add(key)
            build_data(cfg)


def typed_point(job: Job) -> dict[str, Any]:
    """The point's values as the config reads them (0.1, not "0.1")."""
    from fedplug.config.schema import ALIASES

    return {k: job.expected.get(ALIASES.get(k, k), v) for k, v in job.point}


def main(cfg_file: str | None, words: list[str], seeds: int | None = None, jobs: int = 1,
         out: str | None = None) -> int:
    if jobs < 1:
        raise UserError(f"sweep: --jobs must be >= 1, got {jobs}")
    sweep_dir, keys, all_jobs = plan_jobs(cfg_file, words, seeds, out)
    for job in all_jobs:
        job.result = finished_run(job)
    pending = [j for j in all_jobs if j.result is None]
    points = len({j.point_name for j in all_jobs})
    _say(f"sweep: {points} point(s) x {len(all_jobs) // points} seed(s) = {len(all_jobs)} runs in {sweep_dir}; "
         f"{len(all_jobs) - len(pending)} finished already (skipped), {len(pending)} to run, {min(jobs, len(pending) or 1)} at once")
    if jobs > 1 and len(pending) > 1:
        prepare_data(pending, cfg_file)

    stop = threading.Event()
    failed: list[Job] = []
    command_head = [sys.executable, "-m", "fedplug", *(["--cfg", cfg_file] if cfg_file else [])]

    def work(job: Job) -> int | None:
        if stop.is_set():
            return None
        job.folder.mkdir(parents=True, exist_ok=True)
        rc = launch([*command_head, *job.words, *(["threads=1"] if jobs > 1 else [])], job.folder / "output.log")
        job.result = finished_run(job) if rc == 0 else None
        return rc

    done = 0
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(work, job): job for job in pending}
        try:
            for future in as_completed(futures):
                job, rc = futures[future], future.result()
                done += 1
                if rc is None:
                    continue
                if rc != 0 or job.result is None:
                    failed.append(job)
                    log = job.folder / "output.log"
                    _say(f"[{done}/{len(pending)}] {job.label}: FAILED (exit {rc}){_last_line(log)}; see {log}")
                else:
                    r = job.result
                    _say(f"[{done}/{len(pending)}] {job.label}: test_acc {_num(r.get('test_acc'))}, val_loss "
                         f"{_num(r.get('val_loss'))}, best round {r.get('best_round')} ({_num(r.get('seconds'), 1)} s)")
        except KeyboardInterrupt:
            stop.set()  # before the pool's exit waits: queued runs do not start; running ones got the interrupt too
            raise

    table, rows = summarize(sweep_dir, keys, all_jobs)
    scored = [(r, j) for r, j in zip(rows, _first_jobs(all_jobs)) if r["val_loss_mean"] is not None]
    best = None
    if scored:
        r, j = min(scored, key=lambda rj: rj[0]["val_loss_mean"])
        best = {"point": typed_point(j), "folder": r["folder"], "runs": r["runs"],
                **{k: r[k] for k in r if k.endswith(("_mean", "_std"))}}
    print(table)
    if failed:
        _say(f"sweep: {len(failed)} run(s) failed: " + ", ".join(j.label for j in failed))
    print(json.dumps({"sweep_dir": str(sweep_dir), "runs": len(all_jobs), "launched": len(pending),
                      "skipped": len(all_jobs) - len(pending), "failed": len(failed), "best": best,
                      "table": str(sweep_dir / "sweep.md")}), flush=True)
    return 1 if failed else 0


def _first_jobs(jobs: list[Job]) -> list[Job]:
    """One job per point, in the points' order."""
    seen: dict[str, Job] = {}
    for job in jobs:
        seen.setdefault(job.point_name, job)
    return list(seen.values())
