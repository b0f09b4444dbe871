"""Best round and early stopping on crafted histories of the weighted val loss."""
from __future__ import annotations

import math

from fedplug.run.early_stop import EarlyStopper


def feed(stopper: EarlyStopper, losses: list[float], freq: int = 10) -> int | None:
    """Feed evaluations at rounds freq, 2*freq, ...; return the round it stopped at (None: never)."""
    for i, loss in enumerate(losses, start=1):
        if stopper.update(i * freq, loss, {"val_loss": loss, "test_acc": i / 100}):
            return i * freq
    return None


def test_best_round_is_lowest_val_loss_and_stop_after_patience() -> None:
    stopper = EarlyStopper(patience=3)
    stopped = feed(stopper, [0.9, 0.7, 0.75, 0.6, 0.61, 0.62, 0.6, 0.5])
    assert stopped == 70  # 0.61, 0.62, 0.6 (a tie is no improvement): three evaluations without a new best
    assert stopper.best_round == 40 and stopper.best_value == 0.6
    assert stopper.best_metrics["test_acc"] == 0.04  # the test figure of the best round, not the last


def test_improvement_resets_the_count() -> None:
    stopper = EarlyStopper(patience=2)
    assert feed(stopper, [1.0, 1.1, 0.9, 1.0, 0.8, 0.85, 0.7]) is None
    assert stopper.best_round == 70


def test_patience_zero_never_stops() -> None:
    stopper = EarlyStopper(patience=0)
    assert feed(stopper, [0.5] + [0.9] * 50) is None
    assert stopper.best_round == 10


def test_delta_requires_a_real_improvement_for_patience_but_best_still_tracks() -> None:
    stopper = EarlyStopper(patience=2, delta=0.05)
    stopped = feed(stopper, [1.0, 0.98, 0.97])
    assert stopped == 30  # two improvements smaller than delta do not reset the count
    assert stopper.best_round == 30


def test_nan_is_never_better() -> None:
    stopper = EarlyStopper(patience=2)
    assert feed(stopper, [0.5, math.nan, math.nan]) == 30
    assert stopper.best_round == 10
