"""Load a config: schema defaults, then a YAML file, then `KEY VALUE` overrides.

Every user mistake ends in a `ConfigError` whose message names the key and says what is wrong:
unknown keys come with the closest valid ones, wrong types with the expected type and the value.
"""
from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Iterable

import yaml

from fedplug.config.schema import ALIASES, ROOT, ConfigNode, Key, Section
from fedplug.device import from_federatedscope
from fedplug.errors import ConfigError

SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def suggest(path: str, candidates: Iterable[str]) -> str:
    """' Did you mean ...?' with the closest candidates (best first), or ''."""
    candidates = list(candidates)
    ratio = {c: difflib.SequenceMatcher(None, path, c).ratio() for c in candidates}
    leaf = path.rsplit(".", 1)[-1]
    close = [c for c in sorted(candidates, key=lambda c: -ratio[c]) if ratio[c] >= 0.6][:2]
    same_leaf = sorted((c for c in candidates if c.rsplit(".", 1)[-1] == leaf), key=lambda c: -ratio[c])[:2]
    picks = sorted(set(close + same_leaf), key=lambda c: -ratio[c])  # a right key under a wrong section
    return f" Did you mean {' or '.join(repr(c) for c in picks)}?" if picks else ""


def type_name(key: Key) -> str:
    if key.value_type is list:
        return f"list of {key.item_type.__name__}" if key.item_type else "list"
    return key.value_type.__name__


def coerce(path: str, key: Key, value: Any) -> Any:
    """Check `value` against `key` and return it in the key's type."""
    expected = key.value_type
    ok = True
    if expected is bool:
        ok = isinstance(value, bool)
    elif expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif expected is float:
        if isinstance(value, str) and SCIENTIFIC.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 (PyYAML) reads `1e-2` and `1e9` as strings
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif expected is str:
        ok = isinstance(value, str)
    elif expected is list:
        value = list(value) if isinstance(value, (list, tuple)) else value
        ok = isinstance(value, list)
        if ok and key.item_type is not None:
            items = [coerce(f"{path}[{i}]", Key(None, "", type=key.item_type), v) for i, v in enumerate(value)]
            value = items
    if not ok:
        raise ConfigError(f"config key '{path}' expects {type_name(key)}, got {value!r} ({type(value).__name__})")
    if key.choices is not None and value not in key.choices:
        options = ", ".join(repr(c) for c in key.choices)
        raise ConfigError(f"config key '{path}' must be one of {options}; got {value!r}.{suggest(str(value), map(str, key.choices))}")
    if key.check is not None and not key.check(value):
        raise ConfigError(f"config key '{path}' must be {key.check_msg}; got {value!r}")
    return value


def _flatten(tree: dict[str, Any], section: Section, prefix: str, source: str) -> dict[str, Any]:
    """Dotted key -> raw value for a nested YAML mapping, checked against the schema's shape."""
    flat: dict[str, Any] = {}
    all_keys = [p for p, _ in ROOT.walk()]
    for name, value in tree.items():
        path = f"{prefix}{name}"
        entry = section.entries.get(str(name))
        if entry is None and path in ALIASES:
            flat[ALIASES[path]] = value
            continue
        if entry is None and isinstance(value, dict) and any(a.startswith(path + ".") for a in ALIASES):
            flat.update(_flatten(value, Section(""), path + ".", source))  # aliases below a section we lack
            continue
        if entry is None:
            raise ConfigError(f"unknown config key '{path}' in {source}.{suggest(path, all_keys)}")
        if isinstance(entry, Section):
            if not isinstance(value, dict):
                raise ConfigError(f"'{path}' in {source} is a section; write its keys below it, e.g. {path}.{next(iter(entry.entries))}")
            flat.update(_flatten(value, entry, path + ".", source))
        else:
            flat[path] = value
    return flat


def config_file(given: str | Path) -> Path:
    """The file `given` names: an existing file, else a packaged config of that name
    (`fedavg_lr_on_synthetic`, `cpu/fedavg_lstm_on_shakespeare.yaml`: fedplug/config/packaged.py)."""
    path = Path(given)
    if path.is_file():
        return path
    if path.is_dir():
        hint = f" (a run folder: `--resume {path}` continues it)" if (path / "config.yaml").is_file() else ""
        raise ConfigError(f"--cfg {path} is a folder, not a config file; give a YAML file{hint}")
    from fedplug.config.packaged import list_configs, normalize, resolve

    found = resolve(given)
    if found is not None:
        return found
    hint = suggest(normalize(str(given)), list_configs())
    raise ConfigError(f"config file not found: {path} (neither a file nor a packaged config).{hint}"
                      " `fedplug configs list` names the packaged configs.")


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys without a word: here a duplicate is an error naming it and its line."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(f"duplicate key '{key}' at line {line} of {self.name} (first at line {seen[key]}); "
                                  f"keep one of the two")
            seen[key] = line
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = config_file(path)
    try:
        text = path.read_text()
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path} is not a YAML text file (not UTF-8: byte {err.start} cannot be decoded); "
                          f"give --cfg a .yaml config") from None
    except OSError as err:
        raise ConfigError(f"cannot read the config file {path}: {err.strerror}") from None
    loader = _UniqueKeyLoader(text)
    loader.name = str(path)
    try:
        tree = loader.get_single_data()
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"cannot parse YAML in {path}{where}: {problem}") from None
    finally:
        loader.dispose()
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path} must hold a YAML mapping of config keys, not {type(tree).__name__}")
    return tree


