"""The `fedplug` command (`fedplug help` lists the commands; `fedplug COMMAND --help` shows one).

    fedplug --cfg FILE [KEY VALUE | KEY=VALUE ...]         run a federation (also `fedplug run ...`)
    fedplug plan --cfg FILE [KEY VALUE ...]                the hooks per trigger point, in order
    fedplug config show [SECTION] [--cfg FILE] [...]       keys, types, values and descriptions
    fedplug data stats NAME [--cfg FILE] [KEY VALUE ...]   clients, samples and splits of a data set, as JSON
    fedplug data prepare femnist [--from URL_OR_FOLDER]    LEAF's FEMNIST shards from NIST SD19
    fedplug configs list                                   the packaged configs, one name a line
    fedplug compare RUN_DIR... [--out FILE]                best-round figures, differing keys, learning curves
    fedplug sweep --cfg FILE KEY=v1,v2 ... [--seeds K]     a grid of runs, mean ± std over seeds, resumable
    fedplug --cfg FILE --resume RUN_DIR                    continue a run from its checkpoint
    fedplug server|client|launch --cfg FILE [...]          distributed mode over gRPC (docs/distributed.md)

User mistakes print one `fedplug: error: ...` line and exit 2, without a traceback. A run's last
line on stdout is one JSON object (best_round, test_acc, val_loss, rounds_run, run_dir, ...).
"""
from __future__ import annotations

import argparse
import difflib
import errno
import json
import os
import re
import sys
from pathlib import Path
from typing import Callable

from fedplug.errors import UserError

EXIT_USER_ERROR = 2
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR}
NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
HELP_WORDS = ("-h", "--help", "help")

# The commands as `fedplug help` lists them: (name, one line). A name of two words is a command of a group.
COMMAND_LINES = (
    ("run", "run a federation (the default: `fedplug --cfg FILE [KEY VALUE ...]`); --resume RUN_DIR continues one"),
    ("plan", "the hooks of each routine per trigger point, in order"),
    ("config show", "config keys with their types, values and descriptions"),
    ("data stats", "clients, samples and splits of a data set, as one JSON line"),
    ("data prepare", "build a data set's files from its original source (femnist)"),
    ("configs list", "the packaged configs, one name a line"),
    ("compare", "runs side by side: best-round figures, the config keys that differ, learning curves"),
    ("sweep", "a grid of runs (KEY=v1,v2 ... x seeds), mean ± std per point; resumable"),
    ("server", "distributed: serve the rounds, clients in other processes (docs/distributed.md)"),
    ("client", "distributed: serve one or more client ids"),
    ("launch", "distributed: a server and the configured clients on this machine"),
    ("help", "this list; `fedplug help COMMAND` shows a command's options"),
)


def top_help() -> str:
    width = max(len(name) for name, _ in COMMAND_LINES) + 2
    lines = [
        "usage: fedplug [COMMAND] [--cfg FILE] [KEY VALUE | KEY=VALUE ...]",
        "",
        "Federated learning with plug-in algorithms. Without a command, `fedplug --cfg FILE [KEY VALUE ...]` runs.",
        "",
        "commands:",
        *(f"  {name:<{width}}{line}" for name, line in COMMAND_LINES),
        "",
        "`fedplug COMMAND --help` (or `fedplug help COMMAND`) shows a command's options; README.md and docs/ the rest.",
    ]
    return "\n".join(lines)


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


def resume_dir(args: argparse.Namespace) -> Path | None:
    """`--resume RUN_DIR`: the run folder, checked; its config.yaml stands in for a missing --cfg."""
    if args.resume is None:
        return None
    run_dir = Path(args.resume)
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"--resume {run_dir}: not a run folder (no config.yaml in it)")
    if args.cfg is None:
        args.cfg = str(run_dir / "config.yaml")
    return run_dir


def cmd_run(argv: list[str]) -> int:
    parser = _parser("fedplug", "Run a federated training as configured.")
    parser.usage = "fedplug [run] [--cfg FILE] [--resume RUN_DIR] [KEY VALUE | KEY=VALUE ...]"
    parser.epilog = "Other commands: `fedplug help`."
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its checkpoint")
    args = parser.parse_args(argv)
    if args.cfg is None and not args.overrides and args.resume is None:
        raise UserError("nothing to run: give --cfg FILE (see configs/) and/or KEY VALUE overrides "
                        "(`fedplug help` lists the commands)")
    from fedplug.run.simulation import run

    run_dir = resume_dir(args)
    result = run(_load(args), run_dir, resume=run_dir is not None)
    print(json.dumps(result), flush=True)
    return 0


def _distributed(name: str):
    """`fedplug server|client|launch`, imported only when used (grpc stays out of standalone runs)."""

    def command(argv: list[str]) -> int:
        from fedplug.distributed import commands

        return getattr(commands, f"cmd_{name}")(argv)

    return command


def cmd_plan(argv: list[str]) -> int:
    args = _parser("fedplug plan", "Print the hooks of each routine per trigger point, in order.").parse_args(argv)
    from fedplug.run.plan import build_plan, describe_plan

    cfg = _load(args)
    print(describe_plan(build_plan(cfg), cfg))
    return 0


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


def cmd_help(argv: list[str]) -> int:
    if not argv or argv[0] in HELP_WORDS:
        print(top_help())
        return 0
    if argv[0] not in COMMANDS:
        raise UserError(f"no command '{argv[0]}' to show.{_closest(argv[0])}")
    return COMMANDS[argv[0]]([*argv[1:], "--help"])


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "run": cmd_run, "plan": cmd_plan, "config": cmd_config, "data": cmd_data, "configs": cmd_configs,
    "compare": cmd_compare, "sweep": cmd_sweep, "help": cmd_help,
    "server": _distributed("server"), "client": _distributed("client"), "launch": _distributed("launch")}


def _closest(word: str) -> str:
    close = difflib.get_close_matches(word, [c for c in COMMANDS if c != "help"], n=1, cutoff=0.5)
    names = ", ".join(c for c in COMMANDS)
    return f" Did you mean '{close[0]}'? (commands: {names})" if close else f" The commands: {names}."


def _is_config_key(word: str) -> bool:
    import fedplug.algorithms.registry  # noqa: F401  (the built-in algorithms' sections)
    import fedplug.config.sections  # noqa: F401
    from fedplug.config.schema import ALIASES, ROOT

    return word in ROOT.entries or word in ALIASES


def unknown_command(argv: list[str]) -> str | None:
    """The first word when it can be neither a command, an option nor a KEY VALUE override (a typo: `trian`)."""
    if not argv:
        return None
    word = argv[0]
    if word in COMMANDS or word.startswith("-") or "." in word or "=" in word or _is_config_key(word):
        return None
    return word


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = cmd_run
    try:
        if argv and argv[0] in ("-h", "--help"):
            print(top_help())
            return 0
        if argv and argv[0] in COMMANDS:
            command, argv = COMMANDS[argv[0]], argv[1:]
        elif (word := unknown_command(argv)) is not None:
            raise UserError(f"'{word}' is not a command, an option or a config key.{_closest(word)}")
        return command(argv)
    except UserError as err:
        print(f"fedplug: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError:  # `fedplug help | head`: the reader left; say nothing more (before OSError, its base)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush does not fail too
        return 141
    except OSError as err:
        if err.errno not in WRITE_ERRNOS:
            raise
        # A full disk or an unwritable folder met while a run writes (checkpoint, plot, metrics): not a bug.
        print(f"fedplug: error: cannot write {err.filename or 'a file'}: {err.strerror}; free some space or give "
              f"outdir (data.root for the data cache) a writable folder", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("fedplug: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
