"""The 100-client LR workload: plain loop, plain vmap, fedplug sequential and fedplug vectorized, per round.

Each contender trains the same rounds (same clients, same batches) in this one process, in turns
(`--repeats` turns, the median round of all turns counts), one PyTorch thread. Also reported: each
round's fastest turn, averaged over the rounds ("min of turns"): on a shared machine, other jobs only
ever add time, so the fastest of interleaved turns is the figure least moved by them. Prints a JSON
line and rewrites benchmarks/results/speed.md.

    python benchmarks/speed/bench_lr_workload.py [--rounds 40] [--repeats 3]
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fedplug_loop import fedplug_rounds  # noqa: E402
from lr_workload import CLASSES, lr_config, lr_workload  # noqa: E402
from plain_lr import plain_loop, plain_vmap  # noqa: E402
from report import save  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = lr_workload()
    train = data.splits["train"]
    offsets = list(train.offsets)
    contenders = {
        "plain loop": lambda: plain_loop(train.x, train.y, offsets, args.rounds, 10, CLASSES),
        "plain vmap": lambda: plain_vmap(train.x, train.y, offsets, args.rounds, 10, CLASSES),
        "fedplug sequential": lambda: fedplug_rounds(lr_config("sequential"), data, args.rounds),
        "fedplug vectorized": lambda: fedplug_rounds(lr_config("vectorized"), data, args.rounds),
    }
    turns: dict[str, list[list[float]]] = {k: [] for k in contenders}
    params = {}
    for _ in range(args.repeats):
        for name, fn in contenders.items():
            result = fn()
            turns[name].append(result["seconds"][1:])  # the first round pays for warm-up
            params[name] = result["params"]
    median = {k: statistics.median(s for turn in v for s in turn) for k, v in turns.items()}
    fastest = {k: statistics.mean(min(per_turn) for per_turn in zip(*v)) for k, v in turns.items()}
    runs = {k: {"seconds_per_round": median[k], "vs_plain_vmap": median[k] / median["plain vmap"],
                "vs_plain_loop": median[k] / median["plain loop"], "min_of_turns": fastest[k],
                "min_of_turns_vs_plain_loop": fastest[k] / fastest["plain loop"],
                "max_diff": max(float((params[k][n] - params["plain loop"][n]).abs().max()) for n in params[k])}
            for k in contenders}
    save("lr_workload", {"command": f"python benchmarks/speed/bench_lr_workload.py --rounds {args.rounds} "
                                    f"--repeats {args.repeats}", "runs": runs,
                         "goal": "fedplug vectorized <= 1.2x plain vmap per round"})


if __name__ == "__main__":
    main()
