"""Where fedplug sequential's time beyond the plain loop goes, layer by layer, measured in place.

Timing a part of fedplug in a tight loop of its own (overhead_parts.py) keeps its code and data in the
CPU's caches, and the parts so timed added up to half or less of the gap seen between whole rounds. This
script measures in place instead: fedplug's rounds against the plain loop's, round by round
(round_timing.paired, thread CPU time), first as they are, then with one layer after another replaced by
the plain loop's code for the same arithmetic (a stand-in monkeypatched in for this process only). The plain
loop here writes SGD's update out (plain_lr.HandwrittenSGD), as fedplug makes it (fedplug/core/optimizer_calls.py),
so the figures are fedplug's own layers, not torch.optim's wrappers:

  1. batches: the fused loop's epoch as the plain loop's (`sgd_epoch` on `model.fc`, `F.cross_entropy`, no
     loss read, the hand-written SGD step): the model's wrapper module, the criterion module and the fused
     loop's per-batch work;
  2. routine: `Trainer.run_routine` as a bare loop (shuffle, a fresh hand-written SGD, the batches): the hooks, their
     Context writes and the fused loop's set-up;
  3. trainer: `Trainer.train` as that bare loop, no Context: the Context and the schedule;
  4. visit: `SequentialBackend.train_client` as the plain loop's visit around it (load the global model,
     train, hand the parameters back): the plug-in plan's per-visit calls and the upload.

What is left after 4 is the round: sampling, the round's facts and aggregation, the global update and
the fresh optimizer per visit (the plain loop keeps one). Only for the LR workload's model (`fc`). Prints
one JSON line: each step's median ratio to the plain loop, per repeat and the median of the repeats.

    python benchmarks/speed/overhead_layers.py [--rounds 240] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fedplug_loop import FedplugRounds  # noqa: E402
from lr_workload import CLASSES, lr_config, lr_workload  # noqa: E402
from plain_lr import HandwrittenSGD, plain_rounds, sgd_epoch  # noqa: E402
from round_timing import paired, paired_ratio  # noqa: E402

import fedplug.core.trainer as trainer_module  # noqa: E402
from fedplug.backends.sequential import SequentialBackend  # noqa: E402
from fedplug.core.context import Context  # noqa: E402
from fedplug.core.hooks import HookTable  # noqa: E402
from fedplug.core.params import Params  # noqa: E402
from fedplug.core.trainer import Trainer  # noqa: E402
from fedplug.seeding import CLIENT_TRAINING, generator  # noqa: E402

BATCH = 20


def plain_batches(ctx: Context, batches: int) -> None:
    """The fused loop's epoch with the plain loop's calls; the Context left as the fused loop leaves it."""
    sgd_epoch(ctx.model.fc, HandwrittenSGD(ctx.model.fc.parameters(), ctx.lr), ctx.x, ctx.y, ctx.batch_order, BATCH)
    ctx.__dict__.update(cur_batch_i=batches - 1, num_samples=ctx.num_samples + ctx.x.shape[0])
    ctx.end_scope("batch")


def bare_update(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, lr: float) -> dict:
    """A local update as the plain loop makes it, but with a fresh optimizer (as fedplug's contract has it)."""
    order = torch.randperm(x.shape[0], generator=gen)
    sgd_epoch(model.fc, HandwrittenSGD(model.parameters(), lr), x, y, order, BATCH)
    return {"train_total": x.shape[0], "train_steps": -(-x.shape[0] // BATCH), "train_loss": 0.0}


def bare_routine(table: HookTable, ctx: Context) -> None:
    ctx.results = bare_update(ctx.model, ctx.x, ctx.y, ctx.generator, ctx.lr)


def bare_train(self: Trainer, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator, **extra: Any) -> dict:
    return bare_update(self.model, x, y, generator, self.cfg.train.optimizer.lr)  # the backend passes generator=


def bare_visit(self: SequentialBackend, client: int, round_num: int, global_params: Params,
               extras: dict | None = None) -> dict:
    with torch.no_grad():
        for p, g in zip(self.model.parameters(), global_params.values()):
            p.copy_(g)
    x, y = self.data.splits["train"].client(client)
    result = self.trainer.train(x, y, generator(self.cfg.seed, CLIENT_TRAINING, round_num, client))
    return {**result, "params": {n: p.detach() for n, p in self.model.named_parameters()}, "extras": {}}


STEPS = [("fedplug", None, None, None),
         ("1. batches as the plain loop's", trainer_module, "train_batches", plain_batches),
         ("2. routine bare", trainer_module.Trainer, "run_routine", staticmethod(bare_routine)),
         ("3. trainer bare", trainer_module.Trainer, "train", bare_train),
         ("4. visit bare", SequentialBackend, "train_client", bare_visit)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=240)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data, cfg = lr_workload(), lr_config("sequential")
    train = data.splits["train"]
    ratios: dict[str, list[float]] = {}
    for name, owner, attribute, stand_in in STEPS:
        if owner is not None:  # cumulative: each step keeps the stand-ins of the steps before it
            setattr(owner, attribute, stand_in)
        for _ in range(args.repeats):
            streams = {"plain loop": plain_rounds(train.x, train.y, list(train.offsets), 10, CLASSES,
                                                  handwritten_sgd=True),
                       "fedplug": FedplugRounds(cfg, data)}
            seconds, _ = paired(streams, args.rounds, time.thread_time)
            ratios.setdefault(name, []).append(paired_ratio(seconds, "fedplug", "plain loop"))
        print(f"{name}: {statistics.median(ratios[name]):.3f}", file=sys.stderr)
    print(json.dumps({"command": f"python benchmarks/speed/overhead_layers.py --rounds {args.rounds} "
                                 f"--repeats {args.repeats}",
                      "vs_plain_loop": {k: statistics.median(v) for k, v in ratios.items()}, "per_repeat": ratios}))


if __name__ == "__main__":
    main()
