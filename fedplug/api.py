"""The Python API: run a federation from a script or a notebook (docs/python-api.md).

    import fedplug

    result = fedplug.run("fedavg_lr_on_synthetic", {"federate.total_round_num": 20})
    result.test_acc, result.best_round, result.run_dir, result.metrics

The same run as `fedplug --cfg ...` (same folder, files and numbers), without the command line:
nothing parses sys.argv or exits; a mistake raises a `fedplug.errors.UserError` (a `ConfigError`
for the config). This module imports nothing heavy: the run's modules load when a run starts.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedplug.errors import ConfigError, UserError

if TYPE_CHECKING:
    from fedplug.config import ConfigNode

__all__ = ["RunResult", "run"]


@dataclass(frozen=True)
class RunResult:
    """What a run gives back: its final line's figures (at the best round), its folder and its records.

    `best_round`: the round of the best weighted val loss (None if never evaluated); `test_acc`,
    `val_acc` (weighted fractions), `val_loss`, `test_loss`, `test_acc_avg`: at that round;
    `rounds_run`; `early_stopped`; `method` and `data` (labels); `run_dir`: the run folder;
    `seconds`: the run's time; `metrics`: the records of `metrics.jsonl`, one dict per evaluation;
    `summary`: `summary.json` (all of the above and `best`: every metric of the best round);
    `config`: the resolved config the run used.
    """

    best_round: int | None
    test_acc: float | None
    val_acc: float | None
    val_loss: float | None
    test_loss: float | None
    test_acc_avg: float | None
    rounds_run: int
    early_stopped: bool
    method: str
    data: str
    run_dir: Path
    seconds: float | None
    metrics: list[dict[str, Any]] = field(repr=False)
    summary: dict[str, Any] = field(repr=False)
    config: ConfigNode | None = field(default=None, repr=False, compare=False)


def run(cfg: str | Path | ConfigNode | None = None, overrides: Mapping[str, Any] | None = None, *,
        plugins: Iterable[type] | None = None, run_dir: str | Path | None = None,
        resume: bool = False) -> RunResult:
    """Run the configured federation and return its RunResult.

    cfg: a YAML file, a packaged config's name (`fedavg_lr_on_synthetic`, `cpu/fedavg_lstm_on_shakespeare`),
        a config object (`fedplug.load_config(...)`), or None (defaults; the run folder's config when resuming).
    overrides: {dotted key: value}, applied over cfg, e.g. {"federate.total_round_num": 20, "fedprox.use": True}.
    plugins: your `Plugin` subclasses, each with its config section registered (`register_section`):
        each is registered as an algorithm if it is not yet, and switched on (`<name>.use: True`)
        unless `overrides` say otherwise.
    run_dir: the run folder (new or empty; default: a new `<outdir>/<expname>_<time>/`); with
        `resume=True`, the folder of the run to continue from its checkpoint.
    """
    classes = [_available(cls) for cls in plugins or ()]
    if overrides is not None and not isinstance(overrides, Mapping):
        raise ConfigError("overrides must be a dict of dotted keys to values, "
                          f"e.g. {{'federate.total_round_num': 20}}; got {type(overrides).__name__}")
    values = {**{f"{cls.name}.use": True for cls in classes}, **(overrides or {})}
    folder = Path(run_dir) if run_dir is not None else None
    if resume:
        if folder is None:
            raise UserError("resume=True needs run_dir, the folder of the run to continue")
        if not (folder / "config.yaml").is_file():
            raise UserError(f"run_dir {folder}: not a run folder (no config.yaml in it)")
        cfg = folder / "config.yaml" if cfg is None else cfg
    elif cfg is None and not values:
        raise UserError("nothing to run: give a config (a YAML file, a packaged config name such as "
                        "'fedavg_lr_on_synthetic', or a config object) and/or overrides")
    config = _config(cfg, values)
    if folder is not None and not resume:
        _new_run_dir(folder, config)

    from fedplug.run.simulation import run as simulate

    try:
        final = simulate(config, folder, resume=resume)
    finally:
        _close_run_log()
    return _result(final, config)


def _available(cls: Any) -> type:
    """Check a user's plug-in class and register it as an algorithm unless it already is."""
    from fedplug.algorithms import registry
    from fedplug.config.schema import ROOT, Section
    from fedplug.core.plugin import Plugin

    if not (isinstance(cls, type) and issubclass(cls, Plugin)):
        raise ConfigError(f"plugins: {cls!r} is not a Plugin class (a subclass of fedplug.core.plugin.Plugin)")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"plug-in {cls.__qualname__} has no `name` (the name of its config section)")
    section = ROOT.entries.get(name)
    if not isinstance(section, Section) or "use" not in section.entries:
        raise ConfigError(
            f"plug-in {cls.__qualname__}: its config section '{name}' is not registered; register it "
            f"first: register_section({name!r}, Section(..., {{'use': Key(False, ...), ...}})) "
            "(docs/python-api.md)")
    previous = registry._registered.get(name)
    if previous is cls:
        return cls
    redefined = previous is not None and (previous.__module__, previous.__qualname__) == (cls.__module__, cls.__qualname__)
    if redefined:  # the same class defined again (a notebook cell run twice, a module reloaded): the new one
        del registry._registered[name]
    try:
        return registry.register_algorithm(cls)
    except ValueError as err:
        if redefined:
            registry._registered[name] = previous
        raise ConfigError(f"plug-in {cls.__qualname__}: {err}") from None


def _config(cfg: Any, values: dict[str, Any]) -> ConfigNode:
    """The validated config: cfg (file, packaged name, config object or None) with `values` over it."""
    from fedplug.config import ConfigNode, dotted, load_config

    if isinstance(cfg, ConfigNode):
        if not values:
            return cfg
        return load_config(None, {**dotted(cfg.to_dict()), **values})
    if cfg is not None and not isinstance(cfg, (str, Path)):
        raise ConfigError(f"cfg must be a YAML file, a packaged config's name or a config object; got {type(cfg).__name__}")
    return load_config(cfg, values or None)


def _new_run_dir(folder: Path, config: ConfigNode) -> None:
    """A run folder the caller named: new or empty, holding the resolved config (like make_run_dir)."""
    from fedplug.config import dump_config

    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise UserError(f"run_dir {folder} exists and is not an empty folder; give a new one, "
                        "or resume=True to continue the run in it")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(dump_config(config))


def _close_run_log() -> None:
    """Close the run's `run.log` (the process goes on after the run, in a notebook say)."""
    logger = logging.getLogger("fedplug")
    for handler in list(logger.handlers):
        if isinstance(handler, logging.FileHandler):
            logger.removeHandler(handler)
            handler.close()


def _result(final: dict[str, Any], config: ConfigNode) -> RunResult:
    folder = Path(final["run_dir"])
    lines = (folder / "metrics.jsonl").read_text().splitlines() if (folder / "metrics.jsonl").is_file() else []
    summary_file = folder / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else dict(final)
    return RunResult(
        best_round=final.get("best_round"),
        test_acc=final.get("test_acc"),
        val_acc=final.get("val_acc"),
        val_loss=final.get("val_loss"),
        test_loss=final.get("test_loss"),
        test_acc_avg=final.get("test_acc_avg"),
        rounds_run=final.get("rounds_run", 0),
        early_stopped=bool(final.get("early_stopped")),
        method=final.get("method", ""),
        data=final.get("data", ""),
        run_dir=folder,
        seconds=summary.get("seconds"),
        metrics=[json.loads(line) for line in lines if line.strip()],
        summary=summary,
        config=config,
    )
