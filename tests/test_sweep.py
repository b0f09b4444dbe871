"""`fedplug sweep`: the grid, validation before any run, resumability, mean ± std over seeds."""
from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import pytest
import yaml

from conftest import SMALL, cli_call
from fedplug.config import dump_config, load_config
from fedplug.run import sweep
from fedplug.run.sweep import parse_grid, point_name, split_values


@pytest.fixture
def cfg_file(tmp_path: Path, data_root: Path) -> Path:
    """The small federation as a YAML file (4 rounds)."""
    tree: dict = {}
    for key, value in {**SMALL, "federate.total_round_num": 4, "data.root": str(data_root)}.items():
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def mean_std(values: list[float]) -> tuple[float, float]:
    """By hand: the mean and the sample standard deviation (n - 1)."""
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0


def pm(values: list[float], digits: int) -> str:
    mean, std = mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


class FakeLaunch:
    """Stands in for the `fedplug` process: writes a run folder with config.yaml and a made-up summary.json."""

    def __init__(self) -> None:
        self.commands: list[list[str]] = []

    @staticmethod
    def figures(cfg) -> dict:
        lr, seed = cfg.train.optimizer.lr, cfg.seed
        return {"test_acc": 0.5 + lr + 0.01 * seed ** 2, "val_loss": 1.0 - lr - 0.02 * seed, "best_round": 2 + 2 * seed}

    def __call__(self, command: list[str], log: Path) -> int:
        self.commands.append(command)
        start = command.index("--cfg")
        cfg = load_config(command[start + 1], command[start + 2:])
        run_dir = Path(cfg.outdir) / f"{cfg.expname}_20990101-{len(self.commands):06d}"  # later runs sort last
        run_dir.mkdir(parents=True)
        (run_dir / "config.yaml").write_text(dump_config(cfg))
        (run_dir / "summary.json").write_text(json.dumps({**self.figures(cfg), "seconds": 0.5}))
        log.write_text("fake run\n")
        return 0


@pytest.fixture
def fake(monkeypatch) -> FakeLaunch:
    launcher = FakeLaunch()
    monkeypatch.setattr(sweep, "launch", launcher)
    return launcher


# -- the grid's words ---------------------------------------------------------------------------------------

def test_values_split_on_commas_outside_brackets() -> None:
    assert split_values("0.1,0.2, 0.3") == ["0.1", "0.2", "0.3"]
    assert split_values("[0.6,0.2,0.2],[0.8,0.1,0.1]") == ["[0.6,0.2,0.2]", "[0.8,0.1,0.1]"]
    assert split_values("'a,b',c") == ["'a,b'", "c"]
    assert parse_grid(["train.optimizer.lr=0.1,0.2", "seed=0"]) == [("train.optimizer.lr", ["0.1", "0.2"]),
                                                                    ("seed", ["0"])]


def test_point_names_are_deterministic_folder_names() -> None:
    assert point_name((("train.optimizer.lr", "0.1"), ("fedprox.mu", "0.01"))) == "train.optimizer.lr=0.1__fedprox.mu=0.01"
    assert point_name(()) == "base"
    odd = point_name((("plugins", "my dir/algo.py"),))
    assert odd.startswith("plugins=my_dir_algo.py-") and "/" not in odd
    assert odd != point_name((("plugins", "my_dir/algo.py"),))  # a hash keeps sanitized names apart


@pytest.mark.parametrize("words, message", [
    (["train.optimizer.lr"], "sweep: 'train.optimizer.lr' is not KEY=v1,v2,...: give each key its values after '='"),
    (["train.optimizer.lr="], "sweep: train.optimizer.lr: empty value in 'train.optimizer.lr='"),
    (["train.optimizer.lr=0.1,,0.2"], "sweep: train.optimizer.lr: empty value in 'train.optimizer.lr=0.1,,0.2'"),
    (["train.optimizer.lr=0.1,0.1"], "sweep: train.optimizer.lr: a value is listed twice"),
    (["seed=0", "seed=1"], "sweep: seed is given twice"),
    (["outdir=a,b"], "sweep: outdir is set by the sweep"),
    (["train.optimizer.lrr=0.1,0.2"], "sweep point train.optimizer.lrr=0.1: unknown config key "
                                      "'train.optimizer.lrr' in the overrides. Did you mean 'train.optimizer.lr'"),
    (["train.optimizer.lr=0.1,abc"], "sweep point train.optimizer.lr=abc: config key 'train.optimizer.lr' expects "
                                     "float, got 'abc' (str)"),
    (["train.optimizer.lr=0.1", "seed=0,1", "--seeds", "2"], "sweep: give the seeds either as --seeds K or as "
                                                              "seed=v1,v2, not both"),
    (["train.optimizer.lr=0.1", "--seeds", "0"], "sweep: --seeds must be >= 1, got 0"),
    (["train.optimizer.lr=0.1", "--jobs", "0"], "sweep: --jobs must be >= 1, got 0"),
])
def test_bad_input_is_one_line_before_any_run(capsys, monkeypatch, cfg_file, tmp_path, words, message) -> None:
    monkeypatch.setattr(sweep, "launch", lambda *a: pytest.fail("no run may start"))
    out_dir = tmp_path / "sweep"
    code, out, err = cli_call(capsys, "sweep", "--cfg", str(cfg_file), *words, "--out", str(out_dir))
    assert code == 2 and out == ""
    assert err.startswith(f"fedplug: error: {message}") and err.count("\n") == 1
    assert not out_dir.exists()


