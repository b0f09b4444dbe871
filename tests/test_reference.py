"""The first number of the published table: FedAvg on Synthetic, full protocol (about 40 s).

The band is wide enough to be met with every aggregation weight 1 or the same clients in every round:
tests/test_round_schedule.py checks the weights and the seeded draws exactly."""
from __future__ import annotations

from pathlib import Path

from fedplug.config import load_config
from fedplug.run.simulation import run

ROOT = Path(__file__).resolve().parents[1]


def test_fedavg_on_synthetic_reproduces_the_published_row(tmp_path: Path, data_root: Path) -> None:
    # The vectorized backend: half the time of the sequential one here, its equal to 1e-5 (tests/test_vectorized.py)
    cfg = load_config(ROOT / "configs" / "fedavg_lr_on_synthetic.yaml",
                      {"data.root": str(data_root), "outdir": str(tmp_path), "federate.backend": "vectorized"})
    result = run(cfg)
    # Published 68.36%; FederatedScope run on this machine: 69.16%. The band: 67.4-70.0%.
    assert 0.674 <= result["test_acc"] <= 0.700, result
    assert result["best_round"] % 10 == 0 and result["best_round"] < result["rounds_run"] <= 200
