"""The Context: the variables hooks share during one routine (a local update or an evaluation).

A variable may be scoped: `ctx.loss_batch = CtxVar(loss, "batch")` lives until the batch ends,
`"epoch"` until the epoch ends, `"routine"` until the routine ends. Plain assignments persist.
Scoping keeps per-batch tensors from leaking into the next batch or holding memory after a fit.
"""
from __future__ import annotations

from typing import Any, NamedTuple

SCOPES = ("batch", "epoch", "routine")
# The scopes that end with each scope: itself and the narrower ones.
_ENDING = {scope: SCOPES[: i + 1] for i, scope in enumerate(SCOPES)}


class CtxVar(NamedTuple):
    """A value tagged with the scope at whose end it is deleted."""

    value: Any
    scope: str = "routine"


class Context:
    """Attribute bag with scoped cleanup. Missing attributes raise AttributeError naming them."""

    def __init__(self, **variables: Any) -> None:
        object.__setattr__(self, "_scoped", {scope: set() for scope in SCOPES})
        self.__dict__.update(variables)

    def __setattr__(self, name: str, value: Any) -> None:
        # Runs for every assignment a hook makes, several per batch: one dict lookup per branch.
        if type(value) is CtxVar:
            names = self._scoped.get(value.scope)
            if names is None:
                raise ValueError(f"unknown context scope '{value.scope}' for '{name}'; use one of {SCOPES}")
            names.add(name)
            value = value.value
        self.__dict__[name] = value

    def __getattr__(self, name: str) -> Any:  # only called when the attribute is missing
        raise AttributeError(f"context variable '{name}' is not set (was it scoped to a batch, epoch or routine that ended?)")

    def set_scoped(self, scope: str, **variables: Any) -> None:
        """`ctx.name = CtxVar(value, scope)` for each name=value, in one call (the default hooks' per-batch writes)."""
        names = self._scoped.get(scope)
        if names is None:
            raise ValueError(f"unknown context scope '{scope}' for {', '.join(variables)}; use one of {SCOPES}")
        names.update(variables)
        self.__dict__.update(variables)

    def get(self, name: str, default: Any = None) -> Any:
        return self.__dict__.get(name, default)

    def end_scope(self, scope: str) -> None:
        """Delete every variable scoped to `scope` (and narrower scopes): work in the variables scoped, not
        in everything the Context holds."""
        ending = _ENDING.get(scope)
        if ending is None:
            raise ValueError(f"unknown context scope '{scope}'; use one of {SCOPES}")
        variables, scoped = self.__dict__, self._scoped
        for s in ending:
            names = scoped[s]
            if names:
                for name in names:
                    variables.pop(name, None)
                names.clear()
