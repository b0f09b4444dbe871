"""Shared fixtures: a small Synthetic federation that trains in about a second; users' plug-ins registered for
one test (the contract tests)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from contract_helpers import REC
from fedplug.algorithms import registry
from fedplug.algorithms.registry import register_algorithm
from fedplug.config import ConfigNode, Key, Section, load_config, register_section
from fedplug.config.schema import ROOT
from fedplug.core.plugin import Plugin

SMALL = {
    "data.synthetic.num_clients": 12,
    "data.synthetic.val_size": 200,
    "data.synthetic.test_size": 200,
    "federate.total_round_num": 6,
    "federate.sample_client_rate": 0.5,
    "train.local_update_steps": 5,
    "train.optimizer.lr": 0.1,
    "dataloader.batch_size": 16,
    "eval.freq": 2,
    "eval.batch_size": 128,
    "early_stop.patience": 0,
}


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data cache for the whole session, so small data sets are generated once."""
    return tmp_path_factory.mktemp("fedplug-cache")


@pytest.fixture
def small_cfg(tmp_path: Path, data_root: Path):
    """`small_cfg(**overrides)` -> a validated config for the small federation."""

    def make(**overrides: Any) -> ConfigNode:
        values = {**SMALL, "data.root": str(data_root), "outdir": str(tmp_path / "runs")}
        values.update({k.replace("__", "."): v for k, v in overrides.items()})
        return load_config(None, values)

    return make


@pytest.fixture(autouse=True)
def _clear_records():
    """The contract tests' plug-ins record what they see in REC: start every test with it empty."""
    REC.clear()
    yield
    REC.clear()


@pytest.fixture
def register():
    """register(Cls, ...): a user plug-in with a `<name>.use` section, for this test only."""
    added: list[str] = []

    def add(*classes: type[Plugin]) -> None:
        for cls in classes:
            register_section(cls.name, Section(f"test plug-in {cls.name}", {"use": Key(False, "switch on")}))
            added.append(cls.name)
            register_algorithm(cls)

    yield add
    for name in added:
        ROOT.entries.pop(name, None)
        registry._registered.pop(name, None)


@pytest.fixture
def rewind(monkeypatch):
    """Keeps each checkpoint as it is written; `rewind(run_dir, round)` then puts that round's back and removes
    summary.json: the finished run becomes one killed after that checkpoint, to be resumed."""
    from fedplug.run.rounds import RoundKeeper

    kept: dict[tuple[Path, int], bytes] = {}
    save = RoundKeeper.save

    def save_and_keep(keeper: RoundKeeper, round_num: int) -> None:
        save(keeper, round_num)
        kept[(keeper.run_dir, round_num)] = keeper.checkpoint_path.read_bytes()

    monkeypatch.setattr(RoundKeeper, "save", save_and_keep)

    def to(run_dir: Path, round_num: int) -> None:
        from fedplug.run.checkpoint import CHECKPOINT_FILE

        (run_dir / CHECKPOINT_FILE).write_bytes(kept[(run_dir, round_num)])
        (run_dir / "summary.json").unlink()

    return to


def cli_call(capsys, *argv: str) -> tuple[int, str, str]:
    """`fedplug ARGV` in this process: exit status, stdout, stderr (argparse's --help exits through SystemExit)."""
    from fedplug import cli

    capsys.readouterr()  # what came before (a fixture's run logs)
    try:
        code = cli.main(list(argv))
    except SystemExit as exit_:
        code = exit_.code or 0
    out, err = capsys.readouterr()
    return code, out, err
