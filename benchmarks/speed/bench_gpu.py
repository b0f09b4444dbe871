"""A few rounds of the Shakespeare and FEMNIST-stand-in reference protocols on one device: samples/s and the
projected time of each full reference run. benchmarks/gpu_check.sh runs it on CUDA; it runs anywhere.

Each protocol is the reference config itself (configs/fedavg_lstm_on_shakespeare.yaml; the FEMNIST one,
configs/fedavg_convnet2_on_femnist.yaml, on the MNIST stand-in: FEMNIST cannot be fetched on a machine
without the internet), with `--rounds` training rounds per backend timed after one warm-up round, and
one evaluation of every client on val and test. Projection: total_round_num x the median round, plus
total_round_num / eval.freq evaluations (an upper bound: early stopping ends runs sooner). Prints one
JSON line and writes benchmarks/results/speed/gpu_<device>.json.

    python benchmarks/speed/bench_gpu.py [--device cuda] [--rounds 3] [--protocols shakespeare femnist_standin]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fedplug.config import load_config  # noqa: E402
from fedplug.data import build_data  # noqa: E402
from fedplug_loop import fedplug_rounds, synchronize  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PROTOCOLS = {
    "shakespeare": ("configs/fedavg_lstm_on_shakespeare.yaml", {}),
    # FEMNIST's reference protocol (ConvNet2, batch 10, 40 writers a round, 300 rounds) on the stand-in's digits
    "femnist_standin": ("configs/fedavg_convnet2_on_femnist.yaml", {"data.type": "mnist_standin", "data.subsample": 1.0,
                                                                     "model.out_channels": 10}),
}


def bench(protocol: str, device: str, rounds: int) -> dict:
    path, overrides = PROTOCOLS[protocol]
    cfg = load_config(ROOT / path, {**overrides, "device": device})
    data = build_data(cfg)
    out: dict = {"config": path, "overrides": overrides, "total_round_num": cfg.federate.total_round_num}
    for backend in ("sequential", "vectorized"):
        run_cfg = load_config(ROOT / path, {**overrides, "device": device, "federate.backend": backend})
        timed = fedplug_rounds(run_cfg, data, rounds + 1, evaluate_last=True)
        train = statistics.median(timed["seconds"][1:])  # the first round pays for warm-up
        full = cfg.federate.total_round_num * train + cfg.federate.total_round_num / cfg.eval.freq * timed["eval"]
        out[backend] = {"samples_per_s": timed["samples"] / sum(timed["seconds"]), "seconds_per_round": train,
                        "seconds_per_evaluation": timed["eval"], "projected_full_run_hours": full / 3600,
                        "vectorized": timed["vectorized"]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=list(PROTOCOLS))
    args = parser.parse_args()
    started = time.perf_counter()
    result = {"benchmark": f"gpu_{args.device.replace(':', '')}", "device": args.device,
              "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device,
              "torch": torch.__version__, "rounds_timed": args.rounds,
              "command": f"python benchmarks/speed/bench_gpu.py --device {args.device} --rounds {args.rounds}",
              "protocols": {p: bench(p, args.device, args.rounds) for p in args.protocols}}
    synchronize(args.device)
    result["seconds"] = round(time.perf_counter() - started, 1)
    folder = ROOT / "benchmarks" / "results" / "speed"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{result['benchmark']}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
