"""The `fedplug` command.

    fedplug --cfg FILE [KEY VALUE | KEY=VALUE ...]         run a federation (also `fedplug run ...`)
    fedplug plan --cfg FILE [KEY VALUE ...]                the hooks per trigger point, in order
    fedplug config show [SECTION] [--cfg FILE] [...]       keys, types, values and descriptions
    fedplug data stats NAME [--cfg FILE] [KEY VALUE ...]   clients, samples and splits of a data set, as JSON
    fedplug --cfg FILE --resume RUN_DIR                    continue a run from its checkpoint
    fedplug server|client|launch --cfg FILE [...]          distributed mode over gRPC (docs/distributed.md)

User mistakes print one `fedplug: error: ...` line and exit 2, without a traceback. A run's last
line on stdout is one JSON object (best_round, test_acc, val_loss, rounds_run, run_dir, ...).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from fedplug.errors import UserError

EXIT_USER_ERROR = 2
NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


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
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its checkpoint")
    args = parser.parse_args(argv)
    if args.cfg is None and not args.overrides and args.resume is None:
        raise UserError("nothing to run: give --cfg FILE (see configs/) and/or KEY VALUE overrides")
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


def cmd_config(argv: list[str]) -> int:
    if not argv or argv[0] != "show":
        raise UserError("usage: fedplug config show [SECTION] [--cfg FILE] [KEY VALUE ...]")
    args = _parser("fedplug config show", "List config keys with their values and descriptions.",
                   section=True).parse_args(argv[1:])
    from fedplug.config.show import show_config

    print(show_config(_load(args), args.section))
    return 0


def cmd_data(argv: list[str]) -> int:
    usage = "usage: fedplug data stats NAME [--cfg FILE] [KEY VALUE ...]"
    if len(argv) < 2 or argv[0] != "stats" or argv[1].startswith("-"):
        raise UserError(usage)
    args = _parser("fedplug data stats", "Build a data set and print its shape as one JSON line.").parse_args(argv[2:])
    from fedplug.config import load_config
    from fedplug.data import build_data
    from fedplug.data.stats import data_stats

    cfg = load_config(args.cfg, [*args.overrides, "data.type", argv[1]])
    print(json.dumps(data_stats(build_data(cfg))), flush=True)
    return 0


COMMANDS = {"run": cmd_run, "plan": cmd_plan, "config": cmd_config, "data": cmd_data,
            "server": _distributed("server"), "client": _distributed("client"), "launch": _distributed("launch")}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = cmd_run
    if argv and argv[0] in COMMANDS:
        command, argv = COMMANDS[argv[0]], argv[1:]
    try:
        return command(argv)
    except UserError as err:
        print(f"fedplug: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("fedplug: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
