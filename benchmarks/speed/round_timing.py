"""Timing rounds: one contender's rounds one after another (`timed`), or several contenders round by round
(`paired`).

A round stream is an iterator whose `next()` trains one round and returns (the global parameters, the
samples trained on): plain_lr.plain_rounds, fedplug_loop.FedplugRounds.

Why `paired`: on a shared machine the speed of the cores moves by 10-30% within seconds (other jobs,
another guest on the host), so contenders timed in turns of whole runs see different machines, and their
ratio moved by +-0.1 between runs of the same code. Taking the contenders round by round, in an order
that rotates each round, and reading the ratio of each contender's round to the baseline's round beside
it, compares rounds that ran within milliseconds of each other: for identical code, the medians of
those per-round ratios in four repeats agreed within about 0.01 (benchmarks/README.md, "Per-hook
overhead of the sequential backend", fifth pass).
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Iterator

RoundStream = Iterator[tuple[dict, int]]


def timed(stream: RoundStream, rounds: int) -> dict:
    """Seconds of each of `rounds` rounds of a round stream, the samples trained on, the final parameters."""
    seconds, samples = [], 0
    for _ in range(rounds):
        started = time.perf_counter()
        params, count = next(stream)
        seconds.append(time.perf_counter() - started)
        samples += count
    return {"seconds": seconds, "samples": samples, "params": params}


def paired(streams: dict[str, RoundStream], rounds: int,
           clock: Callable[[], float] = time.perf_counter) -> tuple[dict[str, list[float]], dict[str, dict]]:
    """Each stream's `rounds` rounds, taken round by round: in round i the contenders run in their order
    rotated by i. Returns the seconds of each contender's rounds (the first round, which pays for warm-up,
    left out) and each one's final parameters."""
    names = list(streams)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    params: dict[str, dict] = {}
    for i in range(rounds + 1):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            started = clock()
            params[name], _ = next(streams[name])
            if i:
                seconds[name].append(clock() - started)
    return seconds, params


def paired_ratio(seconds: dict[str, list[float]], name: str, baseline: str) -> float:
    """The median over rounds of `name`'s round time over `baseline`'s round time in the same round."""
    return statistics.median(a / b for a, b in zip(seconds[name], seconds[baseline]))
