"""The `fedplug` commands that inspect and organise rather than train: config, data, configs, compare, sweep.

Also the pieces every command shares: the `--cfg FILE [KEY VALUE ...]` parser and the config it loads.
`fedplug/cli.py` dispatches to them; each imports its work (plots, data sets, the sweep) only when run.
"""
from __future__ import annotations

import argparse
import difflib
import json
import re
from pathlib import Path
from typing import Callable

from fedplug.errors import UserError

NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
HELP_WORDS = ("-h", "--help", "help")


def _parser(prog: str, description: str, section: bool = False) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    # argparse takes a word for a value, not an option, only when it looks like a negative number by
    # its own pattern, which lacks exponents: `grad.grad_clip -2.5e-3` would be an unknown option.
    parser._negative_number_matcher = NEGATIVE_NUMBER
    if section:
        parser.add_argument("section", nargs="?", help="only this section, e.g. train or train.optimizer")
    parser.add_argument("--cfg", help="YAML config file")
    parser.add_argument("overrides", nargs="*", metavar="KEY VALUE", help="config overrides, KEY VALUE or KEY=VALUE")
    return parser


def _load(args: argparse.Namespace):
    from fedplug.config import load_config

    return load_config(args.cfg, args.overrides)


def _group(name: str, subcommands: dict[str, tuple[Callable[[list[str]], int], str]], argv: list[str]) -> int:
    """`fedplug NAME SUB ...`: dispatch to SUB; `--help` (or nothing) lists the subcommands."""
    usage = f"usage: fedplug {name} {'|'.join(subcommands)} ..."
    if argv and argv[0] in HELP_WORDS:
        print("\n".join([usage, "", "subcommands:", *(f"  {sub:<10}{line}" for sub, (_, line) in subcommands.items()),
                         "", f"`fedplug {name} SUBCOMMAND --help` shows its options."]))
        return 0
    if not argv:
        raise UserError(f"{usage} (`fedplug {name} --help` for more)")
    if argv[0] not in subcommands:
        close = difflib.get_close_matches(argv[0], list(subcommands), n=1, cutoff=0.5)
        hint = f"; did you mean '{name} {close[0]}'?" if close else ""
        raise UserError(f"unknown subcommand 'fedplug {name} {argv[0]}'{hint} ({usage})")
    return subcommands[argv[0]][0](argv[1:])


def _config_show(argv: list[str]) -> int:
    args = _parser("fedplug config show", "List config keys with their values and descriptions.",
                   section=True).parse_args(argv)
    from fedplug.config.show import show_config

    print(show_config(_load(args), args.section))
    return 0


def cmd_config(argv: list[str]) -> int:
    return _group("config", {"show": (_config_show, "keys, types, values and descriptions [SECTION]")}, argv)


def _named(usage: str, handler: Callable[[str | None, list[str]], int]) -> Callable[[list[str]], int]:
    """A subcommand whose first word is a NAME (`data stats shakespeare ...`); `--help` in its place works."""

    def command(argv: list[str]) -> int:
        if argv and argv[0] in ("-h", "--help"):
            return handler(None, ["--help"])
        if not argv or argv[0].startswith("-"):
            raise UserError(f"usage: {usage}")
        return handler(argv[0], argv[1:])

    return command


DATA_STATS_USAGE = "fedplug data stats NAME [--cfg FILE] [KEY VALUE ...]"
DATA_PREPARE_USAGE = "fedplug data prepare femnist [--from URL_OR_FOLDER] [--jobs N] [--cfg FILE] [KEY VALUE ...]"


def cmd_data_stats(name: str | None, argv: list[str]) -> int:
    parser = _parser("fedplug data stats", "Build a data set (NAME: synthetic, shakespeare, femnist, mnist_standin) "
                     "and print its shape as one JSON line.")
    parser.usage = DATA_STATS_USAGE
    args = parser.parse_args(argv)
    from fedplug.config import load_config
    from fedplug.data import build_data
    from fedplug.data.stats import data_stats

    cfg = load_config(args.cfg, [*args.overrides, "data.type", name])
    print(json.dumps(data_stats(build_data(cfg))), flush=True)
    return 0


