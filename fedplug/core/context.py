"""The Context: the variables hooks share during one routine (a local update or an evaluation).

A variable may be scoped: `ctx.loss_batch = CtxVar(loss, "batch")` lives until the batch ends,
`"epoch"` until the epoch ends, `"routine"` until the routine ends. Plain assignments persist.
Scoping keeps per-batch tensors from leaking into the next batch or holding memory after a fit.
"""
from __future__ import annotations

from typing import Any, NamedTuple

SCOPES = ("batch", "epoch", "routine")


class CtxVar(NamedTuple):
    """A value tagged with the scope at whose end it is deleted."""

    value: Any
    scope: str = "routine"


class Context:
    """Attribute bag with scoped cleanup. Missing attributes raise AttributeError naming them."""

    def __init__(self, **variables: Any) -> None:
        object.__setattr__(self, "_scoped", {scope: set() for scope in SCOPES})
        for name, value in variables.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        if type(value) is CtxVar:
            scope = value.scope
            if scope not in self._scoped:
                raise ValueError(f"unknown context scope '{scope}' for '{name}'; use one of {SCOPES}")
            self._scoped[scope].add(name)
            value = value.value
        object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:  # only called when the attribute is missing
        raise AttributeError(f"context variable '{name}' is not set (was it scoped to a batch, epoch or routine that ended?)")

    def get(self, name: str, default: Any = None) -> Any:
        return self.__dict__.get(name, default)

    def end_scope(self, scope: str) -> None:
        """Delete every variable scoped to `scope` (and narrower scopes)."""
        for s in SCOPES[: SCOPES.index(scope) + 1]:
            names = self._scoped[s]
            for name in names:
                self.__dict__.pop(name, None)
            names.clear()
