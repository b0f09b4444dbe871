"""Every shipped config loads and composes; a CPU-scale config marks each difference from the reference."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from fedplug.config import load_config
from fedplug.run.plan import build_plan

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
CPU = sorted((ROOT / "configs" / "cpu").glob("*.yaml"))
# Differences from the reference that are not reductions: the stand-in's own data, and run settings.
NOT_REDUCTIONS = {"threads", "data.type", "data.subsample", "data.femnist.url", "model.out_channels"}


def _flat(node: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_config_loads_and_composes(path: Path) -> None:
    cfg = load_config(path)
    algo = path.name.split("_")[0]
    plan = build_plan(cfg)
    if algo not in ("fedavg", "distributed"):
        assert algo in plan.names  # the file's name says which algorithm it runs


@pytest.mark.parametrize("path", CPU, ids=lambda p: p.name)
def test_cpu_config_marks_every_reduction(path: Path) -> None:
    reference = ROOT / "configs" / path.name.replace("_on_standin", "_on_femnist")
    assert reference.exists(), f"{path.name} has no reference-protocol counterpart"
    ours, theirs = _flat(load_config(path).to_dict()), _flat(load_config(reference).to_dict())
    text = path.read_text()
    ignored = NOT_REDUCTIONS | ({"federate.sample_client_rate"} if ours["federate.sample_client_num"] > 0 else set())
    differing = [k for k in ours if ours[k] != theirs.get(k) and k not in ignored]
    assert differing, "a CPU-scale config that reduces nothing"
    for key in differing:
        leaf = key.rsplit(".", 1)[-1]
        assert re.search(rf"^\s*{re.escape(leaf)}:.*(REDUCED|CHANGED)", text, re.MULTILINE), \
            f"{key} differs from {reference.name} but is not marked REDUCED or CHANGED"


def test_subsample_of_a_data_set_without_it_is_refused() -> None:
    from fedplug.data import build_data
    from fedplug.errors import ConfigError

    with pytest.raises(ConfigError, match="data.subsample applies to shakespeare .* not synthetic"):
        build_data(load_config(None, {"data.subsample": 0.5}))
