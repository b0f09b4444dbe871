"""The personalized plug-ins on the reference Synthetic protocol: sequential against vectorized, whole runs.

For each of `--algos` (default pfedme, ditto, fedem): `fedplug --cfg configs/<algo>_lr_on_synthetic.yaml`
with each backend, separate processes in turn, one thread, the data cache filled first. Wall time,
peak RSS and the reported result; the results must agree. Prints a JSON line and rewrites speed.md.

    python benchmarks/speed/bench_plugins.py [--algos pfedme ditto fedem]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_fedavg_synthetic import ROOT, measure  # noqa: E402
from report import save  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--algos", nargs="+", default=["pfedme", "ditto", "fedem"])
    parser.add_argument("--outdir", default="/tmp/fedplug-bench-plugins")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"
    runs = {}
    for algo in args.algos:
        cmd = [sys.executable, "-m", "fedplug", "--cfg", str(ROOT / "configs" / f"{algo}_lr_on_synthetic.yaml"),
               "threads=1", f"outdir={args.outdir}"]
        seq = measure(cmd + ["federate.backend=sequential"])
        vec = measure(cmd + ["federate.backend=vectorized"])
        runs[algo] = {name: {"seconds": r["seconds"], "peak_gb": r["peak_gb"], "test_acc": r["result"]["test_acc"],
                             "best_round": r["result"]["best_round"], "rounds_run": r["result"]["rounds_run"]}
                      for name, r in (("sequential", seq), ("vectorized", vec))}
        runs[algo]["speedup"] = seq["seconds"] / vec["seconds"]
        save("plugins_synthetic", {"command": "python benchmarks/speed/bench_plugins.py --algos "
                                              + " ".join(args.algos), "runs": runs})  # after each: partial results stay


if __name__ == "__main__":
    main()
