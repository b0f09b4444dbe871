"""The reference Synthetic FedAvg run, whole (process start to exit, data generation included).

Separate processes, in one invocation, one PyTorch thread each (OMP_NUM_THREADS=1 for all):
  - plain:                  benchmarks/plain_fedavg_synthetic.py (generates the data in memory)
  - fedplug vectorized, cold: `fedplug --cfg configs/fedavg_lr_on_synthetic.yaml federate.backend vectorized`
                            with an empty data cache (generates the data and writes the cache)
  - fedplug vectorized, warm: the same with the cache filled (memory-mapped)
  - fedplug sequential, warm: the reference backend, for comparison
Wall time and peak RSS from the OS. Prints a JSON line and rewrites benchmarks/results/speed.md.

    python benchmarks/speed/bench_reference.py [--repeats 1]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_fedavg_synthetic import CONFIG, ROOT, measure  # noqa: E402
from report import save  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"
    cache = Path(tempfile.mkdtemp(prefix="fedplug-speed-"))

    def fedplug(backend: str) -> list[str]:
        return [sys.executable, "-m", "fedplug", "--cfg", str(CONFIG), f"data.root={cache / 'data'}",
                f"outdir={cache / 'runs'}", "threads=1", f"federate.backend={backend}"]

    names = ("plain", "fedplug vectorized, cold cache", "fedplug vectorized, warm cache",
             "fedplug sequential, warm cache")
    runs: dict[str, list[dict]] = {n: [] for n in names}
    try:
        for _ in range(args.repeats):
            runs["plain"].append(measure([sys.executable, str(ROOT / "benchmarks" / "plain_fedavg_synthetic.py")]))
            shutil.rmtree(cache / "data", ignore_errors=True)
            runs["fedplug vectorized, cold cache"].append(measure(fedplug("vectorized")))
            runs["fedplug vectorized, warm cache"].append(measure(fedplug("vectorized")))
            runs["fedplug sequential, warm cache"].append(measure(fedplug("sequential")))
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    plain = statistics.median(r["seconds"] for r in runs["plain"])
    summary = {n: {"seconds": statistics.median(r["seconds"] for r in rs), "peak_gb": max(r["peak_gb"] for r in rs),
                   "test_acc": rs[0]["result"]["test_acc"], "best_round": rs[0]["result"]["best_round"],
                   "rounds_run": rs[0]["result"]["rounds_run"]} for n, rs in runs.items()}
    for s in summary.values():
        s["ratio_to_plain"] = s["seconds"] / plain
    save("reference_synthetic", {"command": f"python benchmarks/speed/bench_reference.py --repeats {args.repeats}",
                                 "runs": summary,
                                 "goal": "fedplug vectorized <= 1.3x plain, <= 2.5 GB peak"})


if __name__ == "__main__":
    main()
