"""The `fedplug` command.

    fedplug --cfg FILE [KEY VALUE | KEY=VALUE ...]         run a federation (also `fedplug run ...`)
    fedplug plan --cfg FILE [KEY VALUE ...]                the hooks per trigger point, in order
    fedplug config show [SECTION] [--cfg FILE] [...]       keys, types, values and descriptions

User mistakes print one `fedplug: error: ...` line and exit 2, without a traceback. A run's last
line on stdout is one JSON object (best_round, test_acc, val_loss, rounds_run, run_dir, ...).
"""
from __future__ import annotations

import argparse
import json
import sys

from fedplug.errors import UserError

EXIT_USER_ERROR = 2


def _parser(prog: str, description: str, section: bool = False) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    if section:
        parser.add_argument("section", nargs="?", help="only this section, e.g. train or train.optimizer")
    parser.add_argument("--cfg", help="YAML config file")
    parser.add_argument("overrides", nargs="*", metavar="KEY VALUE", help="config overrides, KEY VALUE or KEY=VALUE")
    return parser


def _load(args: argparse.Namespace):
    from fedplug.config import load_config

    return load_config(args.cfg, args.overrides)


def cmd_run(argv: list[str]) -> int:
    args = _parser("fedplug", "Run a federated training as configured.").parse_args(argv)
    if args.cfg is None and not args.overrides:
        raise UserError("nothing to run: give --cfg FILE (see configs/) and/or KEY VALUE overrides")
    from fedplug.run.simulation import run

    result = run(_load(args))
    print(json.dumps(result), flush=True)
    return 0


def cmd_plan(argv: list[str]) -> int:
    args = _parser("fedplug plan", "Print the hooks of each routine per trigger point, in order.").parse_args(argv)
    from fedplug.run.plan import build_plan, describe_plan

    print(describe_plan(build_plan(_load(args))))
    return 0


def cmd_config(argv: list[str]) -> int:
    if not argv or argv[0] != "show":
        raise UserError("usage: fedplug config show [SECTION] [--cfg FILE] [KEY VALUE ...]")
    args = _parser("fedplug config show", "List config keys with their values and descriptions.",
                   section=True).parse_args(argv[1:])
    from fedplug.config.show import show_config

    print(show_config(_load(args), args.section))
    return 0


COMMANDS = {"run": cmd_run, "plan": cmd_plan, "config": cmd_config}


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
