"""Algorithms by name: the built-ins (imported only when switched on), the user's (a decorator),
and installed packages' (the `fedplug.algorithms` entry point group); the robust aggregation rule
named by `aggregator.rule` (imported only when chosen).

    @register_algorithm
    class MyAlgo(Plugin):
        name = "myalgo"       # config section with at least a `use` key
        ...
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import traceback
from importlib.metadata import entry_points
from pathlib import Path

import fedplug.algorithms.schemas  # noqa: F401  (built-in config sections; no algorithm code)
from fedplug.attacks.schemas import ATTACKS  # the attack section too; no attack code
from fedplug.config import ConfigNode
from fedplug.config.load import suggest
from fedplug.config.schema import ROOT
from fedplug.core.plugin import Plugin
from fedplug.errors import ConfigError

# name -> (FederatedScope method name, implementation), in plan order
BUILTIN = {
    "dp": ("DP-FedAvg", "fedplug.algorithms.dp:DPFedAvg"),  # first: its noise goes on the plain aggregate
    "fedbn": ("FedBN", "fedplug.algorithms.fedbn:FedBN"),
    "fedprox": ("FedProx", "fedplug.algorithms.fedprox:FedProx"),
    "scaffold": ("SCAFFOLD", "fedplug.algorithms.scaffold:Scaffold"),
    "fednova": ("FedNova", "fedplug.algorithms.fednova:FedNova"),
    "feddyn": ("FedDyn", "fedplug.algorithms.feddyn:FedDyn"),
    "pfedme": ("pFedMe", "fedplug.algorithms.pfedme:PFedMe"),
    "ditto": ("Ditto", "fedplug.algorithms.ditto:Ditto"),
    "fedem": ("FedEM", "fedplug.algorithms.fedem:FedEM"),
    "fedopt": ("FedOpt", "fedplug.algorithms.fedopt:FedOpt"),
}
# aggregator.rule -> implementation: the robust aggregation rules (role "aggregator"), imported only when chosen
RULES = {
    "krum": "fedplug.aggregators.krum:Krum",
    "multikrum": "fedplug.aggregators.krum:Krum",
    "median": "fedplug.aggregators.median:Median",
    "trimmedmean": "fedplug.aggregators.trimmed_mean:TrimmedMean",
    "bulyan": "fedplug.aggregators.bulyan:Bulyan",
    "normbounding": "fedplug.aggregators.norm_bounding:NormBounding",
    "centeredclip": "fedplug.aggregators.centered_clipping:CenteredClipping",
}
ENTRY_POINT_GROUP = "fedplug.algorithms"
_registered: dict[str, type[Plugin]] = {}
_loaded_files: set[Path] = set()  # a user file is executed once per process, however many runs


def register_algorithm(cls: type[Plugin]) -> type[Plugin]:
    """Make `cls` available by `cls.name`; its config section must be registered first."""
    section = ROOT.entries.get(cls.name)
    if section is None or "use" not in getattr(section, "entries", {}):
        raise ValueError(f"register the config section '{cls.name}' (with a `use` key) before the algorithm")
    if cls.name in BUILTIN or _registered.get(cls.name, cls) is not cls:
        raise ValueError(f"an algorithm named '{cls.name}' is already registered")
    method = (cls.method or cls.name).lower()
    taken = {m.lower(): n for n, (m, _) in BUILTIN.items()}
    taken.update({(c.method or c.name).lower(): n for n, c in _registered.items() if c is not cls})
    if method in taken or method == "fedavg":
        raise ValueError(f"the federate.method name '{cls.method or cls.name}' of '{cls.name}' is already taken"
                         f"{f' by {taken[method]}' if method in taken else ''}: choose another `method`")
    _registered[cls.name] = cls
    return cls


def load_external_plugins(modules: list[str], sections: set[str]) -> None:
    """Import user plug-ins named in `plugins`, and installed ones whose section the config uses."""
    for module in modules:
        if module.endswith(".py"):
            path = Path(module).resolve()
            if not path.is_file():
                raise ConfigError(f"plug-in file not found: {module}")
            if path in _loaded_files:
                continue
            _exec_plugin_file(module, path)
            _loaded_files.add(path)
        else:
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as err:
                raise ConfigError(f"cannot import plug-in module '{module}': {err}") from None
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.name in sections and entry.name not in ROOT.entries:
            entry.load()


def _exec_plugin_file(given: str, path: Path) -> None:
    """Run a user's plug-in file as module `path.stem`; any failure is one ConfigError naming the file and line."""
    if path.stem in sys.modules and getattr(sys.modules[path.stem], "__file__", None) != str(path):
        raise ConfigError(f"plug-in file {given}: a module named '{path.stem}' is already loaded (another plug-in "
                          f"file of that name, or a Python module); rename the file or list only one copy")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = loaded
    try:
        spec.loader.exec_module(loaded)
    except Exception as err:  # noqa: BLE001  (the user's code: whatever it raises is reported, not a traceback)
        del sys.modules[path.stem]  # not half-loaded: a corrected file is read again
        if isinstance(err, SyntaxError):
            where, what = f"line {err.lineno}", f"syntax error: {err.msg}"
        else:
            lines = [f.lineno for f in traceback.extract_tb(err.__traceback__) if Path(f.filename) == path]
            where, what = f"line {lines[-1]}" if lines else "import", f"{type(err).__name__}: {err}"
        raise ConfigError(f"plug-in file {given}, {where}: {what}; fix it or leave it out of `plugins`") from None


def _class(name: str) -> type[Plugin]:
    if name in _registered:
        return _registered[name]
    module, cls = BUILTIN[name][1].split(":")
    return getattr(importlib.import_module(module), cls)


def method_names() -> dict[str, str]:
    """federate.method value (lower case) -> algorithm name."""
    names = {method.lower(): name for name, (method, _) in BUILTIN.items()}
    names.update({(cls.method or cls.name).lower(): name for name, cls in _registered.items()})
    return names


def active_algorithms(cfg: ConfigNode) -> list[Plugin]:
    """The switched-on algorithms, instantiated, built-ins in plan order then the user's by name."""
    method = cfg.federate.method
    methods = method_names()
    if method.lower() != "fedavg" and method.lower() not in methods:
        known = ["FedAvg"] + [m for m, _ in BUILTIN.values()] + [c.method or c.name for c in _registered.values()]
        raise ConfigError(f"federate.method '{method}' is not a known algorithm ({', '.join(known)})."
                          f"{suggest(method, known)}")
    on = {methods[method.lower()]} if method.lower() in methods else set()
    on |= {name for name in list(BUILTIN) + sorted(_registered) if cfg.get(f"{name}.use")}
    if cfg.personalization.local_param and "fedbn" not in on:
        on.add("fedbn")  # local parameters are FedBN's mechanism, also when named without fedbn.use
    plugins = [_class(name)(cfg) for name in list(BUILTIN) + sorted(_registered) if name in on]
    if cfg.aggregator.rule in RULES:  # a robust rule: the plug-in holding the "aggregator" role, after the others
        module, cls = RULES[cfg.aggregator.rule].split(":")
        plugins.append(getattr(importlib.import_module(module), cls)(cfg))
    if cfg.attack.type != "none":  # last: an attack changes what the algorithms' clients would send
        module, cls = ATTACKS[cfg.attack.type].split(":")
        plugins.append(getattr(importlib.import_module(module), cls)(cfg))
    return plugins
