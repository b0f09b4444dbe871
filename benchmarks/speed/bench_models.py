"""ConvNet2 on the handwriting stand-in and the LSTM on Shakespeare: samples per second of training.

Plain loop (benchmarks/speed/plain_models.py), fedplug sequential and fedplug vectorized train the
same few rounds of configs/cpu/fedavg_{convnet2_on_standin,lstm_on_shakespeare}.yaml in this one
process, in turns, one PyTorch thread; each round counts with its fastest turn. Prints a JSON line
per model and rewrites speed.md, with the vectorized backend's samples per second over the
sequential one's (the same run, so the ratio holds whatever the machine's load).

    python benchmarks/speed/bench_models.py [--model convnet2|lstm|both] [--rounds 3] [--repeats 2] [--forced]

--forced adds the vectorized path forced past `federate.vectorized.max_params` (ConvNet2).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fedplug.backends.vectorized import model_blockers, size_blockers  # noqa: E402
from fedplug.config import load_config  # noqa: E402
from fedplug.data import build_data  # noqa: E402
from fedplug.models import build_model  # noqa: E402
from fedplug_loop import fedplug_rounds  # noqa: E402
from plain_models import plain_loop_model  # noqa: E402
from report import save  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MODELS = {"convnet2": ("convnet2_standin", "configs/cpu/fedavg_convnet2_on_standin.yaml"),
          "lstm": ("lstm_shakespeare", "configs/cpu/fedavg_lstm_on_shakespeare.yaml")}


def bench(model: str, rounds: int, repeats: int, forced: bool) -> None:
    name, path = MODELS[model]
    cfg = load_config(ROOT / path, {"threads": 1})
    data = build_data(cfg)
    train = data.splits["train"]
    k = cfg.federate.sample_client_num

    def plain() -> dict:
        net = build_model(cfg, data.input_shape)
        return plain_loop_model(net, train.x, train.y, list(train.offsets), rounds, k, cfg.dataloader.batch_size,
                                cfg.train.local_update_steps, cfg.train.batch_or_epoch, cfg.train.optimizer.lr,
                                cfg.grad.grad_clip, cfg.seed)

    def fedplug(backend: str, **extra):
        return lambda: fedplug_rounds(load_config(ROOT / path, {"threads": 1, "federate.backend": backend, **extra}),
                                      data, rounds)

    contenders = {"plain loop": plain, "fedplug sequential": fedplug("sequential"),
                  "fedplug vectorized": fedplug("vectorized")}
    net = build_model(cfg, data.input_shape)
    blockers = model_blockers(net) + size_blockers(net, cfg)
    if forced and not model_blockers(net):  # a layer vmap cannot run stays sequential even when forced
        contenders["fedplug vectorized, max_params 0 (forced)"] = fedplug("vectorized",
                                                                           **{"federate.vectorized.max_params": 0})
    seconds: dict[str, list[list[float]]] = {c: [] for c in contenders}
    samples, params = {}, {}
    for _ in range(repeats):
        for c, fn in contenders.items():
            result = fn()
            seconds[c].append(result["seconds"])
            samples[c], params[c] = result["samples"], result["params"]
    # Every turn trains the same rounds: each round's fastest turn is the one least disturbed by the
    # other work on this shared machine.
    rate = {c: samples[c] / sum(min(turns) for turns in zip(*seconds[c])) for c in contenders}
    runs = {c: {"samples_per_s": rate[c], "vs_plain_loop": rate[c] / rate["plain loop"],
                "max_diff": max(float((params[c][n] - params["plain loop"][n]).abs().max()) for n in params[c])}
            for c in contenders}
    vec_vs_seq = rate["fedplug vectorized"] / rate["fedplug sequential"]
    note = (f"{rounds} rounds x {repeats} turns of `{path}` ({k} clients per round). "
            + (f"Vectorized backend: {'; '.join(blockers)}." if blockers else "Vectorized backend: stacked cohorts."))
    save(name, {"command": f"python benchmarks/speed/bench_models.py --model {model} --rounds {rounds} "
                           f"--repeats {repeats}" + (" --forced" if forced else ""), "runs": runs, "note": note,
                "vectorized_vs_sequential": vec_vs_seq,
                "goal": "fedplug >= 0.9x the plain loop's samples per second"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("convnet2", "lstm", "both"), default="both")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--forced", action="store_true", help="also time the vectorized path past max_params")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for model in (("convnet2", "lstm") if args.model == "both" else (args.model,)):
        bench(model, args.rounds, args.repeats, args.forced)


if __name__ == "__main__":
    main()
