"""fedplug sequential before and after a change, against the plain loop, in one process (the LR workload).

`--before REV` (a git revision of this repository) is extracted to a temporary folder as the package
`fedplug_old`; the plain loop, the old fedplug and the working tree's fedplug then train the same rounds
in turns (`--turns`), one PyTorch thread, and the median round of each is printed with the ratios, and
whether the old and new final parameters are bit-identical, and each round's fastest turn averaged over the
rounds ("min of turns"). With `--cpu`, seconds of CPU time of this thread (`time.thread_time`) instead of
wall-clock seconds: the time spent waiting for a core that other jobs hold is not counted. With `--calls`, each contender's Python-level
function calls over the rounds (cProfile; a count, so unaffected by machine load) instead of seconds.
Prints one JSON line; saves nothing.

    python benchmarks/speed/bench_before_after.py --before main [--rounds 20] [--turns 5] [--cpu] [--calls]
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from fedplug_loop import fedplug_rounds  # noqa: E402
from lr_workload import CLASSES, lr_config, lr_workload  # noqa: E402
from plain_lr import plain_loop  # noqa: E402

from fedplug.config.load import dotted  # noqa: E402


def old_package(rev: str, folder: Path):
    """The package at `rev` as `fedplug_old`, and its version of fedplug_loop.fedplug_rounds."""
    tar = subprocess.run(["git", "archive", rev, "fedplug"], cwd=HERE.parents[1], capture_output=True, check=True)
    tarfile.open(fileobj=io.BytesIO(tar.stdout)).extractall(folder)
    (folder / "fedplug").rename(folder / "fedplug_old")
    for path in (folder / "fedplug_old").rglob("*.py"):
        text = re.sub(r"\bfedplug\.(?=[a-z_])", "fedplug_old.", path.read_text())
        path.write_text(re.sub(r"\bfrom fedplug import\b", "from fedplug_old import", text))
    sys.path.insert(0, str(folder))
    namespace: dict = {}
    exec(compile((HERE / "fedplug_loop.py").read_text().replace("from fedplug.", "from fedplug_old."),
                 "fedplug_loop_old", "exec"), namespace)
    from fedplug_old.config import load_config
    return namespace["fedplug_rounds"], load_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", required=True)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--calls", action="store_true")
    parser.add_argument("--cpu", action="store_true")
    args = parser.parse_args()
    if args.cpu:  # every contender times its rounds with time.perf_counter: make that this thread's CPU clock
        time.perf_counter = time.thread_time
    torch.set_num_threads(1)
    old_rounds, old_load = old_package(args.before, Path(tempfile.mkdtemp(prefix="fedplug-before-")))
    data = lr_workload()
    train = data.splits["train"]
    new_cfg = lr_config("sequential")
    old_cfg = old_load(None, dotted(new_cfg.to_dict()))  # the same values, validated by the old code
    contenders = {"plain loop": lambda: plain_loop(train.x, train.y, list(train.offsets), args.rounds, 10, CLASSES),
                  "before": lambda: old_rounds(old_cfg, data, args.rounds),
                  "after": lambda: fedplug_rounds(new_cfg, data, args.rounds)}
    if args.calls:
        calls = {}
        for name, fn in contenders.items():
            fn()  # warm-up: first-call imports and caches are not the rounds' work
            profile = cProfile.Profile()
            profile.runcall(fn)
            calls[name] = pstats.Stats(profile).total_calls
        print(json.dumps({"command": f"python benchmarks/speed/bench_before_after.py --before {args.before} "
                                     f"--rounds {args.rounds} --calls", "python_calls": calls}))
        return
    turns: dict[str, list[list[float]]] = {k: [] for k in contenders}
    params = {}
    for _ in range(args.turns):
        for name, fn in contenders.items():
            result = fn()
            turns[name].append(result["seconds"][1:])  # the first round pays for warm-up
            params[name] = result["params"]
    median = {k: statistics.median(s for turn in v for s in turn) for k, v in turns.items()}
    fastest = {k: statistics.mean(min(per_round) for per_round in zip(*v)) for k, v in turns.items()}
    print(json.dumps({
        "command": f"python benchmarks/speed/bench_before_after.py --before {args.before} --rounds {args.rounds} "
                   f"--turns {args.turns}" + (" --cpu" if args.cpu else ""),
        "seconds_per_round": median,
        "vs_plain_loop": {k: v / median["plain loop"] for k, v in median.items()},
        "min_of_turns_vs_plain_loop": {k: v / fastest["plain loop"] for k, v in fastest.items()},
        "after_vs_before": median["after"] / median["before"],
        "before_after_bit_identical": all(torch.equal(params["before"][n], params["after"][n]) for n in params["after"]),
    }))


if __name__ == "__main__":
    main()
