"""One client visit of the LR workload, plain loop vs. fedplug sequential before and after a change, interleaved.

A visit: the model loaded with the global parameters, one epoch of batches of 20 (client 4: 10 batches),
the parameters read back and added to a sum, as a round does per client. `plain` is plain_lr.plain_loop's
per-client body; `before` and `after` call `SequentialBackend.train_client` of the package at `--before REV`
(extracted as in bench_before_after.py) and of the working tree. Each is timed as the minimum over
`--repeats` interleaved repeats of 10 visits, by this thread's CPU time, one PyTorch thread: short
repeats, so a loaded machine moves the minimum less than whole rounds (give the load average with the
figures all the same). `--no-batches` times the visit without its batches (the per-visit overhead).
Prints one JSON line; saves nothing.

    python benchmarks/speed/visit_before_after.py --before main [--repeats 200] [--no-batches]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import timeit
from pathlib import Path
from typing import Callable

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_before_after import old_package  # noqa: E402
from lr_workload import lr_config, lr_workload  # noqa: E402
from plain_lr import seed_for, sgd_epoch  # noqa: E402

from fedplug.config.load import dotted  # noqa: E402
from fedplug.data.federated import FederatedData  # noqa: E402

CLIENT, ROUND = 4, 3


def fedplug_visit(package: str, cfg, data: FederatedData, batches: bool) -> Callable[[], object]:
    """`train_client` of `package` (fedplug or fedplug_old) for CLIENT, its upload added to a running sum."""
    def module(name: str):
        return __import__(f"{package}.{name}", fromlist=["_"])

    if not batches:  # the epoch's batches left out, the Context left as after them
        def no_batches(ctx, count: int) -> None:
            ctx.__dict__["cur_batch_i"] = count - 1
            ctx.end_scope("batch")

        module("core.trainer").train_batches = no_batches
    plan = module("run.plan").build_plan(cfg)
    backend = module("backends").build_backend(cfg, module("models").build_model(cfg, data.input_shape, plan), plan,
                                               data)
    global_params = {n: t.clone() for n, t in backend.shared_parameters().items()}
    sums = {n: torch.zeros_like(t) for n, t in global_params.items()}

    def visit() -> None:
        result = backend.train_client(CLIENT, ROUND, global_params, {})
        for name, tensor in result["params"].items():
            sums[name].add_(tensor, alpha=result["train_total"])

    return visit


def plain_visit(data: FederatedData, batches: bool) -> Callable[[], object]:
    """plain_lr.plain_loop's body for CLIENT: copy in, shuffle, the batches, add to the sum."""
    split = data.splits["train"]
    lo, hi = split.offsets[CLIENT], split.offsets[CLIENT + 1]
    x, y = split.x[lo:hi], split.y[lo:hi]
    model = torch.nn.Linear(x.shape[1], data.num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    global_params = [p.detach().clone() for p in model.parameters()]
    sums = [torch.zeros_like(p) for p in global_params]

    def visit() -> None:
        with torch.no_grad():
            for p, g in zip(model.parameters(), global_params):
                p.copy_(g)
        order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed_for(0, 2, ROUND, CLIENT)))
        if batches:
            sgd_epoch(model, opt, x, y, order, 20)
        for s, p in zip(sums, model.parameters()):
            s.add_(p.detach(), alpha=x.shape[0])

    return visit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", required=True)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--no-batches", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    _, old_load = old_package(args.before, Path(tempfile.mkdtemp(prefix="fedplug-before-")))
    data, cfg, batches = lr_workload(), lr_config("sequential"), not args.no_batches
    visits = {"plain loop": plain_visit(data, batches),
              "before": fedplug_visit("fedplug_old", old_load(None, dotted(cfg.to_dict())), data, batches),
              "after": fedplug_visit("fedplug", cfg, data, batches)}
    best = {name: float("inf") for name in visits}
    for _ in range(args.repeats):
        for name, visit in visits.items():
            best[name] = min(best[name], timeit.timeit(visit, number=10, timer=time.thread_time) / 10 * 1e6)
    print(json.dumps({"command": f"python benchmarks/speed/visit_before_after.py --before {args.before} "
                                 f"--repeats {args.repeats}" + (" --no-batches" if args.no_batches else ""),
                      "load_average": round(os.getloadavg()[0], 1), "us_per_visit": best,
                      "vs_plain_loop": {k: v / best["plain loop"] for k, v in best.items()},
                      "after_vs_before": best["after"] / best["before"]}))


if __name__ == "__main__":
    main()
