"""Load: a distributed run of 200 clients on loopback, against the standalone run of the same config.

`fedplug server` and 4 `fedplug client` processes of 50 client ids each, small Synthetic (20 val and 20
test samples a client), 40 clients (20%) sampled a round, 10 rounds, evaluated at rounds 5 and 10 (all
200 clients). Measures the server's peak RSS (os.wait4) and its mean round time (from its log's time
stamps: the first round's start to the run's end, evaluations included, over the rounds run), checks
that no round lost a client (no "no result" or "skipped" line) and that the final JSON line is the
standalone run's, bit for bit. Writes benchmarks/results/distributed_load.md and prints one JSON line.

    python benchmarks/distributed_load.py [--clients 200] [--processes 4] [--rounds 10] [--limit 900]
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "distributed_lr_on_synthetic.yaml"
RESULTS = ROOT / "benchmarks" / "results" / "distributed_load.md"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def overrides(clients: int, rounds: int, work: Path) -> list[str]:
    return ["data.synthetic.num_clients", str(clients), "data.synthetic.val_size", "20", "data.synthetic.test_size",
            "20", "federate.sample_client_num", str(clients // 5), "federate.total_round_num", str(rounds),
            "eval.freq", str(max(rounds // 2, 1)), "checkpoint.every", "0", "early_stop.patience", "0",
            "distribute.round_timeout", "300", "distribute.join_timeout", "300",
            "data.root", str(work / "data"), "outdir", str(work / "runs")]


def log_time(line: str) -> float:
    """Seconds since the epoch of a run.log line ("2026-12-01 05:06:34,123 INFO fedplug: ...")."""
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def distributed(words: list[str], clients: int, processes: int, limit: float) -> tuple[dict, int, str]:
    """(final JSON line, the server's peak RSS in KiB, its run.log)."""
    env = {**os.environ, "FEDPLUG_TOKEN": secrets.token_hex(16), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    config = ["--cfg", str(CONFIG), *words, "distribute.server_port", str(free_port())]
    base = [sys.executable, "-m", "fedplug"]
    server = subprocess.Popen(base + ["server", *config], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    step = clients // processes
    others = [subprocess.Popen(base + ["client", "--client-id", f"{i}-{min(i + step, clients) - 1}", *config],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
              for i in range(0, clients, step)]
    deadline = time.monotonic() + limit
    try:
        while (waited := os.wait4(server.pid, os.WNOHANG))[0] == 0:  # the bound: kill all past the limit
            if time.monotonic() > deadline:
                raise SystemExit(f"the run took more than {limit} s")
            time.sleep(0.5)
        _, status, usage = waited
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"the server exited with status {os.waitstatus_to_exitcode(status)}")
        for proc in others:
            proc.wait(60)
    finally:
        for proc in [server, *others]:
            if proc.returncode is None and proc.poll() is None:
                proc.kill()
    result = json.loads(server.stdout.read().decode().splitlines()[-1])
    return result, usage.ru_maxrss, (Path(result["run_dir"]) / "run.log").read_text()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--limit", type=float, default=900.0, help="seconds before the run is killed")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import yaml

    from fedplug.config import load_config
    from fedplug.run.simulation import run

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        words = overrides(args.clients, args.rounds, work)
        expected = run(load_config(CONFIG, {k: yaml.safe_load(v) for k, v in zip(words[::2], words[1::2])}))  # also makes the data cache
        result, peak_kib, log = distributed(words, args.clients, args.processes, args.limit)
    lines = log.splitlines()
    start = next(line for line in lines if ", distributed: " in line)
    end = next(line for line in reversed(lines) if " best round " in line)
    round_seconds = (log_time(end) - log_time(start)) / result["rounds_run"]
    lost = [line for line in lines if "no result from client" in line or "round skipped" in line]
    same = {k: v for k, v in result.items() if k != "run_dir"} == {k: v for k, v in expected.items() if k != "run_dir"}
    figures = {"clients": args.clients, "client_processes": args.processes, "per_round": args.clients // 5,
               "rounds": result["rounds_run"], "server_peak_rss_mb": round(peak_kib / 1024, 1),
               "mean_round_seconds": round(round_seconds, 3), "rounds_with_a_lost_client": len(lost),
               "equals_standalone": same}
    command = f"python benchmarks/distributed_load.py --clients {args.clients} --processes {args.processes} " \
              f"--rounds {args.rounds}"
    RESULTS.write_text(
        f"# Distributed load: {args.clients} clients on loopback\n\n`{command}` ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPU cores)\n\n"
        f"`fedplug server` and {args.processes} `fedplug client` processes of {args.clients // args.processes} "
        f"client ids each; small Synthetic (20 val, 20 test samples a client), {args.clients // 5} clients (20%) "
        f"sampled a round, {result['rounds_run']} rounds, evaluated at every client twice.\n\n"
        "| figure | value |\n|---|---|\n"
        f"| server peak RSS (os.wait4) | {figures['server_peak_rss_mb']} MB |\n"
        f"| mean round time (evaluations included) | {figures['mean_round_seconds']} s |\n"
        f"| rounds with a client lost (no result, skipped) | {len(lost)} |\n"
        f"| final JSON line equals the standalone run's | {'yes, bit for bit' if same else 'NO'} |\n")
    print(json.dumps(figures))
    if lost or not same:
        raise SystemExit(f"lost: {lost[:3]}; equals standalone: {same}")


if __name__ == "__main__":
    main()
