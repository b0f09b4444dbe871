"""What a run leaves behind: its folder, config, metrics, log, summary and learning curve."""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from fedplug.config import ConfigNode, dump_config

logger = logging.getLogger("fedplug")


def make_run_dir(cfg: ConfigNode, label: str) -> Path:
    """A new folder `<outdir>/<expname>_<time>` (suffixed if taken), holding the resolved config."""
    name = cfg.expname or f"{label}_{cfg.model.type}_on_{cfg.data.type}"
    base = Path(cfg.outdir) / f"{name}_{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir, n = base, 1
    while run_dir.exists():
        run_dir, n = Path(f"{base}_{n}"), n + 1
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    return run_dir


def setup_logging(run_dir: Path) -> None:
    """INFO and above to `run.log` and to stderr (stdout is kept for the final JSON line)."""
    logger.setLevel(logging.INFO)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    file_handler = logging.FileHandler(run_dir / "run.log")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(file_handler)
    logger.addHandler(stream)
    logger.propagate = False


class MetricsLog:
    """`metrics.jsonl`: one JSON object per evaluation, flushed as it is written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: list[dict[str, Any]] = []
        self._file = path.open("a")

    def write(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def plot_learning_curve(records: list[dict[str, Any]], path: Path, title: str, best_round: int | None) -> None:
    """Accuracy and loss (weighted over all clients) against the round, val and test; the best round marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r["round"] for r in records]
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
    for split, style in (("val", "--"), ("test", "-")):
        ax_acc.plot(rounds, [100 * r[f"{split}_acc"] for r in records], style, marker="o", label=split)
        ax_loss.plot(rounds, [r[f"{split}_loss"] for r in records], style, marker="o", label=split)
    ax_acc.set(xlabel="round", ylabel="weighted accuracy (%)")
    ax_loss.set(xlabel="round", ylabel="weighted loss")
    for ax in (ax_acc, ax_loss):
        if best_round is not None:
            ax.axvline(best_round, color="grey", linewidth=1, linestyle=":", label=f"best round {best_round}")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def progress(total: int, desc: str):
    """A progress bar on a terminal; None elsewhere (the log then gets a line per evaluation)."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="round", file=sys.stderr, leave=False)
