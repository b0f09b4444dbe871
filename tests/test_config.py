"""Config: defaults, YAML, overrides, and a clear error for each kind of mistake."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fedplug.config import dump_config, load_config
from fedplug.config.show import show_config
from fedplug.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_defaults_yaml_then_overrides(tmp_path: Path) -> None:
    cfg_file = write(tmp_path, "federate:\n  total_round_num: 7\ntrain:\n  optimizer:\n    lr: 0.5\n")
    cfg = load_config(cfg_file, ["train.optimizer.lr", "0.25", "seed=3"])
    assert cfg.federate.total_round_num == 7  # from YAML
    assert cfg.train.optimizer.lr == 0.25  # override beats YAML
    assert cfg.seed == 3  # KEY=VALUE form
    assert cfg.dataloader.batch_size == 64  # default


def test_int_is_accepted_for_float_and_stored_as_float() -> None:
    cfg = load_config(None, ["train.optimizer.lr", "1"])
    assert cfg.train.optimizer.lr == 1.0 and isinstance(cfg.train.optimizer.lr, float)


@pytest.mark.parametrize("given, suggested", [
    ("federate.total_round_nm", "federate.total_round_num"),
    ("train.optimzer.lr", "train.optimizer.lr"),
    ("train.batch_size", "dataloader.batch_size"),  # right leaf, wrong section
])
def test_unknown_override_names_it_and_suggests(given: str, suggested: str) -> None:
    with pytest.raises(ConfigError, match=rf"'{given}'.*Did you mean .*'{suggested}'"):
        load_config(None, [given, "1"])


def test_unknown_yaml_key_names_file_and_suggests(tmp_path: Path) -> None:
    cfg_file = write(tmp_path, "early_stop:\n  patients: 3\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'early_stop.patients' in .*cfg.yaml.*'early_stop.patience'"):
        load_config(cfg_file)


@pytest.mark.parametrize("key, value, expected", [
    ("federate.total_round_num", "abc", "int"),
    ("federate.total_round_num", "1.5", "int"),
    ("train.optimizer.lr", "fast", "float"),
    ("data.synthetic.corrected", "3", "bool"),
])
def test_wrong_type_names_key_type_and_value(key: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=rf"'{key}' expects {expected}, got .*{value}"):
        load_config(None, [key, value])


def test_value_checks_and_choices() -> None:
    with pytest.raises(ConfigError, match=r"'federate.sample_client_rate' must be in \(0, 1\]; got 1.5"):
        load_config(None, ["federate.sample_client_rate", "1.5"])
    with pytest.raises(ConfigError, match=r"'train.batch_or_epoch' must be one of 'batch', 'epoch'; got 'epochs'.*Did you mean 'epoch'"):
        load_config(None, ["train.batch_or_epoch", "epochs"])


def test_file_and_yaml_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"cannot parse YAML in .*cfg.yaml at line \d, column \d"):
        load_config(write(tmp_path, "federate:\n  total_round_num: [1, 2\n"))
    with pytest.raises(ConfigError, match="must hold a YAML mapping"):
        load_config(write(tmp_path, "- just\n- a list\n"))
    with pytest.raises(ConfigError, match="'train' in .* is a section"):
        load_config(write(tmp_path, "train: 3\n"))
    with pytest.raises(ConfigError, match="'train' is a section, not a key"):
        load_config(None, ["train", "3"])
    with pytest.raises(ConfigError, match="override 'seed' has no value"):
        load_config(None, ["seed"])


def test_config_is_frozen_and_round_trips(tmp_path: Path) -> None:
    cfg = load_config(None, ["train.optimizer.lr", "0.3", "expname", "007"])
    assert cfg.expname == "007"  # string keys keep the literal text
    with pytest.raises(AttributeError, match="frozen"):
        cfg.train.optimizer.lr = 1.0
    assert load_config(write(tmp_path, dump_config(cfg))) == cfg


def test_config_keys_read_as_attributes_as_through_their_values() -> None:
    from fedplug.config.schema import ConfigNode

    cfg = load_config(None, ["train.optimizer.lr", "0.3"])
    assert cfg.train.optimizer.lr == 0.3 and cfg.train.optimizer is cfg.train._values["optimizer"]
    with pytest.raises(AttributeError, match="train has no key 'lrr'"):
        cfg.train.lrr
    node = ConfigNode({"get": 1, "to_dict": 2, "lr": 3}, "odd")
    assert callable(node.get) and callable(node.to_dict) and node.lr == 3  # a method still wins over a key
    with pytest.raises(AttributeError, match="frozen"):
        node.lr = 4


def test_show_lists_keys_with_descriptions() -> None:
    text = show_config(load_config(None, ["train.optimizer.lr", "0.3"]), "train")
    assert "train.optimizer.lr" in text and "0.3" in text and "learning rate" in text
    assert "federate" not in text
    with pytest.raises(ConfigError, match="no config section 'trian'"):
        show_config(load_config(), "trian")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedplug", *args], capture_output=True, text=True, cwd=ROOT)


@pytest.mark.parametrize("args, message", [
    (["--cfg", "missing.yaml"], "config file not found: missing.yaml"),
    (["--cfg", "configs/fedavg_lr_on_synthetic.yaml", "fedprox.muu", "0.1"], "unknown config key 'fedprox.muu'"),
    (["--cfg", "configs/fedavg_lr_on_synthetic.yaml", "seed", "x"], "'seed' expects int, got 'x'"),
    (["config", "show", "nosuch"], "no config section 'nosuch'"),
])
def test_cli_user_errors_exit_nonzero_without_traceback(args: list[str], message: str) -> None:
    proc = run_cli(*args)
    assert proc.returncode == 2
    assert f"fedplug: error: {message}" in proc.stderr or message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_config_show() -> None:
    proc = run_cli("config", "show", "early_stop")
    assert proc.returncode == 0
    assert proc.stdout.splitlines()[0].startswith("early_stop.patience")
