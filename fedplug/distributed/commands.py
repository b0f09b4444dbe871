"""The distributed commands of the CLI (imported only when one of them runs).

    fedplug server --cfg FILE [--resume RUN_DIR] [KEY VALUE ...]
    fedplug client --cfg FILE --client-id K[,K2,...|A-B] [KEY VALUE ...]
    fedplug launch --cfg FILE [--resume RUN_DIR] [KEY VALUE ...]
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from fedplug.cli import resume_dir
from fedplug.cli_tools import _parser
from fedplug.errors import UserError


def _load(args: argparse.Namespace):
    from fedplug.config import load_config

    return load_config(args.cfg, args.overrides)


def client_ids(text: str) -> list[int]:
    """"3", "0,1,2" or "0-3" -> sorted distinct ids."""
    ids: set[int] = set()
    try:
        for part in filter(None, text.split(",")):
            low, _, high = part.partition("-")
            first, last = int(low), int(high or low)
            if last < first:
                raise UserError(f"--client-id {text!r}: the range {part} runs backwards; write {last}-{first}")
            ids.update(range(first, last + 1))
    except ValueError:
        raise UserError(f"--client-id {text!r}: expected K, K1,K2,... or A-B") from None
    if not ids:
        raise UserError("--client-id: no client id given")
    return sorted(ids)


def cmd_server(argv: list[str]) -> int:
    parser = _parser("fedplug server", "Serve a distributed run: the rounds, with the clients in other processes.")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its checkpoint")
    parser.add_argument("--run-dir", help="write the run into this folder (fresh), instead of a new one under outdir")
    args = parser.parse_args(argv)
    run_dir = resume_dir(args)
    if run_dir is None and args.run_dir:
        run_dir = Path(args.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
    cfg = _load(args)
    if run_dir is not None and not (run_dir / "config.yaml").is_file():
        from fedplug.config import dump_config

        (run_dir / "config.yaml").write_text(dump_config(cfg))
    from fedplug.distributed.server import serve

    print(json.dumps(serve(cfg, run_dir, resume=args.resume is not None)), flush=True)
    return 0


def cmd_client(argv: list[str]) -> int:
    parser = _parser("fedplug client", "Serve one or more client ids of a distributed run.")
    parser.add_argument("--client-id", required=True, help="K, K1,K2,... or A-B: the client ids this process serves")
    args = parser.parse_args(argv)
    ids = client_ids(args.client_id)
    cfg = _load(args)
    from fedplug.run.outputs import close_logging

    close_logging()  # a client logs to stderr only (no run folder): not to handlers an earlier run left
    logger = logging.getLogger("fedplug")
    logger.setLevel(logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
    from fedplug.device import deterministic, resolve
    from fedplug.distributed.client import ClientProcess
    from fedplug.run.simulation import torch_threads

    with torch_threads(cfg.threads), deterministic(cfg.deterministic, resolve(cfg.device)):
        return ClientProcess(cfg, ids).run()


def cmd_launch(argv: list[str]) -> int:
    parser = _parser("fedplug launch", "Run a server and the configured clients on this machine.")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its checkpoint")
    args = parser.parse_args(argv)
    run_dir = resume_dir(args)
    if args.cfg is None and not args.overrides:
        raise UserError("nothing to launch: give --cfg FILE and/or KEY VALUE overrides")
    from fedplug.distributed.launch import launch

    return launch(_load(args), args.cfg, args.overrides, run_dir)
