"""What a run leaves behind: its folder, config, metrics, log, summary, learning curve and client accuracies."""
from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedplug.config import ConfigNode, dump_config
from fedplug.errors import UserError

logger = logging.getLogger("fedplug")


def make_run_dir(cfg: ConfigNode, label: str) -> Path:
    """A new folder `<outdir>/<expname>_<time>` (suffixed if taken), holding the resolved config."""
    name = cfg.expname or f"{label}_{cfg.model.type}_on_{cfg.data.type}"
    base = Path(cfg.outdir) / f"{name}_{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir, n = base, 1
    while run_dir.exists():
        run_dir, n = Path(f"{base}_{n}"), n + 1
    try:
        run_dir.mkdir(parents=True)
        (run_dir / "config.yaml").write_text(dump_config(cfg))
    except OSError as err:
        raise UserError(f"cannot create the run folder {run_dir} ({err.strerror}: {err.filename}); set outdir to a "
                        f"writable folder") from None
    return run_dir


def close_logging() -> None:
    """Detach and close the log's handlers (run.log included)."""
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()


def setup_logging(run_dir: Path) -> None:
    """INFO and above to `run.log` and to stderr (stdout is kept for the final JSON line)."""
    logger.setLevel(logging.INFO)
    close_logging()
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


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def learning_curve_figure(records: list[dict[str, Any]], title: str, best_round: int | None):
    """The learning curve as a matplotlib Figure: weighted accuracy (val, test) and loss (train, val,
    test) against the round, the best round marked. Points that are NaN or infinite (a diverged run)
    cannot be drawn: a red note over the panel names the curves and rounds, and red crosses on the
    panel's floor mark those rounds (a curve would otherwise just end, or not show at all)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    rounds = [r["round"] for r in records]
    fig = Figure(figsize=(10, 4))
    ax_acc, ax_loss = fig.subplots(1, 2, sharex=True)
    curves = [(ax_acc, "val", "val", [100 * r["val_acc"] for r in records], "--"),
              (ax_acc, "test", "test", [100 * r["test_acc"] for r in records], "-")]
    if any("train_loss" in r for r in records):
        curves.append((ax_loss, "train (sampled clients)", "train", [r.get("train_loss", math.nan) for r in records],
                       ":"))
    curves += [(ax_loss, "val", "val", [r["val_loss"] for r in records], "--"),
               (ax_loss, "test", "test", [r["test_loss"] for r in records], "-")]
    broken: dict[Any, dict[str, list[str]]] = {ax_acc: {}, ax_loss: {}}  # axes -> what happened -> curves
    for ax, label, short, values, style in curves:
        ax.plot(rounds, values, style, marker="o", label=label)
        bad = [n for n, v in zip(rounds, values) if not _finite(v)]
        if bad:
            nans = sum(isinstance(v, float) and math.isnan(v) for v in values)
            kind = "NaN" if nans == len(bad) else "infinite" if nans == 0 else "NaN or infinite"
            where = f"from round {bad[0]}" if len(bad) > 1 else f"at round {bad[0]}"
            broken[ax].setdefault(f"{kind} {where}", []).append(short)
            ax.plot(bad, [0.02] * len(bad), "x", color="tab:red", transform=ax.get_xaxis_transform(), clip_on=False)
    ax_acc.set(xlabel="round", ylabel="weighted accuracy (%)")
    ax_loss.set(xlabel="round", ylabel="weighted loss")
    for ax in (ax_acc, ax_loss):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are whole numbers
        if best_round is not None:
            ax.axvline(best_round, color="grey", linewidth=1, linestyle=":", label=f"best round {best_round}")
        if broken[ax]:
            ax.set_title("\n".join(f"{', '.join(names)}: {what}" for what, names in broken[ax].items())
                         + " (not drawn: diverged?)", color="tab:red", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_learning_curve(records: list[dict[str, Any]], path: Path, title: str, best_round: int | None) -> None:
    """learning_curve.png: see learning_curve_figure."""
    save_png(learning_curve_figure(records, title, best_round), path)


def client_accuracy_figure(clients: dict[str, Any], title: str, record: dict[str, Any] | None = None,
                           best: bool = True):
    """The per-client test accuracy of one evaluation (a line of clients.jsonl) as a histogram of
    5-point bins, with the weighted and the plain-average accuracy marked (`record`: that round's
    line of metrics.jsonl)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    acc = 100 * np.asarray(clients["test_acc"], dtype=np.float64)
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.hist(acc, bins=np.linspace(0.0, 100.0, 21), color="tab:blue", edgecolor="white")
    ax.axvline(acc.mean(), color="tab:orange", linestyle="--", label=f"average {acc.mean():.2f}%")
    if record is not None and _finite(record.get("test_acc")):
        ax.axvline(100 * record["test_acc"], color="black", linestyle="-",
                   label=f"weighted {100 * record['test_acc']:.2f}%")
    ax.axvline(np.quantile(acc, 0.1), color="tab:red", linestyle=":",
               label=f"bottom decile {np.quantile(acc, 0.1):.2f}%")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlim=(0, 100), xlabel="test accuracy of a client (%)", ylabel="clients",
           title=f"{'best round' if best else 'round'} {clients['round']}: {len(acc)} clients, std {acc.std():.2f}")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_client_accuracy(clients: dict[str, Any], path: Path, title: str, record: dict[str, Any] | None = None,
                         best: bool = True) -> None:
    """client_accuracy.png: see client_accuracy_figure."""
    save_png(client_accuracy_figure(clients, title, record, best), path)


def save_png(fig, path: Path) -> None:
    """Write `fig` to `path`; a failed write (full disk) is one sentence naming the file, and no half PNG stays."""
    try:
        fig.savefig(path, dpi=100)
    except OSError as err:
        path.unlink(missing_ok=True)
        raise UserError(f"cannot write {path} ({err.strerror}); free some space (the run's other files are "
                        f"written) and plot it again from metrics.jsonl") from None


def progress(total: int, desc: str):
    """A progress bar on a terminal, tqdm's widget in a Jupyter notebook (kept when done); None
    elsewhere (the log then gets a line per evaluation)."""
    ipython = sys.modules.get("IPython")  # loaded when we run inside IPython; never imported here
    shell = getattr(ipython, "get_ipython", lambda: None)() if ipython is not None else None
    notebook = shell is not None and "IPKernelApp" in getattr(shell, "config", {})
    if not (notebook or sys.stderr.isatty()):
        return None
    from tqdm.auto import tqdm  # the notebook widget in a Jupyter kernel, the text bar elsewhere

    return tqdm(total=total, desc=desc, unit="round", file=sys.stderr, leave=notebook)
