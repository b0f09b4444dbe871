"""Best round and early stopping, both on the weighted validation loss.

The best round is the evaluation with the lowest val loss (the first, on ties); it gives the
reported test accuracy. Early stopping counts evaluations since the loss last fell by more than
`delta` and stops once that count reaches `patience` (0 disables it). NaN never counts as better.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class EarlyStopper:
    patience: int
    delta: float = 0.0
    best_round: int | None = None
    best_value: float = float("inf")
    best_metrics: dict[str, Any] = field(default_factory=dict)
    evals_without_improvement: int = 0

    def update(self, round_num: int, value: float, metrics: dict[str, Any]) -> bool:
        """Record one evaluation; True when training should stop."""
        if value < self.best_value - self.delta:
            self.evals_without_improvement = 0
        else:
            self.evals_without_improvement += 1
        if value < self.best_value:
            self.best_round, self.best_value, self.best_metrics = round_num, value, dict(metrics)
        return self.should_stop

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.evals_without_improvement >= self.patience