def parse_overrides(args: list[str]) -> dict[str, str]:
    """`KEY VALUE` pairs and `KEY=VALUE` words, in order, as raw strings."""
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        word = args[i]
        if "=" in word:
            name, raw = word.split("=", 1)
            i += 1
        elif i + 1 < len(args):
            name, raw = word, args[i + 1]
            i += 2
        else:
            raise ConfigError(f"override '{word}' has no value; write KEY VALUE or KEY=VALUE")
        out[name] = raw
    return out


def _parse_override_value(path: str, key: Key, raw: str) -> Any:
    if key.value_type is str:
        return raw  # keep strings literal: `expname 007` stays "007"
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        raise ConfigError(f"config key '{path}' expects {type_name(key)}, got {raw!r}") from None
    if key.value_type is list and not isinstance(value, list):
        value = [value]  # `plugins my_algo.py` means a list of one
    return value


def build_config(values: dict[str, Any]) -> ConfigNode:
    """A frozen config tree from validated dotted values (defaults fill the rest)."""

    def node(section: Section, prefix: str) -> ConfigNode:
        out: dict[str, Any] = {}
        for name, entry in section.entries.items():
            path = f"{prefix}{name}"
            out[name] = node(entry, path + ".") if isinstance(entry, Section) else values.get(path, entry.default)
        return ConfigNode(out, prefix.rstrip("."))

    return node(ROOT, "")


def load_config(cfg_file: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None) -> ConfigNode:
    """Defaults <- YAML file <- overrides, validated. Overrides as CLI words or a {dotted: value} dict."""
    import fedplug.config.sections  # noqa: F401  (registers the core sections)
    from fedplug.algorithms.registry import load_external_plugins

    tree = read_yaml(cfg_file) if cfg_file is not None else {}
    words = parse_overrides(overrides) if overrides and not isinstance(overrides, dict) else {}
    overrides = dict(overrides) if isinstance(overrides, dict) else overrides
    use_gpu = _pop_use_gpu(tree, words, overrides)
    sections = set(tree) | {k.split(".")[0] for k in (overrides if isinstance(overrides, dict) else words)}
    modules = _override_list(words.get("plugins"))
    for given in (tree.get("plugins"), overrides.get("plugins") if isinstance(overrides, dict) else None):
        if given is not None:
            modules += coerce("plugins", ROOT.entries["plugins"], given)
    load_external_plugins(modules, sections)  # user plug-ins register their sections before validation

    values: dict[str, Any] = {}
    if cfg_file is not None:
        values.update(_flatten(tree, ROOT, "", str(cfg_file)))
    if isinstance(overrides, dict):
        values.update(_flatten_override_dict(overrides))
    elif words:
        all_keys = [p for p, _ in ROOT.walk()]
        for path, raw in words.items():
            path = ALIASES.get(path, path)
            key = ROOT.find(path)
            if not isinstance(key, Key):
                if isinstance(key, Section):
                    raise ConfigError(f"'{path}' is a section, not a key.{suggest(path, all_keys)}")
                raise ConfigError(f"unknown config key '{path}' in the overrides.{suggest(path, all_keys)}")
            values[path] = _parse_override_value(path, key, raw)
    if use_gpu is not None or "device" in values:
        values["device"] = from_federatedscope(values.get("device", "auto"), use_gpu)
    checked = {path: coerce(path, ROOT.find(path), value) for path, value in values.items()}  # type: ignore[arg-type]
    _switch_on_method(checked)
    return build_config(checked)


def _pop_use_gpu(*sources: Any) -> Any:
    """FederatedScope's top-level `use_gpu` (no key of ours: it becomes `device`), the last one given."""
    found = None
    for source in sources:
        if isinstance(source, dict) and "use_gpu" in source:
            found = source.pop("use_gpu")
    return found


def _switch_on_method(values: dict[str, Any]) -> None:
    """`federate.method X` means `X.use True`: written out, so config.yaml says so; an explicit `X.use False` is
    a contradiction, refused rather than silently overruled."""
    from fedplug.algorithms.registry import method_names

    method = values.get("federate.method", "")
    name = method_names().get(method.lower())
    if name is None:
        return  # FedAvg, or an unknown name (refused with the known ones when the plan is built)
    if values.get(f"{name}.use") is False:
        raise ConfigError(f"federate.method {method} switches {name} on, but {name}.use is False: "
                          f"drop one of the two")
    values[f"{name}.use"] = True


def _override_list(raw: str | None) -> list[str]:
    """The `plugins` override, read before validation (user plug-ins bring their own sections)."""
    if raw is None:
        return []
    return coerce("plugins", ROOT.entries["plugins"], _parse_override_value("plugins", ROOT.entries["plugins"], raw))


def _flatten_override_dict(overrides: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for path, value in overrides.items():
        node = nested
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return _flatten(nested, ROOT, "", "overrides")


def dotted(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config tree as {dotted key: value}: {"train": {"optimizer": {"lr": 0.1}}} -> {"train.optimizer.lr": 0.1}."""
    flat: dict[str, Any] = {}
    for name, value in tree.items():
        if isinstance(value, dict):
            flat.update(dotted(value, f"{prefix}{name}."))
        else:
            flat[f"{prefix}{name}"] = value
    return flat


def dump_config(cfg: ConfigNode) -> str:
    """The resolved config as YAML that `--cfg` reads back to an equal config, except for a secret:
    `distribute.token` is written empty (a reader then takes it from `distribute.token_env`)."""
    tree = cfg.to_dict()
    if tree.get("distribute", {}).get("token"):
        tree["distribute"]["token"] = ""
    return yaml.safe_dump(tree, sort_keys=False)
