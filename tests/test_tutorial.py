"""The tutorial's out-of-tree plug-ins equal the built-ins: FedProx (examples/my_fedprox.py, part 1)
and SCAFFOLD (examples/my_scaffold.py, part 2: standalone, vectorized, under `fedplug launch`)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMALL_ARGS = ["data.synthetic.num_clients=12", "data.synthetic.val_size=200", "data.synthetic.test_size=200",
              "federate.total_round_num=6", "federate.sample_client_rate=0.5", "train.local_update_steps=5",
              "dataloader.batch_size=16", "eval.freq=2", "early_stop.patience=0", "threads=1"]
MY_SCAFFOLD = str(ROOT / "examples" / "my_scaffold.py")


def run_cli(tmp_path: Path, data_root: Path, *args: str) -> tuple[dict, str]:
    """Run the CLI from a folder outside the package; its final JSON line (less run_dir, method) and stderr."""
    proc = subprocess.run([sys.executable, "-m", "fedplug", "--cfg", str(ROOT / "configs" / "fedavg_lr_on_synthetic.yaml"),
                           *SMALL_ARGS, f"data.root={data_root}", f"outdir={tmp_path}", *args],
                          capture_output=True, text=True, cwd=tmp_path, check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {k: v for k, v in result.items() if k not in ("run_dir", "method")}, proc.stderr


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory, data_root: Path):
    """`small_run(*args)`: run_cli's final line, from the same run made in this process (no PyTorch import per run;
    the vectorized test below keeps a CLI process), each distinct run once per module (plain FedAvg serves several
    tests). The plug-in files it loads are taken back afterwards, as their own process would have left no trace."""
    from fedplug.algorithms import registry
    from fedplug.config import load_config
    from fedplug.config.schema import ROOT as SCHEMA
    from fedplug.run.simulation import run

    load_config(None)  # registers the built-in sections first: run first in a process, the clean-up would drop them
    folder, done = tmp_path_factory.mktemp("tutorial-runs"), {}
    sections, files = set(SCHEMA.entries), set(registry._loaded_files)

    def get(*args: str) -> dict:
        if args not in done:
            words = [*SMALL_ARGS, f"data.root={data_root}", f"outdir={folder}", *args]
            result = run(load_config(ROOT / "configs" / "fedavg_lr_on_synthetic.yaml", words))
            done[args] = {k: v for k, v in json.loads(json.dumps(result)).items() if k not in ("run_dir", "method")}
        return done[args]

    yield get
    for name in set(SCHEMA.entries) - sections:
        del SCHEMA.entries[name]
        registry._registered.pop(name, None)
    for path in registry._loaded_files - files:
        registry._loaded_files.discard(path)
        sys.modules.pop(path.stem, None)


def test_out_of_tree_fedprox_equals_builtin(small_run) -> None:
    ours = small_run("plugins", str(ROOT / "examples" / "my_fedprox.py"), "my_fedprox.use", "True",
                     "my_fedprox.mu", "0.1")
    builtin = small_run("fedprox.use", "True", "fedprox.mu", "0.1")
    plain = small_run()
    assert ours == builtin
    assert ours != plain  # mu 0.1 does change training, so the equality above means something


def test_out_of_tree_plugin_appears_in_the_plan(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "fedplug", "plan", "--cfg",
                           str(ROOT / "configs" / "fedavg_lr_on_synthetic.yaml"), "plugins",
                           str(ROOT / "examples" / "my_fedprox.py"), "my_fedprox.use", "True"],
                          capture_output=True, text=True, cwd=tmp_path, check=True)
    assert "_hook_on_batch_forward [core], _hook_on_batch_forward_my_proximal_term [my_fedprox]" in proc.stdout
    assert "_hook_on_fit_start_init [core], _hook_on_fit_start_init_my_fedprox [my_fedprox]" in proc.stdout


# -- part 2: SCAFFOLD through the contract's pure points ---------------------------------------------
def test_out_of_tree_scaffold_equals_builtin(small_run) -> None:
    ours = small_run("plugins", MY_SCAFFOLD, "my_scaffold.use", "True")
    builtin = small_run("scaffold.use", "True")
    assert ours == builtin  # bit for bit: the same float operations in the same order
    assert ours != small_run()  # the control variates do change training, so the equality means something


def test_out_of_tree_scaffold_runs_vectorized(tmp_path: Path, data_root: Path, small_run) -> None:
    ours, log = run_cli(tmp_path, data_root, "plugins", MY_SCAFFOLD, "my_scaffold.use", "True",
                        "federate.backend", "vectorized")
    assert "one client at a time" not in log  # the cohorts really trained together, no fallback
    builtin = small_run("scaffold.use", "True")  # the sequential built-in: the reference numbers
    assert set(ours) == set(builtin)
    for key, value in builtin.items():
        if isinstance(value, float):
            assert abs(ours[key] - value) <= 1e-5, key
        else:
            assert ours[key] == value, key


def test_out_of_tree_scaffold_under_launch_equals_builtin_standalone(tmp_path: Path, data_root: Path) -> None:
    """Its extra tensors travel as `my_scaffold/<parameter>` between real processes and its c_i stay with
    the clients: the launched line is the built-in's standalone line (apart from run_dir and method)."""
    from fedplug.config import load_config
    from fedplug.run.simulation import run
    from fedplug_procs import PATIENT_WORDS, Proc, fedplug_cmd

    config = ROOT / "configs" / "distributed_lr_on_synthetic.yaml"

    def standalone(*words: str) -> dict:
        overrides = {"outdir": str(tmp_path / "standalone"), "data.root": str(data_root),
                     **dict(zip(words[::2], words[1::2]))}
        result = run(load_config(config, overrides))
        return {k: v for k, v in result.items() if k not in ("run_dir", "method")}

    expected = standalone("scaffold.use", True)
    assert expected != standalone()  # SCAFFOLD is not FedAvg on this config either
    launch = Proc(fedplug_cmd("launch", "--cfg", config, "outdir", tmp_path / "launched", "data.root", data_root,
                              "distribute.clients_per_process", "8", "plugins", MY_SCAFFOLD, "my_scaffold.use", "True",
                              *PATIENT_WORDS),  # the config's port 0 kept: launch picks a free port itself
                  tmp_path)
    code, result = launch.finish()
    assert code == 0, launch.log[-3000:]
    assert result["method"] == "my_scaffold"
    assert {k: v for k, v in result.items() if k not in ("run_dir", "method")} == expected


def test_out_of_tree_scaffold_appears_in_the_plan(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "fedplug", "plan", "--cfg",
                           str(ROOT / "configs" / "fedavg_lr_on_synthetic.yaml"), "plugins", MY_SCAFFOLD,
                           "my_scaffold.use", "True"], capture_output=True, text=True, cwd=tmp_path, check=True)
    text = proc.stdout
    gradient = text.split("client gradient point (after backward, before clipping and the optimizer step):\n")[1]
    assert gradient.splitlines()[0].strip() == "transform_gradients [my_scaffold]"
    travels = text.split("travels besides the model:\n")[1].split("server (in this order):")[0]
    assert travels.splitlines() == ["  down my_scaffold/: <parameter>", "  up   my_scaffold/: <parameter> (sum)"]
    server = text.split("server (in this order):\n")[1].splitlines()
    assert [line.split()[0] for line in server] == ["weights", "aggregate", "receive", "update"]
    assert server[2].endswith("[my_scaffold]")
    assert "[my_scaffold]" not in text.split("client gradient point")[0]  # no hook: only the pure points
