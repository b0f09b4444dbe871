"""The evaluation protocol: every client on its val and test split, pooled three ways.

- weighted: sum of correct (or loss) over all clients / sum of samples  -> `test_acc`, `val_loss`
- avg: the plain mean of per-client figures                             -> `test_acc_avg`, ...
- fairness: spread of per-client accuracy                               -> `test_acc_std`, `_min`,
  `_max`, `_bottom_decile` (10th percentile), `_top_decile` (90th percentile)

`per_client` keeps what pooling summarizes away: each client's test accuracy, loss and sample count
(the run folder's clients.jsonl, the client_accuracy.png histogram, TensorBoard's histograms).
"""
from __future__ import annotations

from typing import Any

import numpy as np

EVAL_SPLITS = ("val", "test")


def pool(per_client: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for split, results in per_client.items():
        total = np.array([r[f"{split}_total"] for r in results], dtype=np.float64)
        correct = np.array([r[f"{split}_correct"] for r in results], dtype=np.float64)
        loss = np.array([r[f"{split}_loss_sum"] for r in results], dtype=np.float64)
        acc = correct / total
        metrics.update({
            f"{split}_acc": float(correct.sum() / total.sum()),
            f"{split}_loss": float(loss.sum() / total.sum()),
            f"{split}_acc_avg": float(acc.mean()),
            f"{split}_loss_avg": float((loss / total).mean()),
            f"{split}_acc_std": float(acc.std()),
            f"{split}_acc_min": float(acc.min()),
            f"{split}_acc_max": float(acc.max()),
            f"{split}_acc_bottom_decile": float(np.quantile(acc, 0.1)),
            f"{split}_acc_top_decile": float(np.quantile(acc, 0.9)),
            f"{split}_total": int(total.sum()),
        })
    return metrics


def per_client(per_client: dict[str, list[dict[str, Any]]], split: str = "test") -> dict[str, list]:
    """Each client's accuracy, mean loss and sample count on `split`, by client id.

    A result may carry its client id as "client" (the distributed server's, where a client may not
    answer); otherwise the results are every client's, in id order.
    """
    results = per_client[split]
    total = np.array([r[f"{split}_total"] for r in results], dtype=np.float64)
    correct = np.array([r[f"{split}_correct"] for r in results], dtype=np.float64)
    loss = np.array([r[f"{split}_loss_sum"] for r in results], dtype=np.float64)
    return {
        "client": [int(r.get("client", i)) for i, r in enumerate(results)],
        f"{split}_acc": (correct / total).tolist(),
        f"{split}_loss": (loss / total).tolist(),
        f"{split}_total": total.astype(np.int64).tolist(),
    }
