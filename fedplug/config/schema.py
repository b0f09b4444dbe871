"""The typed config tree: keys with defaults, types and one-line descriptions.

Every component and plug-in contributes its own section with `register_section`. A resolved
config is a tree of frozen `ConfigNode`s: `cfg.train.optimizer.lr`. Nothing writes into it after
validation, so what a run was given is what the run folder records.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator


@dataclass(frozen=True)
class Key:
    """One config key. The type is taken from the default unless given."""

    default: Any
    help: str
    type: type | None = None
    item_type: type | None = None  # element type of list keys
    choices: tuple[Any, ...] | None = None
    check: Callable[[Any], bool] | None = None
    check_msg: str = ""  # what `check` requires, e.g. "a value in (0, 1]"

    @property
    def value_type(self) -> type:
        return self.type if self.type is not None else type(self.default)


@dataclass
class Section:
    """An ordered group of keys and sub-sections."""

    help: str
    entries: dict[str, Key | Section] = field(default_factory=dict)

    def walk(self, prefix: str = "") -> Iterator[tuple[str, Key]]:
        """Yield (dotted path, key) for every key below this section."""
        for name, entry in self.entries.items():
            path = f"{prefix}{name}"
            if isinstance(entry, Section):
                yield from entry.walk(path + ".")
            else:
                yield path, entry

    def find(self, dotted: str) -> Key | Section | None:
        node: Key | Section = self
        for part in dotted.split("."):
            if not isinstance(node, Section) or part not in node.entries:
                return None
            node = node.entries[part]
        return node


ROOT = Section("fedplug configuration")
ALIASES: dict[str, str] = {}  # FederatedScope spelling -> our key, e.g. model.model_num_per_trainer


def register_section(name: str, section: Section) -> None:
    """Add a top-level section (a component's or plug-in's own config)."""
    if name in ROOT.entries:
        raise ValueError(f"config section '{name}' is already registered")
    ROOT.entries[name] = section


def register_alias(alias: str, target: str) -> None:
    """Accept `alias` as another spelling of the key `target`."""
    ALIASES[alias] = target


def register_key(name: str, key: Key) -> None:
    """Add a top-level key such as `seed`."""
    if name in ROOT.entries:
        raise ValueError(f"config key '{name}' is already registered")
    ROOT.entries[name] = key


class ConfigNode:
    """A frozen view of one config section; attributes are keys or sub-sections."""

    __slots__ = ("_values", "_path", "__dict__")

    def __init__(self, values: dict[str, Any], path: str = "") -> None:
        object.__setattr__(self, "_values", values)
        object.__setattr__(self, "_path", path)
        # Keys as instance attributes: hooks read the config every batch, and a hit in the instance dict
        # costs no __getattr__ call. A key named like a method is shadowed by it, as before.
        self.__dict__.update({k: v for k, v in values.items() if not hasattr(ConfigNode, k)})

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            where = self._path or "the config"
            raise AttributeError(f"{where} has no key '{name}'") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("the config is frozen after validation; plug-ins may not write to it")

    def __contains__(self, name: str) -> bool:
        return name in self._values

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ConfigNode) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"ConfigNode({self.to_dict()!r})"

    def get(self, dotted: str) -> Any:
        node: Any = self
        for part in dotted.split("."):
            node = getattr(node, part)
        return node

    def to_dict(self) -> dict[str, Any]:
        return {k: v.to_dict() if isinstance(v, ConfigNode) else v for k, v in self._values.items()}
