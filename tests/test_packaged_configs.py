"""The configs ship inside the package and are addressable by name (fedplug/config/packaged.py); the
wheel holds them and all of fedplug, and an installed wheel runs the README's command from any folder."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path

import pytest

from fedplug.config import load_config
from fedplug.config.packaged import list_configs, normalize, resolve
from fedplug.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
FILES = sorted(CONFIGS.rglob("*.yaml"))
QUICK = ["federate.total_round_num", "2", "data.synthetic.num_clients", "12", "data.synthetic.val_size", "200",
         "data.synthetic.test_size", "200", "eval.freq", "1", "threads", "1"]


def test_every_config_is_listed_by_name() -> None:
    names = [str(p.relative_to(CONFIGS).with_suffix("")) for p in FILES]
    assert sorted(list_configs()) == sorted(names)
    assert "fedavg_lr_on_synthetic" in names and "cpu/fedavg_lstm_on_shakespeare" in names
    assert list_configs().index("fedavg_lr_on_synthetic") < list_configs().index("cpu/fedavg_lstm_on_shakespeare")


@pytest.mark.parametrize("name", ["fedavg_lr_on_synthetic", "fedavg_lr_on_synthetic.yaml",
                                  "configs/fedavg_lr_on_synthetic.yaml", "cpu/fedavg_lstm_on_shakespeare",
                                  "cpu/fedavg_lstm_on_shakespeare.yaml", "configs/cpu/fedavg_lstm_on_shakespeare"])
def test_resolve_with_or_without_suffix(name: str) -> None:
    found = resolve(name)
    assert found is not None and found.is_file()
    assert found.read_text() == (CONFIGS / (normalize(name) + ".yaml")).read_text()


@pytest.mark.parametrize("name", ["nope", "cpu", "cpu/nope", "../configs/fedavg_lr_on_synthetic",
                                  "/fedavg_lr_on_synthetic", "", "README"])
def test_resolve_refuses_what_is_not_a_packaged_config(name: str) -> None:
    assert resolve(name) is None


def test_names_load_from_any_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_config("fedavg_lr_on_synthetic") == load_config(CONFIGS / "fedavg_lr_on_synthetic.yaml")
    cpu = load_config("cpu/fedavg_lstm_on_shakespeare.yaml", {"seed": 3})
    assert cpu == load_config(CONFIGS / "cpu" / "fedavg_lstm_on_shakespeare.yaml", {"seed": 3})


def test_an_existing_file_wins_over_a_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fedavg_lr_on_synthetic").write_text("seed: 7\n")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "fedavg_lr_on_synthetic.yaml").write_text("seed: 8\n")
    assert load_config("fedavg_lr_on_synthetic").seed == 7
    assert load_config("configs/fedavg_lr_on_synthetic.yaml").seed == 8
    assert load_config("fedavg_lr_on_synthetic.yaml").federate.total_round_num == 200  # no such file: the packaged one


def test_a_missing_config_names_close_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"config file not found: fedavg_lr_on_synthtic .*"
                                          r"Did you mean 'fedavg_lr_on_synthetic'"):
        load_config("fedavg_lr_on_synthtic")
    with pytest.raises(ConfigError, match=r"Did you mean 'cpu/fedavg_lstm_on_shakespeare'"):
        load_config("configs/cpu/fedavg_lstm_on_shakespear.yaml")
    with pytest.raises(ConfigError, match=r"config file not found: elsewhere/mine.yaml .*`fedplug configs list`"):
        load_config("elsewhere/mine.yaml")


def test_cli_takes_a_name_from_outside_the_repository(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "fedplug", "config", "show", "federate", "--cfg",
                           "cpu/fedavg_lstm_on_shakespeare"], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"federate\.total_round_num\s+int\s+80\s", proc.stdout)  # the CPU scale's (reference: 1000)
    bad = subprocess.run([sys.executable, "-m", "fedplug", "--cfg", "fedavg_lr_on_synthtic"], capture_output=True,
                         text=True, cwd=tmp_path)
    assert bad.returncode == 2 and "Did you mean 'fedavg_lr_on_synthetic'" in bad.stderr


def test_pyproject_lists_every_subpackage_and_the_configs() -> None:
    """The package list is explicit (pyproject.toml says why): a new subpackage must be added to it."""
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    code = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "fedplug").rglob("*.py")}
    configs = {".".join(("fedplug.configs", *p.parent.relative_to(CONFIGS).parts)) for p in FILES}
    assert set(setup["packages"]) == code | configs
    assert setup["package-dir"] == {"fedplug.configs": "configs"}
    for package in configs:
        assert "*.yaml" in setup["package-data"][package]


def _copy_source(dest: Path) -> Path:
    """What a wheel is built from (pyproject.toml, README.md, fedplug/, configs/), outside the shared tree:
    building in place would write build/ and *.egg-info there."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    for name in ("fedplug", "configs"):
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    return dest