def test_impossible_combination_is_refused_before_any_run(capsys, fake, cfg_file, tmp_path) -> None:
    code, _, err = cli_call(capsys, "sweep", "--cfg", str(cfg_file), "scaffold.use=False,True", "pfedme.use=True",
                        "--out", str(tmp_path / "s"))
    assert code == 2 and fake.commands == [] and not (tmp_path / "s").exists()
    assert err == ("fedplug: error: sweep point scaffold.use=True, pfedme.use=True: scaffold and pfedme cannot be "
                   "combined: pfedme replaces the backward step (_hook_on_batch_backward), so scaffold's gradient "
                   "transform would never run\n")


# -- running ------------------------------------------------------------------------------------------------

def test_grid_times_seeds_mean_and_std_by_hand(capsys, fake, cfg_file, tmp_path) -> None:
    out_dir = tmp_path / "sweep"
    code, out, err = cli_call(capsys, "sweep", "--cfg", str(cfg_file), "train.optimizer.lr=0.05,0.2", "--seeds", "3",
                          "--out", str(out_dir))
    assert code == 0, err
    assert len(fake.commands) == 6
    runs = sorted((c[c.index("--cfg") + 2], c[c.index("--cfg") + 3]) for c in fake.commands)
    assert runs == sorted((f"train.optimizer.lr={lr}", f"seed={s}") for lr in ("0.05", "0.2") for s in range(3))
    assert all(c[:4] == [sys.executable, "-m", "fedplug", "--cfg"] for c in fake.commands)
    assert not any("threads=1" in c for c in fake.commands)  # one at a time: the runs keep their threads

    rows = []
    for lr in (0.05, 0.2):
        summaries = [json.loads(p.read_text()) for p in sorted((out_dir / f"train.optimizer.lr={lr}").glob(
            "seed*/*/summary.json"))]
        assert len(summaries) == 3
        acc, loss, best = ([s[k] for s in summaries] for k in ("test_acc", "val_loss", "best_round"))
        rows.append(f"| {lr} | 3/3 | {pm(acc, 4)} | {pm(loss, 4)} | {pm(best, 1)} |")
    table = ["| train.optimizer.lr | runs | test_acc | val_loss | best_round |", "|---|---|---|---|---|", *rows]
    lines = out.splitlines()
    assert lines[:-1] == table
    assert (out_dir / "sweep.md").read_text().splitlines() == table
    assert rows[1] == "| 0.2 | 3/3 | 0.7167 ± 0.0208 | 0.7800 ± 0.0200 | 4.0 ± 2.0 |"  # the numbers, once, by eye

    final = json.loads(lines[-1])
    assert final["sweep_dir"] == str(out_dir.resolve()) and (final["runs"], final["launched"], final["skipped"]) == (6, 6, 0)
    assert final["best"]["point"] == {"train.optimizer.lr": 0.2}  # lowest mean val loss
    assert final["best"]["val_loss_mean"] == pytest.approx(0.78) and final["best"]["test_acc_std"] == pytest.approx(
        mean_std([0.7, 0.71, 0.74])[1])
    with (out_dir / "sweep.csv").open() as f:
        records = list(csv.DictReader(f))
    assert [r["train.optimizer.lr"] for r in records] == ["0.05", "0.2"]
    assert float(records[0]["test_acc_mean"]) == pytest.approx(mean_std([0.55, 0.56, 0.59])[0])
    assert float(records[0]["best_round_std"]) == pytest.approx(2.0)


def test_seed_axis_is_averaged_over(capsys, fake, cfg_file, tmp_path) -> None:
    code, out, _ = cli_call(capsys, "sweep", "--cfg", str(cfg_file), "seed=3,5", "--out", str(tmp_path / "s"),
                        "train.optimizer.lr=0.1")  # words after the options too
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "s" / "train.optimizer.lr=0.1").iterdir()) == ["seed3", "seed5"]
    assert out.splitlines()[2] == f"| 0.1 | 2/2 | {pm([0.69, 0.85], 4)} | {pm([0.84, 0.80], 4)} | {pm([8, 12], 1)} |"


