"""Robustness: each aggregation rule against each attack, at several fractions of attacking clients.

    python benchmarks/robustness.py --rounds 30 --jobs 2    # the full grid, 8 x 6 x 4: 152 runs of ~15 s each
    python benchmarks/robustness.py --rounds 30 --jobs 2 --aggregators none krum median trimmedmean \
        --attacks signflip alie ipm --fractions 0 0.1 0.2 0.3          # a subset

The reference Synthetic protocol (configs/fedavg_lr_on_synthetic.yaml: 300 clients, 60 a round,
10 local steps, evaluation every 10 rounds), cut to `--rounds` rounds, with `aggregator.rule` and
`attack.type` / `attack.fraction` set per cell. Each cell is the weighted test accuracy at the
round with the lowest weighted val loss. Fraction 0 is the clean run (one per rule, shared by the
attacks). A rule is told f (`aggregator.byzantine_node_num`) = the most attackers in one round of the
run (the attackers are fixed and the sampling seeded, so this is known before the run), or the
largest f it accepts for 60 uploads when that is smaller. A cell is marked † when that f is beyond
what the rule's own paper says it withstands. Writes benchmarks/results/robustness.md and
robustness.png (a heat map per attack).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from column import RESULTS, ROOT, run_config

sys.path.insert(0, str(ROOT))  # this checkout's fedplug, as the runs use (they start in ROOT)
from fedplug.attacks.base import choose_attackers  # noqa: E402
from fedplug.config import load_config  # noqa: E402
from fedplug.seeding import CLIENT_SAMPLING, generator  # noqa: E402
from fedplug.server.sampling import clients_per_round, sample_clients  # noqa: E402

CONFIG = ROOT / "configs" / "fedavg_lr_on_synthetic.yaml"
AGGREGATORS = ("none", "krum", "multikrum", "median", "trimmedmean", "bulyan", "normbounding", "centeredclip")
ATTACKS = ("signflip", "gaussian", "labelflip", "replacement", "alie", "ipm")
FRACTIONS = (0.0, 0.1, 0.2, 0.3)
# Settings of the attacks beyond their defaults: sign flipping scaled by 10, as in the measurement.
ATTACK_SETTINGS = {"signflip": ["attack.scale=10"]}
# What each rule's paper says it withstands, n uploads of which f are attackers (None: no such bound).
HOLDS: dict[str, Callable[[int, int], bool] | None] = {
    "none": lambda n, f: f == 0,  # the mean: one upload moves it anywhere (breakdown point 0)
    "krum": lambda n, f: n > 2 * f + 2,  # Blanchard et al. 2017
    "multikrum": lambda n, f: n > 2 * f + 2,
    "median": lambda n, f: 2 * f < n,  # Yin et al. 2018: a majority of honest uploads
    "trimmedmean": lambda n, f: 2 * f < n,  # Yin et al. 2018, trimming at least f at each end
    "bulyan": lambda n, f: n >= 4 * f + 3,  # El Mhamdi et al. 2018
    "normbounding": None,  # Sun et al. 2019: a defence against backdoors, no Byzantine bound
    "centeredclip": lambda n, f: 2 * f < n,  # Karimireddy et al. 2021: an honest majority
}
ACCEPTS = {"krum": HOLDS["krum"], "multikrum": HOLDS["krum"], "median": HOLDS["median"],
           "trimmedmean": HOLDS["trimmedmean"], "bulyan": HOLDS["bulyan"], "centeredclip": HOLDS["centeredclip"]}


def most_attackers(cfg, fraction: float, rounds: int) -> int:
    """The most attackers among the sampled clients in one of the first `rounds` rounds of this seed."""
    if not fraction:
        return 0
    n = cfg.data.synthetic.num_clients
    attackers = choose_attackers(cfg.seed, n, fraction)
    k = clients_per_round(cfg, n)
    return max(len(attackers & set(sample_clients(n, k, generator(cfg.seed, CLIENT_SAMPLING, r))))
               for r in range(1, rounds + 1))


def told_f(rule: str, f: int, n: int) -> int:
    """The f a rule is configured with: the true most, or the largest it accepts for n uploads."""
    accepts = ACCEPTS.get(rule)
    while accepts is not None and f > 0 and not accepts(n, f):
        f -= 1
    return f


def run_cell(outdir: Path, rule: str, attack: str, fraction: float, f: int, base: list[str]) -> dict:
    words = [*base, f"aggregator.rule={rule}", f"aggregator.byzantine_node_num={f}"]
    if fraction:
        words += [f"attack.type={attack}", f"attack.fraction={fraction}", *ATTACK_SETTINGS.get(attack, [])]
    try:
        return run_config(CONFIG, outdir, words)
    except RuntimeError as err:  # a refused combination: its one-line reason in the cell
        return {"error": next((line for line in str(err).splitlines() if "error:" in line), str(err)[-200:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=30, help="rounds per run (the reference protocol: 200)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (one PyTorch thread each if > 1)")
    parser.add_argument("--aggregators", nargs="+", choices=AGGREGATORS, default=list(AGGREGATORS))
    parser.add_argument("--attacks", nargs="+", choices=ATTACKS, default=list(ATTACKS))
    parser.add_argument("--fractions", nargs="+", type=float, default=list(FRACTIONS))
    args = parser.parse_args()
    cfg = load_config(CONFIG, {"federate.total_round_num": args.rounds})
    n = clients_per_round(cfg, cfg.data.synthetic.num_clients)
    most = {fr: most_attackers(cfg, fr, args.rounds) for fr in args.fractions}
    base = [f"federate.total_round_num={args.rounds}"] + (["threads=1"] if args.jobs > 1 else [])
    cells = {(rule, attack if fr else "none", fr) for rule in args.aggregators for attack in args.attacks
             for fr in args.fractions}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fedplug-robustness-") as outdir, ThreadPoolExecutor(args.jobs) as pool:
        futures = {cell: pool.submit(run_cell, Path(outdir), *cell, told_f(cell[0], most[cell[2]], n), base)
                   for cell in sorted(cells)}
        results = {cell: future.result() for cell, future in futures.items()}
    for (rule, attack, fr), r in sorted(results.items()):
        print(json.dumps({"aggregator": rule, "attack": attack, "fraction": fr, "f": told_f(rule, most[fr], n),
                          **{k: r.get(k) for k in ("test_acc", "val_loss", "best_round", "error")}}))
    command = ("python benchmarks/robustness.py " + f"--rounds {args.rounds} --jobs {args.jobs} --aggregators "
               f"{' '.join(args.aggregators)} --attacks {' '.join(args.attacks)} --fractions "
               f"{' '.join(f'{fr:g}' for fr in args.fractions)}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_table(args, results, most, n, command, time.perf_counter() - started)
    plot(args, results, most, n, RESULTS / "robustness.png")


def cell_text(rule: str, r: dict, f_true: int, n: int) -> str:
    if "error" in r:
        return "refused"
    holds = HOLDS[rule]
    mark = " †" if holds is not None and not holds(n, f_true) else ""
    return f"{100 * r['test_acc']:.2f}{mark}"


def write_table(args: argparse.Namespace, results: dict, most: dict, n: int, command: str, seconds: float) -> None:
    fractions = args.fractions
    lines = [
        f"# Robustness: aggregation rules against attacks, Synthetic, {args.rounds} rounds",
        "",
        f"Generated by `{command}` ({time.strftime('%Y-%m-%d')}, 2 shared cores, no GPU; {seconds / 60:.0f} min). "
        f"The reference Synthetic protocol (`configs/fedavg_lr_on_synthetic.yaml`: 300 clients, {n} a round, 10 local "
        f"steps, lr 0.1, seed 0) cut to {args.rounds} rounds, evaluated every 10. Weighted test accuracy % at the "
        "round with the lowest weighted val loss. Attack settings: "
        + ", ".join(f"{a} {' '.join(s) or 'defaults'}" for a, s in ((a, ATTACK_SETTINGS.get(a, [])) for a in args.attacks))
        + "; the rules' other keys at their defaults.",
        "",
        "The attackers are a fixed, seeded set of round(fraction x 300) clients; a round samples 60 of the 300, so "
        "the attackers in a round vary. f, the most attackers in one round of the run (told to the rules as "
        "`aggregator.byzantine_node_num`, lowered to the largest f a rule accepts for 60 uploads): "
        + ", ".join(f"{100 * fr:g}%: {most[fr]}" for fr in fractions) + ".",
        "",
        "† the rule's own paper does not claim to hold there: the mean with any attacker, Krum and Multi-Krum with "
        "n <= 2f + 2, Bulyan with n < 4f + 3, the median, trimmed mean and centered clipping without an honest "
        "majority (n <= 2f); norm bounding states no Byzantine bound. \"refused\": the rule refused its f at "
        "start-up.",
        "",
    ]
    for attack in args.attacks:
        lines += [f"## {attack}", "", "| rule | f told | " + " | ".join(f"{100 * fr:g}%" for fr in fractions) + " |",
                  "|---|---|" + "---|" * len(fractions)]
        for rule in args.aggregators:
            cells = [cell_text(rule, results[(rule, attack if fr else "none", fr)], most[fr], n) for fr in fractions]
            told = "/".join(str(told_f(rule, most[fr], n)) for fr in fractions)
            lines.append(f"| {rule} | {told} | " + " | ".join(cells) + " |")
        lines.append("")
    missing_rules = [a for a in AGGREGATORS if a not in args.aggregators]
    missing_attacks = [a for a in ATTACKS if a not in args.attacks]
    missing_fractions = [fr for fr in FRACTIONS if fr not in args.fractions]
    if missing_rules or missing_attacks or missing_fractions:
        lines += ["Not run here (CPU time): "
                  + "; ".join(part for part in (
                      f"rules {', '.join(missing_rules)}" if missing_rules else "",
                      f"attacks {', '.join(missing_attacks)}" if missing_attacks else "",
                      f"fractions {', '.join(f'{fr:g}' for fr in missing_fractions)}" if missing_fractions else "")
                      if part) + ". The full grid is `python benchmarks/robustness.py` (8 x 6 x 4 cells).", ""]
    lines += ["![heat map](robustness.png)", ""]
    (RESULTS / "robustness.md").write_text("\n".join(lines))


def plot(args: argparse.Namespace, results: dict, most: dict, n: int, path: Path) -> None:
    """One heat map per attack: rules down, fractions across, the accuracy in each cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    attacks, rules, fractions = args.attacks, args.aggregators, args.fractions
    fig, axes = plt.subplots(1, len(attacks), figsize=(1.2 + 0.9 * len(fractions) * len(attacks) + 1.2,
                                                      1.0 + 0.45 * len(rules)), squeeze=False)
    for ax, attack in zip(axes[0], attacks):
        grid = np.full((len(rules), len(fractions)), np.nan)
        for i, rule in enumerate(rules):
            for j, fr in enumerate(fractions):
                r = results[(rule, attack if fr else "none", fr)]
                if "error" not in r:
                    grid[i, j] = 100 * r["test_acc"]
                ax.text(j, i, cell_text(rule, r, most[fr], n), ha="center", va="center", fontsize=7)
        image = ax.imshow(grid, cmap="RdYlGn", vmin=30, vmax=70, aspect="auto")
        ax.set_xticks(range(len(fractions)), [f"{100 * fr:g}%" for fr in fractions])
        ax.set_yticks(range(len(rules)), rules if ax is axes[0][0] else [""] * len(rules))
        ax.set_title(attack)
    fig.colorbar(image, ax=axes[0].tolist(), label="weighted test accuracy (%)")
    fig.suptitle(f"Synthetic, {args.rounds} rounds: accuracy by rule and attacking fraction († beyond the rule's bound)",
                 fontsize=9, y=1.04)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    main()
