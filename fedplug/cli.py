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
import sys
from pathlib import Path
from typing import Callable

from fedplug.cli_tools import (HELP_WORDS, _load, _parser, cmd_compare, cmd_config, cmd_configs, cmd_data,
                               cmd_sweep)
from fedplug.errors import UserError

EXIT_USER_ERROR = 2
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR}

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
