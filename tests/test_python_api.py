"""`fedplug.run`: the command line's run from Python (docs/python-api.md): configs by path, name or object,
overrides, the user's plug-in classes, run folders and resuming, errors as exceptions, the notebook bar."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import fedplug
from fedplug.algorithms import registry
from fedplug.config import Key, Section, register_section
from fedplug.config.schema import ROOT as SCHEMA
from fedplug.core.plugin import Plugin
from fedplug.errors import ConfigError, UserError

ROOT = Path(__file__).resolve().parents[1]
QUICK = {
    "data.synthetic.num_clients": 12,
    "data.synthetic.val_size": 200,
    "data.synthetic.test_size": 200,
    "federate.total_round_num": 4,
    "federate.sample_client_rate": 0.5,
    "train.local_update_steps": 5,
    "dataloader.batch_size": 16,
    "eval.freq": 2,
    "early_stop.patience": 0,
    "threads": 1,
}
CALLS: list[str] = []  # what the test plug-ins saw


@pytest.fixture
def quick(tmp_path: Path, data_root: Path) -> dict[str, Any]:
    return {**QUICK, "data.root": str(data_root), "outdir": str(tmp_path / "runs")}


@pytest.fixture
def sections():
    """sections(name, ...): a `<name>.use` config section for this test only (the class is left to run())."""
    added: list[str] = []

    def add(*names: str) -> None:
        for name in names:
            register_section(name, Section(f"test plug-in {name}", {"use": Key(False, "switch on"),
                                                                    "scale": Key(1.0, "server step")}))
            added.append(name)

    CALLS.clear()
    yield add
    for name in added:
        SCHEMA.entries.pop(name, None)
        registry._registered.pop(name, None)
    CALLS.clear()


def probe(name: str) -> type[Plugin]:
    """A plug-in class named `name` that records each server step and scales it by `<name>.scale`."""

    class Probe(Plugin):
        def transform_aggregate(self, old, aggregate, facts):
            CALLS.append(self.name)
            return {n: old[n] + self.section.scale * (aggregate[n] - old[n]) for n in aggregate}

    Probe.name = name
    return Probe


def test_run_returns_the_command_lines_result(quick: dict, tmp_path: Path) -> None:
    from fedplug.run.simulation import run as simulate

    result = fedplug.run("fedavg_lr_on_synthetic", quick)
    assert isinstance(result, fedplug.RunResult) and isinstance(result.run_dir, Path)
    direct = simulate(fedplug.load_config(ROOT / "configs" / "fedavg_lr_on_synthetic.yaml", quick))
    for key, value in direct.items():
        if key != "run_dir":
            assert getattr(result, key) == value, key
    assert result.rounds_run == 4 and result.best_round == 4 and not result.early_stopped
    assert result.run_dir.parent == tmp_path / "runs"
    lines = (result.run_dir / "metrics.jsonl").read_text().splitlines()
    assert result.metrics == [json.loads(line) for line in lines] and [m["round"] for m in result.metrics] == [2, 4]
    assert result.summary == json.loads((result.run_dir / "summary.json").read_text())
    assert result.seconds == result.summary["seconds"] and result.summary["best"]["test_acc"] == result.test_acc
    assert result.config.federate.total_round_num == 4
    assert "metrics" not in repr(result) and "test_acc=" in repr(result)
    assert fedplug.run is fedplug.api.run  # still the function once fedplug/run/ has been imported
    assert {"run", "RunResult", "load_config"} <= set(fedplug.__all__)


def test_a_config_object_a_path_and_overrides_give_the_same_run(quick: dict) -> None:
    cfg = fedplug.load_config("fedavg_lr_on_synthetic", quick)
    by_object = fedplug.run(cfg, {"federate.total_round_num": 2, "eval.freq": 1})
    by_path = fedplug.run(ROOT / "configs" / "fedavg_lr_on_synthetic.yaml",
                          {**quick, "federate.total_round_num": 2, "eval.freq": 1})
    assert by_object.rounds_run == by_path.rounds_run == 2
    assert (by_object.test_acc, by_object.val_loss) == (by_path.test_acc, by_path.val_loss)
    assert cfg.federate.total_round_num == 4  # the object given is left as it was


def test_import_fedplug_stays_light() -> None:
    code = ("import sys, fedplug; heavy = [m for m in sys.modules if m.startswith(('fedplug.run.', "
            "'fedplug.algorithms', 'fedplug.data', 'matplotlib', 'grpc'))]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_plugin_classes_are_registered_and_switched_on(quick: dict, sections) -> None:
    sections("api_probe")
    cls = probe("api_probe")
    result = fedplug.run("fedavg_lr_on_synthetic", {**quick, "api_probe.scale": 0.5}, plugins=[cls])
    assert registry._registered["api_probe"] is cls and result.config.api_probe.use
    assert CALLS == ["api_probe"] * 4 and result.method == "api_probe"
    plain = fedplug.run("fedavg_lr_on_synthetic", quick)
    assert plain.test_acc != result.test_acc  # the half step changed the run

    CALLS.clear()  # the same class again, already registered: fine; `use` False in overrides wins
    off = fedplug.run("fedavg_lr_on_synthetic", {**quick, "api_probe.use": False}, plugins=[cls, cls])
    assert CALLS == [] and off.test_acc == plain.test_acc


def test_a_registered_class_and_a_redefined_one(quick: dict, sections) -> None:
    sections("api_probe_b")
    first = registry.register_algorithm(probe("api_probe_b"))
    fedplug.run("fedavg_lr_on_synthetic", {**quick, "federate.total_round_num": 2}, plugins=[first])
    assert registry._registered["api_probe_b"] is first and CALLS == ["api_probe_b"] * 2
    again = probe("api_probe_b")  # the same class defined again (a notebook cell run twice): it replaces the first
    fedplug.run("fedavg_lr_on_synthetic", {**quick, "federate.total_round_num": 2}, plugins=[again])
    assert registry._registered["api_probe_b"] is again

    other = type("Other", (Plugin,), {"name": "api_probe_b"})  # another class under a taken name
    with pytest.raises(ConfigError, match="an algorithm named 'api_probe_b' is already registered"):
        fedplug.run("fedavg_lr_on_synthetic", quick, plugins=[other])


def test_plugin_mistakes_are_config_errors(quick: dict) -> None:
    unregistered = probe("api_probe_nowhere")
    with pytest.raises(ConfigError, match=r"config section 'api_probe_nowhere' is not registered; register it first: "
                                          r"register_section\('api_probe_nowhere'"):
        fedplug.run("fedavg_lr_on_synthetic", quick, plugins=[unregistered])
    assert "api_probe_nowhere" not in registry._registered
    with pytest.raises(ConfigError, match="is not a Plugin class"):
        fedplug.run("fedavg_lr_on_synthetic", quick, plugins=[object])
    with pytest.raises(ConfigError, match="is not a Plugin class"):
        fedplug.run("fedavg_lr_on_synthetic", quick, plugins=["examples/my_fedprox.py"])


@pytest.mark.parametrize("args, error, message", [
    (("fedavg_lr_on_synthetic", {"federate.total_round_nm": 3}), ConfigError,
     "unknown config key 'federate.total_round_nm' in overrides. Did you mean 'federate.total_round_num'"),
    (("fedavg_lr_on_synthtic",), ConfigError, "config file not found: .*Did you mean 'fedavg_lr_on_synthetic'"),
    (("fedavg_lr_on_synthetic", {"train.optimizer.lr": -1.0}), ConfigError, "'train.optimizer.lr' must be > 0"),
    (("fedavg_lr_on_synthetic", ["seed", "1"]), ConfigError, "overrides must be a dict"),
    ((42,), ConfigError, "cfg must be a YAML file, a packaged config's name or a config object; got int"),
    ((), UserError, "nothing to run"),
    ((None, {"ditto.use": True, "pfedme.use": True}), UserError, "cannot be combined: both fill the exclusive role 'personalization'"),
])
def test_mistakes_raise_instead_of_exiting(args: tuple, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        fedplug.run(*args)


def test_run_dir_and_resume(quick: dict, tmp_path: Path) -> None:
    folder = tmp_path / "mine" / "run"
    first = fedplug.run("fedavg_lr_on_synthetic", {**quick, "checkpoint.every": 2}, run_dir=folder)
    assert first.run_dir == folder and (folder / "config.yaml").is_file() and (folder / "checkpoint.safetensors").is_file()
    with pytest.raises(UserError, match="exists and is not an empty folder"):
        fedplug.run("fedavg_lr_on_synthetic", quick, run_dir=folder)
    again = fedplug.run(None, run_dir=folder, resume=True)  # the folder's config; the checkpoint is the last round
    assert (again.best_round, again.test_acc, again.val_loss, again.rounds_run) == \
        (first.best_round, first.test_acc, first.val_loss, first.rounds_run)
    assert again.metrics == first.metrics
    with pytest.raises(UserError, match="resume=True needs run_dir"):
        fedplug.run("fedavg_lr_on_synthetic", resume=True)
    with pytest.raises(UserError, match="not a run folder"):
        fedplug.run(None, run_dir=tmp_path, resume=True)
    import logging

    assert not any(isinstance(h, logging.FileHandler) for h in logging.getLogger("fedplug").handlers)  # run.log closed


class _Kernel:
    config = {"IPKernelApp": {}}


def test_progress_bar_in_a_notebook_and_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    from tqdm.auto import tqdm

    from fedplug.run.outputs import progress

    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal, no notebook: the log's lines instead
    assert progress(4, "x") is None
    fake = type(sys)("IPython")
    fake.get_ipython = _Kernel
    monkeypatch.setitem(sys.modules, "IPython", fake)
    bar = progress(4, "x")  # a Jupyter kernel: tqdm.auto's bar (the widget when ipywidgets is there), kept when done
    assert isinstance(bar, tqdm) and bar.leave
    bar.close()
    fake.get_ipython = lambda: None  # plain IPython on a terminal is no notebook
    terminal = io.StringIO()
    terminal.isatty = lambda: True
    monkeypatch.setattr(sys, "stderr", terminal)
    bar = progress(4, "x")
    assert isinstance(bar, tqdm) and not bar.leave
    bar.update(1)
    bar.refresh()
    bar.close()
    assert "x:  25%" in terminal.getvalue() and "1/4 [" in terminal.getvalue()  # tqdm's text bar, as before


def test_the_example_script_runs(tmp_path: Path, data_root: Path) -> None:
    env = {**os.environ, "FEDPLUG_CACHE": str(data_root), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "python_api.py")], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "FedAvg:" in out and "FedAvg + server_lr:" in out and "round 4: val loss" in out
    assert "refused: config key 'train.optimizer.lr' must be > 0; got -1.0" in out
    assert len(list((tmp_path / "exp").iterdir())) == 2
