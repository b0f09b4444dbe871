"""Every supported combination runs and learns on a small federation, with the plan it should have."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from fedplug.run.plan import build_plan
from fedplug.run.simulation import run

BASE = ("fedopt", "fedprox", "fedbn")
PERSONAL = (None, "pfedme", "ditto", "fedem")
SETTINGS = {  # small but real settings, so each plug-in does something
    "fedopt": {"fedopt__optimizer__lr": 0.5, "fedopt__optimizer__momentum": 0.5},
    "fedprox": {"fedprox__mu": 0.1},
    "fedbn": {"personalization__local_param": ["bias"]},
    "pfedme": {"personalization__K": 2, "personalization__regular_weight": 1.0},
    "ditto": {"personalization__regular_weight": 0.1, "personalization__local_update_steps": 3},
    "fedem": {"fedem__num_models": 2},
}
ORDER = ("fedbn", "fedprox", "pfedme", "ditto", "fedem", "fedopt")  # the plan's order of plug-ins
COMBINATIONS = [tuple(pair) + ((p,) if p else ()) for pair in itertools.combinations(BASE, 2) for p in PERSONAL]
COMBINATIONS += [("fedprox", "fedopt", "ditto")]


@pytest.mark.parametrize("names", COMBINATIONS, ids="+".join)
def test_combination_runs_and_learns(small_cfg, names: tuple[str, ...]) -> None:
    overrides = {f"{n}__use": True for n in names}
    for n in names:
        overrides.update(SETTINGS[n])
    cfg = small_cfg(eval__freq=1, federate__total_round_num=5, **overrides)
    plan = build_plan(cfg)
    assert plan.names == [n for n in ORDER if n in names]
    owners = {h.owner for _, table in plan.tables.items() for _, hooks in table for h in hooks}
    for name in names:  # each hook-bearing plug-in's hooks are in the plan
        if name not in ("fedopt", "fedbn"):
            assert name in owners
    if "fedopt" in names:
        assert plan.server_updater is not None and plan.server_updater.name == "fedopt"
    result = run(cfg)
    records = [json.loads(line) for line in (Path(result["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["val_loss"] < records[0]["val_loss"]
    assert result["method"] == "+".join(p.method for p in plan.plugins)
