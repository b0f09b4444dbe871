"""`fedplug compare RUN_DIR...`: the table of best-round figures and differing config keys, the overlay plot."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import SMALL, cli_call
from fedplug.config import load_config
from fedplug.run.compare import differing_keys, flatten
from fedplug.run.simulation import run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> list[Path]:
    """Same federation; the second differs in seed, the third in learning rate. Made once for the module: the tests
    only read them (a damaged copy is made elsewhere)."""
    base = {**SMALL, "data.root": str(data_root), "outdir": str(tmp_path_factory.mktemp("compare") / "runs"),
            "federate.total_round_num": 4}
    results = [run(load_config(None, base)), run(load_config(None, {**base, "seed": 1})),
               run(load_config(None, {**base, "train.optimizer.lr": 0.05}))]
    return [Path(r["run_dir"]) for r in results]


def expected_row(run_dir: Path, seed: int, lr: float) -> str:
    s = json.loads((run_dir / "summary.json").read_text())
    return (f"| {run_dir.name} | {s['best_round']} | {s['test_acc']:.4f} | {s['val_loss']:.4f} | {s['test_loss']:.4f} | "
            f"{s['test_acc_avg']:.4f} | {s['rounds_run']} | {s['seconds']:.1f} | {seed} | {lr} |")


def test_compare_prints_the_table_and_writes_the_curves(capsys, three_runs, tmp_path) -> None:
    png = tmp_path / "plots" / "three.png"
    code, out, err = cli_call(capsys, "compare", *map(str, three_runs), "--out", str(png))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[:5] == [
        "| run | best_round | test_acc | val_loss | test_loss | test_acc_avg | rounds_run | seconds | seed | "
        "train.optimizer.lr |",
        "|---|---|---|---|---|---|---|---|---|---|",
        expected_row(three_runs[0], 0, 0.1),
        expected_row(three_runs[1], 1, 0.1),
        expected_row(three_runs[2], 0, 0.05),
    ]
    assert lines[-1] == f"learning curves: {png}"
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_default_plot_goes_next_to_the_first_run(capsys, three_runs) -> None:
    code, out, _ = cli_call(capsys, "compare", *map(str, three_runs[:2]))
    assert code == 0
    png = Path(out.splitlines()[-1].removeprefix("learning curves: "))
    assert png.parent == three_runs[0].resolve().parent and png.name.startswith("compare_")
    assert png.read_bytes()[:8] == PNG_MAGIC
    # Two runs that differ only in the seed: the seed is the one differing key.
    assert out.splitlines()[0].endswith("| seconds | seed |")


def test_identical_configs_have_no_differing_keys(capsys, small_cfg, tmp_path) -> None:
    first, second = (Path(run(small_cfg(federate__total_round_num=2))["run_dir"]) for _ in range(2))
    code, out, _ = cli_call(capsys, "compare", str(first), str(second), "--out", str(tmp_path / "c.png"))
    assert code == 0
    assert out.splitlines()[0] == ("| run | best_round | test_acc | val_loss | test_loss | test_acc_avg | rounds_run "
                                   "| seconds |")  # outdir and expname are not compared


def test_differing_keys_from_the_loaded_yaml() -> None:
    a = flatten({"seed": 0, "outdir": "x", "train": {"optimizer": {"lr": 0.1, "type": "SGD"}}, "plugins": []})
    b = flatten({"seed": 0, "outdir": "y", "train": {"optimizer": {"lr": 0.2, "type": "SGD"}}, "plugins": [],
                 "mine": {"use": True}})
    c = flatten({"seed": 1, "outdir": "z", "train": {"optimizer": {"lr": 0.1, "type": "SGD"}}, "plugins": ["m.py"]})
    assert a == {"seed": 0, "outdir": "x", "train.optimizer.lr": 0.1, "train.optimizer.type": "SGD", "plugins": []}
    assert differing_keys([a, a]) == []
    assert differing_keys([a, b]) == ["train.optimizer.lr", "mine.use"]  # a key only one run has differs
    assert differing_keys([a, b, c]) == ["seed", "train.optimizer.lr", "plugins", "mine.use"]


def test_a_key_missing_from_one_run_shows_a_dash(capsys, three_runs, tmp_path) -> None:
    changed = tmp_path / "with_plugin"
    shutil.copytree(three_runs[0], changed)
    (changed / "config.yaml").write_text((changed / "config.yaml").read_text() + "mine:\n  use: true\n")
    code, out, _ = cli_call(capsys, "compare", str(three_runs[0]), str(changed), "--out", str(tmp_path / "c.png"))
    assert code == 0
    header, _, first, second = out.splitlines()[:4]
    assert header.endswith("| seconds | mine.use |")
    assert first.endswith("| – |") and second.endswith("| True |")


@pytest.mark.parametrize("damage, message", [
    ("missing", "is not a run folder (no such folder)"),
    ("no_summary", "is not a run folder: no summary.json in it (an unfinished run?)"),
    ("no_config", "is not a run folder: no config.yaml in it"),
])
def test_a_folder_that_is_not_a_run_is_one_error_line(capsys, three_runs, tmp_path, damage, message) -> None:
    bad = tmp_path / "bad"
    if damage != "missing":
        shutil.copytree(three_runs[0], bad)
        (bad / ("summary.json" if damage == "no_summary" else "config.yaml")).unlink()
    code, out, err = cli_call(capsys, "compare", str(three_runs[0]), str(bad))
    assert code == 2 and out == ""
    assert err == f"fedplug: error: compare: {bad} {message}\n"


def test_compare_needs_a_run(capsys) -> None:
    code, _, err = cli_call(capsys, "compare")
    assert code == 2 and "RUN_DIR" in err
