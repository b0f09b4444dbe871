"""The Ray backend against fedplug local and Flower's Ray simulation, per round, on the 100- and 1,000-client LR
workloads (10 and 100 clients sampled per round), in one run.

fedplug: sequential, vectorized, and the Ray backend with 1 and 2 workers, each inner backend, on a local Ray of
2 CPUs, one PyTorch thread per worker; a round is training and aggregation (fedplug_loop.py), the median of the
rounds after the first (which pays for warm-up) counts, and each contender's final parameters are compared with
the sequential one's. Flower: `pip install "flwr[simulation]" torch==2.13.0` into a throwaway venv under a temp
folder (never a dependency of fedplug), then flower_lr.py in that venv: the same model, data, batches and SGD on
a Ray simulation with 2 client actors (1 CPU each), FedAvg, no evaluation, fewer rounds (`--flower-rounds`).
Prints a JSON line and writes benchmarks/results/ray.md.

    python benchmarks/speed/bench_ray.py [--rounds 30] [--flower-rounds 12]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
from fedplug_loop import fedplug_rounds  # noqa: E402
from lr_workload import CLASSES, lr_config, lr_workload  # noqa: E402

WORKLOADS = ((100, 10), (1000, 100))  # (clients, sampled per round)
CONTENDERS = {  # name -> (federate.backend, extra config)
    "fedplug sequential": ("sequential", {}),
    "fedplug vectorized": ("vectorized", {}),
    "fedplug ray, 1 worker, sequential inner": ("ray", {"ray.num_workers": 1, "ray.inner": "sequential"}),
    "fedplug ray, 2 workers, sequential inner": ("ray", {"ray.num_workers": 2, "ray.inner": "sequential"}),
    "fedplug ray, 1 worker, vectorized inner": ("ray", {"ray.num_workers": 1, "ray.inner": "vectorized"}),
    "fedplug ray, 2 workers, vectorized inner": ("ray", {"ray.num_workers": 2, "ray.inner": "vectorized"}),
}


def workload(num_clients: int, _cfg: object = None):
    """The data factory Ray workers call (importable there: this folder is on the workers' PYTHONPATH)."""
    return lr_workload(num_clients=num_clients)


def fedplug_runs(clients: int, per_round: int, rounds: int) -> dict[str, dict]:
    import ray

    data = workload(clients)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        results = {}
        for name, (backend, extra) in CONTENDERS.items():
            cfg = lr_config(backend, num_clients=clients, per_round=per_round, **{"threads": 1, **extra})
            results[name] = fedplug_rounds(cfg, data, rounds, data_factory=partial(workload, clients))
    finally:
        ray.shutdown()
    reference = results["fedplug sequential"]["params"]
    return {name: {"seconds_per_round": statistics.median(r["seconds"][1:]), "first_round": r["seconds"][0],
                   "max_diff_vs_sequential": max(float((r["params"][n] - reference[n]).abs().max()) for n in reference)}
            for name, r in results.items()}


def flower_venv(folder: Path) -> tuple[Path | None, str]:
    """A throwaway venv with Flower's simulation extra and CPU PyTorch: its Python, or None and why not."""
    venv = folder / "flower-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "flwr[simulation]", "torch==2.13.0"],
                         capture_output=True, text=True)
    if pip.returncode != 0:
        return None, f"pip install flwr[simulation] failed: {pip.stderr.strip().splitlines()[-1:]}"
    return venv / "bin" / "python", ""


def flower_run(python: Path, folder: Path, clients: int, per_round: int, rounds: int) -> dict:
    train = workload(clients).splits["train"]
    path = folder / f"lr_{clients}.npz"
    np.savez(path, x=train.x.numpy(), y=train.y.numpy(), offsets=np.array(train.offsets), classes=CLASSES)
    proc = subprocess.run([str(python), str(HERE / "flower_lr.py"), str(path), str(clients), str(per_round),
                           str(rounds), "2"], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"seconds_per_round": statistics.median(out["seconds"][1:]), "first_round": out["seconds"][0],
            "rounds_timed": len(out["seconds"]) - 1, "versions": f"flwr {out['flower']}, ray {out['ray']}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--flower-rounds", type=int, default=12)
    args = parser.parse_args()
    torch.set_num_threads(1)
    # Ray's workers inherit the driver's environment: fedplug and this folder (the data factory) importable there.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), str(HERE), os.environ.get("PYTHONPATH")]))
    report: dict = {"command": f"python benchmarks/speed/bench_ray.py --rounds {args.rounds} "
                               f"--flower-rounds {args.flower_rounds}", "workloads": {}}
    with tempfile.TemporaryDirectory(prefix="fedplug-flower-") as tmp:
        started = time.perf_counter()
        python, why = flower_venv(Path(tmp))
        report["flower_install_seconds"] = time.perf_counter() - started
        for clients, per_round in WORKLOADS:
            runs = fedplug_runs(clients, per_round, args.rounds)
            runs["flower (Ray simulation, 2 actors)"] = (flower_run(python, Path(tmp), clients, per_round,
                                                                    args.flower_rounds)
                                                         if python else {"error": why})
            report["workloads"][f"{clients} clients, {per_round} per round"] = runs
    print(json.dumps(report))
    (ROOT / "benchmarks" / "results" / "ray.md").write_text(markdown(report))


def markdown(report: dict) -> str:
    lines = ["# The Ray backend against fedplug local and Flower's Ray simulation", "",
             f"`{report['command']}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.cpu_count()} cores, "
             f"no GPU, load average {os.getloadavg()[0]:.1f} at the end; the throwaway Flower venv took "
             f"{report['flower_install_seconds']:.0f} s to install)", ""]
    for workload_name, runs in report["workloads"].items():
        flower = runs["flower (Ray simulation, 2 actors)"].get("seconds_per_round")
        local = {"sequential": runs["fedplug sequential"]["seconds_per_round"],
                 "vectorized": runs["fedplug vectorized"]["seconds_per_round"]}
        lines += [f"## {workload_name}", "", "| contender | s per round | first round s | Flower / this | "
                  "this / fedplug local (same inner) | max diff vs sequential |", "|---|---|---|---|---|---|"]
        for name, r in runs.items():
            if "error" in r:
                lines.append(f"| {name} | not run: {r['error']} | | | | |")
                continue
            s = r["seconds_per_round"]
            inner = "vectorized" if "vectorized" in name else "sequential"
            over = f"{s / local[inner]:.2f}" if name.startswith("fedplug ray") else ""
            diff = f"{r['max_diff_vs_sequential']:.1e}" if "max_diff_vs_sequential" in r else r.get("versions", "")
            lines.append(f"| {name} | {s:.4f} | {r['first_round']:.2f} | "
                         f"{f'{flower / s:.1f}x' if flower else ''} | {over} | {diff} |")
        lines.append("")
    lines += ["A round: training and aggregation, the median of the rounds after the first (Flower: the gap between "
              "two rounds' starts, FedAvg without evaluation; its first round includes starting Ray and the client "
              "actors). fedplug's Ray contenders share one local Ray of 2 CPUs started before them; their first "
              "round includes the workers' warm-up. \"this / fedplug local\": the Ray backend's round against the "
              "in-process backend it runs inside each worker (its overhead: shipping the global model and the "
              "uploads, Ray's calls, waiting for the slowest block). \"max diff\": the final global parameters "
              "against fedplug sequential's (0: bit-identical)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
