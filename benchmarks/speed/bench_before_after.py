"""fedplug sequential before and after a change, against the plain loop, in one process (the LR workload).

`--before REV` (a git revision of this repository) is extracted to a temporary folder as the package
`fedplug_old`; the plain loop, the old fedplug and the working tree's fedplug then train the same rounds
round by round (round_timing.paired: the order rotates each round), one PyTorch thread, `--repeats` times
`--rounds` rounds. Printed per repeat and as the median of the repeats: the median over rounds of each
fedplug's round time over the plain loop's in the same round, and of after's over before's; and whether
the old and new final parameters are bit-identical. With `--cpu`, seconds of CPU time of this thread
(`time.thread_time`) instead of wall-clock seconds. With `--calls`, each contender's Python-level function
calls over `--rounds` rounds (cProfile; a count, so unaffected by machine load) instead of seconds.
Prints one JSON line; saves nothing.

    python benchmarks/speed/bench_before_after.py --before main [--rounds 240] [--repeats 4] [--cpu] [--calls]
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
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
from fedplug_loop import FedplugRounds, fedplug_rounds  # noqa: E402
from lr_workload import CLASSES, lr_config, lr_workload  # noqa: E402
from plain_lr import plain_loop, plain_rounds  # noqa: E402
from round_timing import paired, paired_ratio  # noqa: E402

from fedplug.config.load import dotted  # noqa: E402


def old_package(rev: str, folder: Path):
    """The package at `rev` as `fedplug_old`: its version of fedplug_loop (a namespace), its load_config."""
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
    return namespace, load_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", required=True)
    parser.add_argument("--rounds", type=int, default=240)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--calls", action="store_true")
    parser.add_argument("--cpu", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    old_loop, old_load = old_package(args.before, Path(tempfile.mkdtemp(prefix="fedplug-before-")))
    data = lr_workload()
    train = data.splits["train"]
    new_cfg = lr_config("sequential")
    old_cfg = old_load(None, dotted(new_cfg.to_dict()))  # the same values, validated by the old code
    command = f"python benchmarks/speed/bench_before_after.py --before {args.before} --rounds {args.rounds}"
    if args.calls:
        runs = {"plain loop": lambda: plain_loop(train.x, train.y, list(train.offsets), args.rounds, 10, CLASSES),
                "before": lambda: old_loop["fedplug_rounds"](old_cfg, data, args.rounds),
                "after": lambda: fedplug_rounds(new_cfg, data, args.rounds)}
        calls = {}
        for name, fn in runs.items():
            fn()  # warm-up: first-call imports and caches are not the rounds' work
            profile = cProfile.Profile()
            profile.runcall(fn)
            calls[name] = pstats.Stats(profile).total_calls
        print(json.dumps({"command": command + " --calls", "python_calls": calls}))
        return
    ratios: dict[str, list[float]] = {"before": [], "after": [], "after_vs_before": []}
    identical = True
    for repeat in range(args.repeats):
        streams = {"plain loop": plain_rounds(train.x, train.y, list(train.offsets), 10, CLASSES),
                   "before": old_loop["FedplugRounds"](old_cfg, data), "after": FedplugRounds(new_cfg, data)}
        seconds, params = paired(streams, args.rounds, time.thread_time if args.cpu else time.perf_counter)
        ratios["before"].append(paired_ratio(seconds, "before", "plain loop"))
        ratios["after"].append(paired_ratio(seconds, "after", "plain loop"))
        ratios["after_vs_before"].append(paired_ratio(seconds, "after", "before"))
        identical &= all(torch.equal(params["before"][n], params["after"][n]) for n in params["after"])
        print(f"repeat {repeat + 1}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in ratios.items()), file=sys.stderr)
    print(json.dumps({
        "command": command + f" --repeats {args.repeats}" + (" --cpu" if args.cpu else ""),
        "load_average": round(os.getloadavg()[0], 1),
        "vs_plain_loop": {k: statistics.median(ratios[k]) for k in ("before", "after")},
        "after_vs_before": statistics.median(ratios["after_vs_before"]),
        "per_repeat": ratios, "before_after_bit_identical": identical,
    }))


if __name__ == "__main__":
    main()