def cmd_data_prepare(name: str | None, argv: list[str]) -> int:
    """`fedplug data prepare femnist`: LEAF's FEMNIST shards from NIST SD19 (docs/data.md)."""
    parser = _parser("fedplug data prepare", "Build a data set's files from its original source.")
    parser.usage = DATA_PREPARE_USAGE
    parser.add_argument("--from", dest="source", metavar="URL_OR_FOLDER", help="default: data.femnist.sd19_url")
    parser.add_argument("--jobs", type=int, default=0, help="processes decoding images; 0: one per CPU")
    args = parser.parse_args(argv)
    if name != "femnist":
        raise UserError(f"fedplug data prepare: only femnist has a preparation step, not {name!r}")
    from fedplug.data.femnist_prepare import prepare_from_config

    print(json.dumps(prepare_from_config(_load(args), args.source, args.jobs)), flush=True)
    return 0


def cmd_data(argv: list[str]) -> int:
    return _group("data", {
        "stats": (_named(DATA_STATS_USAGE, cmd_data_stats), "NAME: clients, samples and splits as one JSON line"),
        "prepare": (_named(DATA_PREPARE_USAGE, cmd_data_prepare), "femnist: LEAF's shards from NIST SD19"),
    }, argv)


def _configs_list(argv: list[str]) -> int:
    argparse.ArgumentParser(prog="fedplug configs list",
                            description="Print the names of the packaged configs, one a line "
                                        "(each works as `fedplug --cfg NAME`).").parse_args(argv)
    try:
        from fedplug.config.packaged import list_configs
    except ImportError as err:
        raise UserError(f"configs list: the packaged configs are not available ({err})") from None
    for name in list_configs():
        print(name)
    return 0


def cmd_configs(argv: list[str]) -> int:
    return _group("configs", {"list": (_configs_list, "the packaged configs, one name a line")}, argv)


def cmd_compare(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="fedplug compare",
        description="Compare finished runs: a markdown table of their best-round figures and of the config keys in "
                    "which they differ (outdir and expname left out), and one plot of their learning curves.")
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders (each with summary.json)")
    parser.add_argument("--out", metavar="FILE", help="the plot's PNG (default: compare_<hash>.png next to the "
                                                      "first run folder)")
    args = parser.parse_args(argv)
    from fedplug.run.compare import compare

    table, png = compare([Path(r) for r in args.runs], Path(args.out) if args.out else None)
    print(table)
    print(f"\nlearning curves: {png}", flush=True)
    return 0


def cmd_sweep(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="fedplug sweep",
        usage="fedplug sweep [--cfg FILE] KEY=v1,v2 ... [--seeds K] [--jobs N] [--out DIR]",
        description="Run the grid of the listed values (cartesian product) times seeds 0..K-1, each run a `fedplug` "
                    "process; runs already finished in DIR are skipped. Writes sweep.md and sweep.csv (mean ± std "
                    "over seeds of test_acc, val_loss, best_round per point) to DIR and prints the table; the last "
                    "line is one JSON object. A KEY=v (one value) sets that key for every run.")
    parser._negative_number_matcher = NEGATIVE_NUMBER
    parser.add_argument("--cfg", help="YAML config file")
    parser.add_argument("grid", nargs="*", metavar="KEY=v1,v2", help="a config key and its values, comma-separated "
                        "(brackets keep a list value whole: data.splits=[0.6,0.2,0.2])")
    parser.add_argument("--seeds", type=int, metavar="K", help="seeds 0..K-1 for every point (default: the config's "
                        "seed, or the values of a seed=... axis)")
    parser.add_argument("--jobs", type=int, default=1, metavar="N", help="runs at once (each then gets `threads 1`)")
    parser.add_argument("--out", metavar="DIR", help="the sweep folder (default: <outdir>/sweep_<config name>); "
                        "give the same one again to resume")
    args = parser.parse_intermixed_args(argv)  # KEY=v1,v2 words before and after the options
    from fedplug.run.sweep import main as sweep_main

    return sweep_main(args.cfg, args.grid, seeds=args.seeds, jobs=args.jobs, out=args.out)
