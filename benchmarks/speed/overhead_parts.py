"""What fedplug sequential does beyond the plain loop on the LR workload, part by part, in microseconds.

Each line times one part of a batch or of a client visit in fedplug's form and, where the plain loop
(`plain_lr.plain_loop`) has one, in the plain loop's form, on the workload's shapes (batch 20, 60
features, 10 classes). Every part is timed as the minimum of many short repeats in this one process,
the parts interleaved, so a loaded machine moves the figures less than whole-round timings; they
are still figures of the machine's state at the time (give the load average with them). One PyTorch
thread. Prints one JSON line; saves nothing.

    python benchmarks/speed/overhead_parts.py [--repeats 300]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import timeit
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lr_workload import lr_config, lr_workload  # noqa: E402

from fedplug.backends import build_backend  # noqa: E402
from fedplug.core import default_hooks  # noqa: E402
from fedplug.core.context import Context, CtxVar  # noqa: E402
from fedplug.core.module_calls import already_training, callee  # noqa: E402
from fedplug.models import build_model  # noqa: E402
from fedplug.run.plan import build_plan  # noqa: E402


def parts() -> dict[str, tuple[Callable[[], object], Callable[[], object] | None]]:
    """name -> (fedplug's form, the plain loop's form or None)."""
    data = lr_workload()
    cfg = lr_config("sequential")
    plan = build_plan(cfg)
    backend = build_backend(cfg, build_model(cfg, data.input_shape, plan), plan, data)
    model, trainer = backend.model, backend.trainer
    linear, criterion = model.fc, trainer.criterion
    x, y = data.splits["train"].client(0)
    order = torch.randperm(x.shape[0])
    out = model(x[:20])
    loss = criterion(out, y[:20])
    global_params = {n: t.clone() for n, t in backend.shared_parameters().items()}
    ctx = Context(x=x, y=y, batch_order=order, batch_size_cfg=20, cur_batch_i=2, device=torch.device("cpu"))
    ctx.num_samples, ctx.loss_total = CtxVar(0, "routine"), CtxVar(0.0, "routine")

    def gather() -> None:
        default_hooks._hook_on_batch_start_gather(ctx)
        ctx.end_scope("batch")

    def batch_end() -> None:
        ctx.set_scoped("batch", batch_size=20, loss_batch=loss)
        default_hooks._hook_on_batch_end(ctx)
        ctx.end_scope("batch")

    def scoped_writes() -> None:  # the gather's and the forward's writes and the batch's clean-up
        ctx.set_scoped("batch", batch_index=order, x_batch=x, y_batch=y, batch_size=20)
        ctx.set_scoped("batch", y_prob=out, loss_batch=loss, loss_task=loss)
        ctx.end_scope("batch")

    hooks = tuple(lambda c: None for _ in range(4))

    def hook_calls() -> None:
        for hook in hooks:
            hook(ctx)

    def plain_copy_in() -> None:
        with torch.no_grad():
            for p, g in zip(linear.parameters(), global_params.values()):
                p.copy_(g)

    return {
        "batch: model call (LogisticRegression around nn.Linear vs. nn.Linear)": (lambda: model(x[:20]),
                                                                                  lambda: linear(x[:20])),
        "batch: loss (CrossEntropyLoss module vs. F.cross_entropy)": (lambda: criterion(out, y[:20]),
                                                                      lambda: F.cross_entropy(out, y[:20])),
        "batch: fused loop's model call (forward while no hook is registered) vs. nn.Linear": (
            lambda: callee(model)(x[:20]), lambda: linear(x[:20])),
        "batch: fused loop's loss (forward while no hook is registered) vs. F.cross_entropy": (
            lambda: callee(criterion)(out, y[:20]), lambda: F.cross_entropy(out, y[:20])),
        "batch: gather hook + end_scope vs. slice and two index ops": (gather, lambda: (x[order[40:60]],
                                                                                        y[order[40:60]])),
        "batch: _hook_on_batch_end (.item(), two writes)": (batch_end, None),
        "batch: two set_scoped + end_scope (7 names)": (scoped_writes, None),
        "batch: four hook calls (empty bodies)": (hook_calls, None),
        "visit: fresh SGD": (lambda: torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.0, weight_decay=0.0),
                             None),
        "visit: model.train()": (model.train, None),
        "visit: already_training(model) (the check that skips train())": (lambda: already_training(model), None),
        "visit: download vs. the plain loop's copy_": (lambda: backend.download(0, global_params), plain_copy_in),
        "visit: shared_parameters() (the read-back)": (backend.shared_parameters, None),
        "visit: Trainer._context": (lambda: trainer._context("train", "train", x, y, 20, 8, 1, 8), None),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(1)
    best: dict[str, list[float]] = {}
    table = parts()
    for _ in range(args.repeats):
        for name, forms in table.items():
            times = best.setdefault(name, [float("inf")] * len(forms))
            for i, fn in enumerate(forms):
                if fn is not None:
                    times[i] = min(times[i], timeit.timeit(fn, number=20) / 20 * 1e6)
    print(json.dumps({"command": f"python benchmarks/speed/overhead_parts.py --repeats {args.repeats}",
                      "load_average": round(os.getloadavg()[0], 1),
                      "us": {k: {"fedplug": round(v[0], 2), "plain": round(v[1], 2) if v[1] != float("inf") else None}
                             for k, v in best.items()}}))


if __name__ == "__main__":
    main()
