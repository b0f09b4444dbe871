"""Scale: 10,000 clients against 1,000, 100 sampled per round (the LR workload), vectorized backend.

A round's cost should follow the clients sampled, not the clients existing: each size runs in its
own process (so peak memory is its own), trains `--rounds` rounds, and reports the median seconds
per round (training and aggregation) and peak RSS next to the size of its data. Prints a JSON line
and rewrites benchmarks/results/speed.md.

    python benchmarks/speed/bench_scale.py [--rounds 20]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import save  # noqa: E402


def child(clients: int, rounds: int) -> None:
    import torch

    from fedplug_loop import fedplug_rounds
    from lr_workload import lr_config, lr_workload

    torch.set_num_threads(1)
    data = lr_workload(num_clients=clients)
    data_gb = sum(s.x.nbytes + s.y.nbytes for s in data.splits.values()) / 2**30
    before = rss_gb()
    result = fedplug_rounds(lr_config("vectorized", num_clients=clients, per_round=100), data, rounds)
    print(json.dumps({"seconds_per_round": statistics.median(result["seconds"][1:]), "data_gb": data_gb,
                      "rss_before_rounds_gb": before, "rss_after_rounds_gb": rss_gb()}))


def rss_gb() -> float:
    """Resident memory now (Linux), GB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.rounds)
        return
    runs = {}
    for clients in (1000, 10000):
        proc = subprocess.Popen([sys.executable, __file__, "--child", str(clients), "--rounds", str(args.rounds)],
                                stdout=subprocess.PIPE, text=True)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"the {clients}-client run failed")
        runs[f"{clients:,}"] = {**json.loads(out.strip().splitlines()[-1]), "peak_gb": usage.ru_maxrss / 2**20}
    save("scale", {"command": f"python benchmarks/speed/bench_scale.py --rounds {args.rounds}", "runs": runs,
                   "ratio_10k_to_1k": runs["10,000"]["seconds_per_round"] / runs["1,000"]["seconds_per_round"],
                   "goal": "10,000 clients within 1.5x the 1,000-client seconds per round; memory grows with the data"})


if __name__ == "__main__":
    main()
