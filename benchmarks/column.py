"""One column of the published table: every algorithm's config of that column, ours vs. published.

    python benchmarks/column.py synthetic                 # the reference Synthetic column (about 16 min)
    python benchmarks/column.py synthetic --only pfedme ditto   # these rows only; the others kept from the table
    python benchmarks/column.py synthetic --seeds 5 --jobs 2    # mean +- std over seeds 0-4 (<column>_column_seeds.md)
    python benchmarks/column.py standin_cpu --jobs 2      # ConvNet2 on the handwriting stand-in, CPU scale
    python benchmarks/column.py shakespeare_cpu --jobs 2  # the LSTM on Shakespeare, CPU scale
    python benchmarks/column.py femnist --set data.femnist.url=DIR   # reference protocols (a bigger machine)
    python benchmarks/column.py shakespeare_cpu --collect RUN_DIR ...  # table from finished run folders
    python benchmarks/column.py synthetic --seeds 5 --collect RUN_DIR ...  # the same over seeds; rows lacking a seed left out

Runs `fedplug --cfg <config>` for each algorithm (`--jobs` at a time, one PyTorch thread each when
more than one) and writes benchmarks/results/<column>_column.md (table) and <column>_column.png
(weighted test accuracy against the round). CPU-scale columns run reduced protocols (and the
stand-in is MNIST, not FEMNIST), so their published numbers are context, not a target.
On the Synthetic column, pFedMe's and Ditto's configs use FederatedScope's semantics (its code made the
published figures); each also runs with the papers' semantics, a row of its own.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TOLERANCE = 1.5  # points, the bar for reference-protocol columns
# Ditto's bar is FederatedScope's own run of its config (published.json "federatedscope_here"), not the
# published figure, which came from a hyperparameter search (docs/reproduction.md section 7)
OWN_RUN_BAR = {"ditto": 0.5}
# algorithm -> override: its row with the papers' semantics, next to the config's (FederatedScope's)
PAPER_VARIANTS = {"pfedme": "pfedme.semantics=paper", "ditto": "ditto.semantics=paper"}
PAPER_SUFFIX = " (papers' semantics)"
FS_SUFFIX = " (FederatedScope's semantics)"
ALL = ("fedavg", "fedopt", "fedprox", "fedbn", "pfedme", "ditto", "fedem")
PART2 = ("scaffold", "fednova", "feddyn")  # not in the published table: their rows have no published figure
PUBLISHED_NAMES = {"synthetic": "Synthetic", "femnist": "FEMNIST", "shakespeare": "Shakespeare"}
# column -> (config path pattern, published column, comparable to the published numbers, algorithms, title)
COLUMNS = {
    "synthetic": ("configs/{}_lr_on_synthetic.yaml", "synthetic", True,
                  ("fedavg", "fedopt", "fedprox", "pfedme", "ditto", "fedem") + PART2, "Synthetic, logistic regression"),
    "femnist": ("configs/{}_convnet2_on_femnist.yaml", "femnist", True, ALL, "FEMNIST, ConvNet2"),
    "shakespeare": ("configs/{}_lstm_on_shakespeare.yaml", "shakespeare", True, ALL, "Shakespeare, LSTM"),
    "standin_cpu": ("configs/cpu/{}_convnet2_on_standin.yaml", "femnist", False, ALL,
                    "handwriting STAND-IN (MNIST digits, not FEMNIST), ConvNet2, CPU scale"),
    "shakespeare_cpu": ("configs/cpu/{}_lstm_on_shakespeare.yaml", "shakespeare", False, ALL,
                        "Shakespeare, LSTM, CPU scale"),
}


def run_config(cfg: Path, outdir: Path, overrides: list[str]) -> dict:
    """One run; `seconds` is its wall time, `cpu_seconds` the CPU time its process used (user + system).

    With one PyTorch thread, CPU time is about what the run takes alone on an idle core. Other jobs inflate it
    less than wall time (only through shared caches and hyperthreads), so under load it is an upper bound."""
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "fedplug", "--cfg", str(cfg), f"outdir={outdir}", *overrides],
                                stdout=out, stderr=err, text=True, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)  # waits like proc.wait(), and says what the child used
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{cfg.name} failed:\n{stderr[-3000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    metrics = [json.loads(line) for line in (Path(result["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    return {**result, "seconds": time.perf_counter() - started, "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "curve": [(m["round"], m["test_acc"]) for m in metrics]}


def read_run(run_dir: Path) -> dict:
    """A finished run folder as `run_config` reports it (seconds: the run's own, from summary.json)."""
    import yaml

    summary = json.loads((run_dir / "summary.json").read_text())
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    return {**summary, "curve": [(m["round"], m["test_acc"]) for m in metrics], "key": run_key(summary["method"], config),
            "seed": config["seed"]}


def run_key(method: str, config: dict) -> str:
    """The row a run fills: its algorithm, marked by its config's semantics where the column has both."""
    algo = method.lower()
    if algo not in PAPER_VARIANTS:
        return algo
    return algo + (PAPER_SUFFIX if config[algo]["semantics"] == "paper" else FS_SUFFIX)


def kept_rows(path: Path, replaced: set[str]) -> list[str]:
    """The rows of an existing table whose algorithm is not run again (`--only`)."""
    if not path.exists():
        return []
    rows = [line for line in path.read_text().splitlines() if line.startswith("| ") and not line.startswith("| algo")]
    return [row for row in rows if row.split(" | ")[0][2:] not in replaced]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("column", choices=COLUMNS)
    parser.add_argument("--only", nargs="+", choices=ALL + PART2, help="these algorithms only")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (each with one PyTorch thread if > 1)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every run")
    parser.add_argument("--collect", nargs="+", type=Path, metavar="RUN_DIR",
                        help="make the table from these finished run folders instead of running")
    parser.add_argument("--seeds", type=int, metavar="K",
                        help="run each config with seeds 0..K-1 and report mean +- std (a table of its own)")
    args = parser.parse_args()
    if args.seeds is not None and args.seeds < 1:
        parser.error("--seeds takes K >= 1")
    pattern, published_key, comparable, algorithms, title = COLUMNS[args.column]
    algorithms = [a for a in algorithms if not args.only or a in args.only]
    overrides = args.set + (["threads=1"] if args.jobs > 1 else [])
    variants = PAPER_VARIANTS if args.column == "synthetic" else {}
    jobs = [(a + (FS_SUFFIX if a in variants else ""), a, []) for a in algorithms]
    jobs += [(a + PAPER_SUFFIX, a, [variants[a]]) for a in algorithms if a in variants]
    if args.seeds is not None:
        run_seeds(args, pattern, title, published_key, comparable, jobs, overrides, variants)
        return
    if args.collect:
        # the semantics mark the row only where the column has both rows (`variants`)
        runs = {r["key"] if variants else r["method"].lower(): r for r in map(read_run, args.collect)}
        results = {key: runs[key] for key, _, _ in jobs if key in runs}
    else:
        with tempfile.TemporaryDirectory(prefix="fedplug-column-") as outdir, ThreadPoolExecutor(args.jobs) as pool:
            futures = {key: pool.submit(run_config, ROOT / pattern.format(a), Path(outdir), overrides + extra)
                       for key, a, extra in jobs}
            results = {key: f.result() for key, f in futures.items()}
    picture = f"{args.column}_column" + ("_" + "_".join(args.only) if args.only else "") + ".png"
    write_table(args, pattern, comparable, title, json.loads((ROOT / "benchmarks" / "published.json").read_text()),
                results, picture)
    plot(results, title, RESULTS / picture)


def run_seeds(args: argparse.Namespace, pattern: str, title: str, published_key: str, comparable: bool, jobs: list,
              overrides: list[str], variants: dict[str, str]) -> None:
    """Every job once per seed, then the mean +- std table (column_seeds.py)."""
    from column_seeds import write_seeds_table

    seeds = list(range(args.seeds))
    missing = []
    if args.collect:  # finished run folders: a row needs every seed's run
        runs = {(r["key"] if variants else r["method"].lower(), r["seed"]): r for r in map(read_run, args.collect)}
        results = {key: [runs[key, seed] for seed in seeds] for key, _, _ in jobs
                   if all((key, seed) in runs for seed in seeds)}
        missing = [f"{key} ({sum((key, seed) in runs for seed in seeds)} of {len(seeds)} seeds)"
                   for key, _, _ in jobs if key not in results]
    else:
        with tempfile.TemporaryDirectory(prefix="fedplug-column-") as outdir, ThreadPoolExecutor(args.jobs) as pool:
            futures = {(key, seed): pool.submit(run_config, ROOT / pattern.format(a), Path(outdir),
                                                overrides + extra + [f"seed={seed}"])
                       for key, a, extra in jobs for seed in seeds}
            results = {key: [futures[key, seed].result() for seed in seeds] for key, _, _ in jobs}
    command = f"python benchmarks/column.py {args.column} --seeds {args.seeds}" + \
        (f" --jobs {args.jobs}" if args.jobs > 1 else "") + (f" --only {' '.join(args.only)}" if args.only else "") + \
        (f" --set {' '.join(args.set)}" if args.set else "") + (" --collect RUN_DIR ..." if args.collect else "")
    tables = json.loads((ROOT / "benchmarks" / "published.json").read_text())
    path = write_seeds_table(args.column, title, command, seeds, tables, published_key, results, missing, comparable)
    print(f"wrote {path.relative_to(ROOT)}")


def write_table(args: argparse.Namespace, pattern: str, comparable: bool, title: str, tables: dict,
                results: dict, picture: str) -> None:
    published_key = COLUMNS[args.column][1]
    published, own_runs = tables[published_key], tables["federatedscope_here"].get(published_key, {})
    rows = []
    for key, r in results.items():
        algo = key.split(" ")[0]
        ours, theirs, own = 100 * r["test_acc"], published.get(algo), own_runs.get(algo)
        cells = [key, f"{ours:.2f}", "–" if theirs is None else f"{theirs:.2f}"]
        if comparable:
            bar, target = (OWN_RUN_BAR[algo], own) if algo in OWN_RUN_BAR else (TOLERANCE, theirs)
            close = target is not None and abs(ours - target) <= bar
            cells += ["–" if own is None else f"{own:.2f}", "–" if theirs is None else f"{ours - theirs:+.2f}",
                      "–" if target is None else ("yes" if close else "NO") + (f" (of {target:.2f}: {bar})"
                                                                                  if algo in OWN_RUN_BAR else "")]
        cpu = f"{r['cpu_seconds']:.0f}" if "cpu_seconds" in r else "–"  # not in a collected run folder
        cells += [f"{r['test_loss']:.4f}", str(r["best_round"]), str(r["rounds_run"]), f"{r['seconds']:.0f}", cpu]
        rows.append("| " + " | ".join(cells) + " |")
        print(json.dumps({"column": args.column, "algorithm": key, "test_acc": r["test_acc"],
                          "published": None if theirs is None else theirs / 100, "best_round": r["best_round"],
                          "rounds_run": r["rounds_run"], "seconds": round(r["seconds"], 1)}), flush=True)
    path = RESULTS / f"{args.column}_column.md"
    if args.only:
        order = {a: i for i, a in enumerate(COLUMNS[args.column][3])}
        rows = sorted(rows + kept_rows(path, set(results)), key=lambda row: order.get(row[2:].split(" ")[0], 99))
    published_head = "published" if comparable else f"published ({PUBLISHED_NAMES[published_key]}, context)"
    head = ["algorithm", "ours", published_head]
    head += ["FederatedScope's code, run here", "difference", f"within {TOLERANCE}"] if comparable else []
    head += ["test loss", "best round", "rounds run", "seconds", "CPU seconds"]
    note = ("" if comparable else "\n**Not comparable to the published column**: a reduced protocol (every reduction is "
            "marked REDUCED in the configs)" + (" on a stand-in data set (MNIST digits, 10 classes), not FEMNIST"
                                                 if "standin" in args.column else "") +
            "; the published numbers are shown for context only.\n")
    if args.collect:
        only = f" --only {' '.join(args.only)}" if args.only else ""
        how = (f"Table made by `python benchmarks/column.py {args.column}{only} --collect RUN_DIR ...` from finished runs of "
               f"`fedplug --cfg {pattern.format('<algo>')}` ({time.strftime('%Y-%m-%d')}, 2 cores, no GPU; seconds are "
               "each run's own, from its summary.json).")
    else:
        command = f"python benchmarks/column.py {args.column}" + (f" --jobs {args.jobs}" if args.jobs > 1 else "") + \
            (f" --only {' '.join(args.only)}" if args.only else "")
        how = (f"Generated by `{command}` ({time.strftime('%Y-%m-%d')}, 2 cores, no GPU; seconds are wall time of "
               f"each run, {args.jobs} run(s) at a time; CPU seconds are the CPU time of its process, about what a "
               f"one-thread run takes alone on an idle core, more on a loaded machine); configs `{pattern.format('<algo>')}`.")
    pictures = [picture]
    if args.only:
        previous = [line for line in path.read_text().splitlines() if line.startswith("Other rows:")] or \
            [f"Other rows: {line}" for line in path.read_text().splitlines()
             if line.startswith(("Generated by", "Table made"))]
        how = "\n\n".join([f"Rows of {', '.join(args.only)}: {how}", *previous[:1]])
        pictures.append(f"{args.column}_column.png")  # the full column's curves, from its last full run
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([
        f"# {title}: fedplug vs. published (weighted test accuracy %, best-val-loss round)",
        "",
        how,
        note,
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        *rows,
        "",
        *[f"![learning curves]({p})" for p in pictures],
        "",
    ]))


def plot(results: dict, title: str, path: Path) -> None:
    series = {algo: ([rnd for rnd, _ in r["curve"]], [100 * acc for _, acc in r["curve"]]) for algo, r in results.items()}
    plot_curves(series, "weighted test accuracy (%)", title, path)


def plot_curves(series: dict[str, tuple[list, list]], ylabel: str, title: str, path: Path) -> None:
    """One line per algorithm: {algorithm: (rounds, values)} against the round, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for algo, (rounds, values) in series.items():
        ax.plot(rounds, values, marker="o", markersize=3, label=algo)
    ax.set(xlabel="round", ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