def test_jobs_give_each_run_one_thread(capsys, fake, cfg_file, tmp_path) -> None:
    code, out, _ = cli_call(capsys, "sweep", "--cfg", str(cfg_file), "train.optimizer.lr=0.05,0.1,0.2", "--jobs", "2",
                        "--out", str(tmp_path / "s"))
    assert code == 0
    assert len(fake.commands) == 3 and all(c[-1] == "threads=1" for c in fake.commands)
    assert json.loads(out.splitlines()[-1])["best"]["point"] == {"train.optimizer.lr": 0.2}


def test_finished_runs_are_skipped_unless_their_config_changed(capsys, fake, cfg_file, tmp_path) -> None:
    argv = ["sweep", "--cfg", str(cfg_file), "train.optimizer.lr=0.05,0.2", "--out", str(tmp_path / "s")]
    assert cli_call(capsys, *argv)[0] == 0 and len(fake.commands) == 2
    code, out, _ = cli_call(capsys, *argv)
    assert code == 0 and len(fake.commands) == 2
    assert json.loads(out.splitlines()[-1])["skipped"] == 2
    cfg_file.write_text(cfg_file.read_text().replace("total_round_num: 4", "total_round_num: 6"))
    assert cli_call(capsys, *argv)[0] == 0
    assert len(fake.commands) == 4  # the config file changed: both runs again


def test_failed_run_is_reported_and_rerun(capsys, monkeypatch, fake, cfg_file, tmp_path) -> None:
    monkeypatch.setattr(sweep, "launch", lambda command, log: (log.write_text("fedplug: error: boom\n"), 1)[1])
    code, out, err = cli_call(capsys, "sweep", "--cfg", str(cfg_file), "train.optimizer.lr=0.1", "--out", str(tmp_path / "s"))
    assert code == 1
    log = tmp_path / "s" / "train.optimizer.lr=0.1" / "seed0" / "output.log"
    assert f"train.optimizer.lr=0.1 seed 0: FAILED (exit 1): fedplug: error: boom; see {log}\n" in err
    assert out.splitlines()[2] == "| 0.1 | 0/1 | – | – | – |" and json.loads(out.splitlines()[-1])["failed"] == 1
    monkeypatch.setattr(sweep, "launch", fake)
    assert cli_call(capsys, "sweep", "--cfg", str(cfg_file), "train.optimizer.lr=0.1", "--out", str(tmp_path / "s"))[0] == 0
    assert len(fake.commands) == 1


def test_real_runs_then_resume(capsys, monkeypatch, cfg_file, tmp_path) -> None:
    """Two real `fedplug` processes; the second invocation launches none; a lost summary is run again."""
    launched: list[list[str]] = []
    real = sweep.launch
    monkeypatch.setattr(sweep, "launch", lambda command, log: launched.append(command) or real(command, log))
    out_dir = tmp_path / "sweep"
    argv = ["sweep", "--cfg", str(cfg_file), "train.optimizer.lr=0.2", "--seeds", "2", "--out", str(out_dir)]
    code, out, err = cli_call(capsys, *argv)
    assert code == 0, err
    assert len(launched) == 2
    summaries = sorted(out_dir.glob("train.optimizer.lr=0.2/seed*/train.optimizer.lr=0.2_seed*_*/summary.json"))
    assert [p.parent.parent.name for p in summaries] == ["seed0", "seed1"]
    results = [json.loads(p.read_text()) for p in summaries]
    assert [r["rounds_run"] for r in results] == [4, 4]
    row = (f"| 0.2 | 2/2 | {pm([r['test_acc'] for r in results], 4)} | {pm([r['val_loss'] for r in results], 4)} | "
           f"{pm([r['best_round'] for r in results], 1)} |")
    assert out.splitlines()[2] == row

    mtimes = [p.stat().st_mtime_ns for p in summaries]
    code, out, err = cli_call(capsys, *argv)
    assert code == 0 and len(launched) == 2  # nothing ran again
    assert [p.stat().st_mtime_ns for p in summaries] == mtimes
    assert out.splitlines()[2] == row and "2 finished already (skipped), 0 to run" in err

    summaries[1].unlink()  # as if seed 1 had been interrupted
    code, out, _ = cli_call(capsys, *argv)
    assert code == 0 and len(launched) == 3 and "seed=1" in launched[-1]
    assert json.loads(out.splitlines()[-1])["skipped"] == 1
