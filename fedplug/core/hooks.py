"""Named hooks per trigger point, placed relative to other named hooks.

A `HookTable` holds the ordered hooks of one routine (train or eval). Hooks are found by name,
never by list position, so a plug-in can say "before `_hook_on_batch_backward`" and stay right when
other plug-ins add hooks of their own.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

from fedplug.core.context import Context

TRIGGERS = (
    "on_fit_start",
    "on_epoch_start",
    "on_batch_start",
    "on_batch_forward",
    "on_batch_backward",
    "on_batch_end",
    "on_epoch_end",
    "on_fit_end",
)

HookFn = Callable[[Context], None]


@dataclass(frozen=True)
class Hook:
    name: str
    fn: HookFn
    owner: str = "core"  # the plug-in (or "user") that added it, for `fedplug plan`


class HookTable:
    """The ordered hooks of one routine, by trigger point."""

    def __init__(self) -> None:
        self._hooks: dict[str, list[Hook]] = {t: [] for t in TRIGGERS}
        self._functions: tuple[tuple[HookFn, ...], ...] | None = None  # built on demand, dropped by every change

    @staticmethod
    def _check_trigger(trigger: str) -> None:
        if trigger not in TRIGGERS:
            raise ValueError(f"unknown trigger point '{trigger}'; the trigger points are {', '.join(TRIGGERS)}")

    def _index(self, trigger: str, name: str) -> int:
        for i, hook in enumerate(self._hooks[trigger]):
            if hook.name == name:
                return i
        present = ", ".join(h.name for h in self._hooks[trigger]) or "none"
        raise KeyError(f"no hook named '{name}' at {trigger} (present: {present})")

    def add(self, trigger: str, fn: HookFn, name: str | None = None, *, before: str | None = None,
            after: str | None = None, owner: str = "user") -> None:
        """Add a hook at the end, or immediately before/after the hook named `before`/`after`."""
        self._check_trigger(trigger)
        name = name or fn.__name__
        if before is not None and after is not None:
            raise ValueError(f"hook '{name}': give `before` or `after`, not both")
        if any(h.name == name for h in self._hooks[trigger]):
            raise ValueError(f"a hook named '{name}' is already at {trigger}; replace it or choose another name")
        hooks = self._hooks[trigger]
        if before is not None:
            position = self._index(trigger, before)
        elif after is not None:
            position = self._index(trigger, after) + 1
        else:
            position = len(hooks)
        hooks.insert(position, Hook(name, fn, owner))
        self._functions = None

    def insert_at(self, trigger: str, position: int, fn: HookFn, name: str | None = None, owner: str = "user") -> None:
        """Insert at a list position (seed compatibility only: prefer `add` with a named anchor)."""
        self._check_trigger(trigger)
        hooks = self._hooks[trigger]
        position = len(hooks) if position == -1 else position
        if not 0 <= position <= len(hooks):
            raise IndexError(f"insert position {position} is outside 0..{len(hooks)} at {trigger}")
        hooks.insert(position, Hook(name or fn.__name__, fn, owner))
        self._functions = None

    def replace(self, trigger: str, name: str, fn: HookFn, new_name: str | None = None, owner: str = "user") -> None:
        """Put `fn` where the hook `name` is."""
        self._check_trigger(trigger)
        i = self._index(trigger, name)
        self._hooks[trigger][i] = Hook(new_name or fn.__name__, fn, owner)
        self._functions = None

    def remove(self, trigger: str, name: str | None = None) -> None:
        """Remove the hook `name`, or every hook at `trigger` when `name` is None."""
        self._check_trigger(trigger)
        if name is None:
            self._hooks[trigger].clear()
        else:
            del self._hooks[trigger][self._index(trigger, name)]
        self._functions = None

    def names(self, trigger: str) -> list[str]:
        return [h.name for h in self._hooks[trigger]]

    def functions(self) -> tuple[tuple[HookFn, ...], ...]:
        """The hook functions per trigger point, in TRIGGERS order (what the engine loops over); built once
        per change of the table, not once per routine."""
        if self._functions is None:
            self._functions = tuple(tuple(h.fn for h in self._hooks[t]) for t in TRIGGERS)
        return self._functions

    def __iter__(self) -> Iterator[tuple[str, list[Hook]]]:
        for trigger in TRIGGERS:
            yield trigger, list(self._hooks[trigger])

    def copy(self) -> HookTable:
        table = HookTable()
        table._hooks = {t: list(h) for t, h in self._hooks.items()}
        return table
