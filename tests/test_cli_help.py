"""The CLI shows itself: `fedplug --help`/`help`, every command's --help, typos of commands, `configs list`;
and the first run's data generation shows where its cache goes, how big it is, and a progress bar."""
from __future__ import annotations

import io
import os
import logging
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from conftest import cli_call
from fedplug import cli
from fedplug.data import synthetic
from fedplug.data.synthetic import SyntheticParams

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ["run", "plan", "config show", "data stats", "data prepare", "configs list", "compare", "sweep",
            "server", "client", "launch"]


def listed_commands(text: str) -> list[str]:
    """The command names of the help's `commands:` block, in order."""
    block = text.split("commands:\n", 1)[1].split("\n\n", 1)[0]
    return [line[2:16].strip() for line in block.splitlines()]


def test_help_lists_every_command_with_one_line() -> None:
    proc = subprocess.run([sys.executable, "-m", "fedplug", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert listed_commands(proc.stdout) == [*COMMANDS, "help"]
    block = proc.stdout.split("commands:\n", 1)[1].split("\n\n", 1)[0]
    assert all(len(line.split(None, 1)) == 2 for line in block.splitlines())  # a name and its line, one line each


def test_help_word_is_the_same_as_the_option(capsys) -> None:
    code, out, err = cli_call(capsys, "help")
    assert (code, err) == (0, "")
    assert out == cli_call(capsys, "--help")[1] == cli_call(capsys, "-h")[1]
    assert "override 'help' has no value" not in out + err


@pytest.mark.parametrize("command", [*COMMANDS, "config", "data", "configs", "help"])
def test_every_command_has_help(capsys, command: str) -> None:
    code, out, err = cli_call(capsys, *command.split(), "--help")
    assert code == 0, err
    assert "error" not in err
    first = out.splitlines()[0]
    assert first.startswith("usage: fedplug")
    name = "fedplug" if command in ("run", "help") else f"fedplug {command}"
    assert name in first


def test_help_command_shows_a_commands_help(capsys) -> None:
    code, out, _ = cli_call(capsys, "help", "config", "show")
    assert code == 0 and out.startswith("usage: fedplug config show")
    code, out, _ = cli_call(capsys, "help", "sweep")
    assert code == 0 and "--seeds K" in out and "--jobs N" in out
    code, _, err = cli_call(capsys, "help", "swep")
    assert code == 2 and err.strip().endswith("(commands: run, plan, config, data, configs, compare, sweep, help, "
                                              "server, client, launch)")
    assert "Did you mean 'sweep'?" in err


@pytest.mark.parametrize("word, suggestion", [("trian", "run"), ("comapre", "compare"), ("swep", "sweep"),
                                              ("lunch", "launch"), ("confg", "config")])
def test_unknown_command_suggests_the_closest(capsys, word: str, suggestion: str) -> None:
    code, out, err = cli_call(capsys, word, "--cfg", "configs/fedavg_lr_on_synthetic.yaml")
    assert code == 2 and out == ""
    assert err.count("\n") == 1  # one line
    assert err.startswith(f"fedplug: error: '{word}' is not a command, an option or a config key. "
                          f"Did you mean '{suggestion}'?")


def test_unknown_command_without_a_close_one_lists_the_commands(capsys) -> None:
    code, _, err = cli_call(capsys, "xyzzy")
    assert code == 2
    assert err == ("fedplug: error: 'xyzzy' is not a command, an option or a config key. The commands: run, plan, "
                   "config, data, configs, compare, sweep, help, server, client, launch.\n")


@pytest.mark.parametrize("argv", [["seed", "1"], ["seed=1"], ["fedprox.mu", "0.1"], ["--cfg", "x.yaml"],
                                  ["threads", "1"], ["fedprox", "x"], ["expname", "a"]])
def test_overrides_and_options_are_not_taken_for_commands(argv: list[str]) -> None:
    assert cli.unknown_command(argv) is None


def test_a_run_with_key_value_overrides_still_reaches_the_config(capsys) -> None:
    code, _, err = cli_call(capsys, "--cfg", "configs/fedavg_lr_on_synthetic.yaml", "seed", "x")
    assert code == 2 and err == "fedplug: error: config key 'seed' expects int, got 'x' (str)\n"


@pytest.mark.parametrize("argv, message", [
    (["config"], "fedplug: error: usage: fedplug config show ..."),
    (["config", "shwo"], "fedplug: error: unknown subcommand 'fedplug config shwo'; did you mean 'config show'?"),
    (["data", "stat", "synthetic"], "fedplug: error: unknown subcommand 'fedplug data stat'; did you mean "
                                    "'data stats'?"),
    (["data", "stats"], "fedplug: error: usage: fedplug data stats NAME"),
    (["configs"], "fedplug: error: usage: fedplug configs list ..."),
])
def test_group_mistakes_are_one_line(capsys, argv: list[str], message: str) -> None:
    code, _, err = cli_call(capsys, *argv)
    assert code == 2
    assert err.startswith(message) and err.count("\n") == 1


def test_configs_list_prints_the_packaged_names(capsys) -> None:
    from fedplug.config.packaged import list_configs

    code, out, _ = cli_call(capsys, "configs", "list")
    assert code == 0
    assert out.splitlines() == list_configs()
    assert {"fedavg_lr_on_synthetic", "cpu/fedavg_lstm_on_shakespeare"} <= set(out.splitlines())


def test_configs_list_follows_the_modules_contract(capsys, monkeypatch) -> None:
    fake = types.ModuleType("fedplug.config.packaged")
    fake.list_configs = lambda: ["b_config", "a_config", "cpu/c_config"]
    monkeypatch.setitem(sys.modules, "fedplug.config.packaged", fake)
    code, out, _ = cli_call(capsys, "configs", "list")
    assert (code, out) == (0, "b_config\na_config\ncpu/c_config\n")  # as the module orders them


# -- the first run: generating and caching the Synthetic data -------------------------------------------------

class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


SMALL = SyntheticParams(num_clients=12, val_size=200, test_size=200)


def test_generation_shows_a_bar_and_where_the_cache_goes(tmp_path, monkeypatch, caplog) -> None:
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with caplog.at_level(logging.INFO, logger="fedplug.data"):
        data = synthetic.load_or_generate(SMALL, tmp_path / "bar")
    [folder] = (tmp_path / "bar").iterdir()
    size = sum(getattr(split, f).nbytes for split in data.values() for f in ("x", "y", "offsets"))
    assert synthetic.expected_bytes(SMALL) == size  # known before generating
    [message] = [r.getMessage() for r in caplog.records if "Synthetic data" in r.getMessage()]
    assert str(folder) in message and f"({synthetic.human_bytes(size)};" in message
    shown = terminal.getvalue()
    assert "generating Synthetic:   0%|" in shown and "| 0/12 [" in shown
    assert "caching Synthetic:   0%|" in shown and f"0.00/{size / 1e6:.2f}M" in shown

    # The bar changes nothing: same arrays, same cache files as without a terminal.
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    plain = synthetic.load_or_generate(SMALL, tmp_path / "plain")
    [plain_folder] = (tmp_path / "plain").iterdir()
    for split in data:
        assert np.array_equal(data[split].x, plain[split].x) and np.array_equal(data[split].y, plain[split].y)
    for path in sorted(folder.glob("*.npy")):
        assert path.read_bytes() == (plain_folder / path.name).read_bytes()


def test_the_bars_reach_their_totals(tmp_path, monkeypatch) -> None:
    bars: list[RecordingBar] = []

    class RecordingBar:
        def __init__(self, total: int, desc: str, unit: str) -> None:
            self.total, self.desc, self.n, self.closed = total, desc, 0, False
            bars.append(self)

        def update(self, n: int) -> None:
            self.n += n

        def close(self) -> None:
            self.closed = True

    monkeypatch.setattr(synthetic, "_bar", RecordingBar)
    data = synthetic.load_or_generate(SMALL, tmp_path)
    generating, caching = bars
    assert (generating.desc, generating.total, generating.n) == ("generating Synthetic", 12, 12)
    files = sum(p.stat().st_size for p in next(tmp_path.iterdir()).glob("*.npy"))
    payload = sum(getattr(split, f).nbytes for split in data.values() for f in ("x", "y", "offsets"))
    assert (caching.desc, caching.total, caching.n) == ("caching Synthetic", payload, files)  # + .npy headers
    assert generating.closed and caching.closed


def test_no_bar_off_a_terminal_and_none_when_cached(tmp_path, monkeypatch, caplog) -> None:
    quiet = io.StringIO()
    monkeypatch.setattr(sys, "stderr", quiet)
    synthetic.load_or_generate(SMALL, tmp_path)
    assert quiet.getvalue() == ""
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    caplog.clear()  # the first call's records (captured when an earlier run set fedplug's level to INFO)
    with caplog.at_level(logging.INFO, logger="fedplug.data"):
        synthetic.load_or_generate(SMALL, tmp_path)  # cached: loads, says nothing
    assert terminal.getvalue() == "" and not caplog.records


def test_default_synthetic_size_is_what_the_readme_says() -> None:
    size = synthetic.expected_bytes(SyntheticParams())
    assert synthetic.human_bytes(size) == "1.87 GB"
    assert "1.87 GB" in (ROOT / "README.md").read_text()


def test_a_reader_that_leaves_early_gets_no_traceback() -> None:
    """`fedplug help | head -1`: the pipe closes before fedplug writes; it stops quietly."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first write: a certain broken pipe
    proc = subprocess.run([sys.executable, "-m", "fedplug", "help"], stdout=write_end, stderr=subprocess.PIPE,
                          text=True, cwd=ROOT)
    os.close(write_end)
    assert proc.returncode == 141 and proc.stderr == ""
