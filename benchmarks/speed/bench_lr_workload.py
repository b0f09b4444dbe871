"""The 100-client LR workload: plain loop, plain vmap, fedplug sequential and fedplug vectorized, per round.

A second plain loop writes SGD's update out (plain_lr.HandwrittenSGD) where the first calls torch.optim.SGD:
fedplug makes SGD's arithmetic directly too (fedplug/core/optimizer_calls.py), so the ratio to that loop is
fedplug's own overhead, the ratio to the first what a user of a plain PyTorch loop gains or loses.

The contenders train the same rounds (same clients, same batches) in this one process, round by round
(round_timing.paired: the order rotates each round), one PyTorch thread, `--repeats` times `--rounds`
rounds. Reported: each one's median round (wall clock), and its ratios to the plain vmap and the plain
loop, each the median over all rounds of its round time over theirs in the same round (rounds that ran
milliseconds apart, so what other jobs on a shared machine do moves the ratios little). Prints a JSON
line and rewrites benchmarks/results/speed.md.

    python benchmarks/speed/bench_lr_workload.py [--rounds 240] [--repeats 3]
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fedplug_loop import FedplugRounds  # noqa: E402
from lr_workload import CLASSES, lr_config, lr_workload  # noqa: E402
from plain_lr import plain_rounds, plain_vmap_rounds  # noqa: E402
from report import save  # noqa: E402
from round_timing import paired, paired_ratio  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=240)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = lr_workload()
    train = data.splits["train"]
    offsets = list(train.offsets)
    seconds: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        streams = {"plain loop": plain_rounds(train.x, train.y, offsets, 10, CLASSES),
                   "plain loop, hand-written SGD": plain_rounds(train.x, train.y, offsets, 10, CLASSES,
                                                               handwritten_sgd=True),
                   "plain vmap": plain_vmap_rounds(train.x, train.y, offsets, 10, CLASSES),
                   "fedplug sequential": FedplugRounds(lr_config("sequential"), data),
                   "fedplug vectorized": FedplugRounds(lr_config("vectorized"), data)}
        repeat, params = paired(streams, args.rounds)
        for name, times in repeat.items():
            seconds.setdefault(name, []).extend(times)
    runs = {k: {"seconds_per_round": statistics.median(seconds[k]),
                "vs_plain_vmap": paired_ratio(seconds, k, "plain vmap"),
                "vs_plain_loop": paired_ratio(seconds, k, "plain loop"),
                "vs_handwritten_sgd": paired_ratio(seconds, k, "plain loop, hand-written SGD"),
                "max_diff": max(float((params[k][n] - params["plain loop"][n]).abs().max()) for n in params[k])}
            for k in seconds}
    save("lr_workload", {"command": f"python benchmarks/speed/bench_lr_workload.py --rounds {args.rounds} "
                                    f"--repeats {args.repeats}", "runs": runs,
                         "goal": "fedplug vectorized <= 1.2x plain vmap, fedplug sequential <= 1.15x plain loop, "
                                 "per round"})


if __name__ == "__main__":
    main()