@pytest.mark.slow
def test_installed_wheel_runs_a_packaged_config_outside_the_repository(tmp_path: Path) -> None:
    """Build the wheel, install it with its dependencies in a fresh venv, run from a folder outside the repo.

    Measured on 2 shared cores: about 40 s in all (venv 5 s, wheel 2 s, install 28 s: torch from the local
    disk, the rest through pip's configured indexes, PyPI included; the run and the checks 6 s). Most of the
    install's CPU time was pip compiling every installed module (61 s of CPU against 24 s with --no-compile, torch
    from the local disk, under load), and most of the venv's was putting pip into it (7 s): so the venv has no
    pip of its own (this pip installs into it) and nothing is compiled at install; the first run compiles what it
    imports and, bytecode writing allowed, leaves it for the second."""
    started = time.perf_counter()
    source = _copy_source(tmp_path / "src")
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist),
                    str(source)], check=True, capture_output=True)
    (wheel,) = dist.glob("fedplug-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"fedplug/{p.relative_to(source / 'fedplug')}" for p in (source / "fedplug").rglob("*.py")} <= names
    assert {f"fedplug/configs/{p.relative_to(CONFIGS)}" for p in FILES} | {"fedplug/configs/README.md"} <= names

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True)
    python, fedplug_cmd = venv / "bin" / "python", venv / "bin" / "fedplug"
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-compile",
                              "torch==2.13.0", str(wheel)], capture_output=True, text=True)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    installed = time.perf_counter()

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "FEDPLUG_CACHE", "PYTHONDONTWRITEBYTECODE")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run([str(fedplug_cmd), "--cfg", "fedavg_lr_on_synthetic", *QUICK, "outdir", str(work / "runs"),
                           "data.root", str(work / "data")], capture_output=True, text=True, cwd=work, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = json.loads(proc.stdout.strip().splitlines()[-1])
    assert final["method"] == "FedAvg" and final["data"] == "synthetic" and final["rounds_run"] == 2
    assert 0.5 < final["test_acc"] <= 1 and final["best_round"] in (1, 2)
    assert Path(final["run_dir"]).parent == work / "runs" and (Path(final["run_dir"]) / "summary.json").is_file()

    where = subprocess.run([str(python), "-c", (
        "import json, fedplug, importlib.resources\n"
        "from fedplug.config.packaged import list_configs, resolve\n"
        "configs = importlib.resources.files('fedplug.configs')\n"
        "print(json.dumps({'fedplug': fedplug.__file__, 'yaml': str(configs.joinpath('fedavg_lr_on_synthetic.yaml')),\n"
        "    'cpu': str(resolve('cpu/fedavg_lstm_on_shakespeare')), 'names': list_configs()}))")],
        capture_output=True, text=True, cwd=work, env=env, check=True)
    found = json.loads(where.stdout)
    site = str(venv / "lib")
    for key in ("fedplug", "yaml", "cpu"):
        assert found[key].startswith(site) and str(ROOT) not in found[key], (key, found[key])
    assert found["names"] == list_configs()
    assert Path(found["yaml"]).read_text() == (CONFIGS / "fedavg_lr_on_synthetic.yaml").read_text()
    print(f"wheel test: {installed - started:.0f} s to build and install, "
          f"{time.perf_counter() - installed:.0f} s to run")
