"""Composition: the active plug-ins become one immutable plan, once, at start-up.

The plan holds the ordered hooks of each routine, the gradient point's transforms, the server
pipeline (weights -> aggregate -> receive -> transforms in plan order -> update) and who owns
what. Impossible combinations are refused here with a sentence naming both parties: two plug-ins
in one exclusive role, two replacing the same hook, an ordering cycle or a missing anchor, two
plug-ins writing the same context field at one trigger point with no order between them, a
gradient transform next to a plug-in that replaces the backward step, a weighting plug-in
next to a configured `aggregator.weighting`, and any pair a plug-in `refuses` (with its sentence).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Mapping

from fedplug.core.default_hooks import CORE_WRITES, default_eval_hooks, default_train_hooks
from fedplug.core.hooks import HookTable
from fedplug.core.messages import Messages, RoundFacts, Upload
from fedplug.core.plugin import HookSpec, Params, Plugin, overrides
from fedplug.errors import UserError

WEIGHTINGS = {  # aggregator.weighting -> (a client's weight from its upload, the plan's words)
    "samples": (lambda u: float(u.samples), "samples processed in the local update"),
    "uniform": (lambda u: 1.0, "uniform (1 per client)"),
    "steps": (lambda u: float(u.steps), "local steps taken"),
}
BACKWARD_HOOK = "_hook_on_batch_backward"

ROLE_REASONS = {
    "personalization": "each keeps its own per-client model and decides which model a client evaluates",
    "server_update": "each decides how the global model moves from the aggregate",
    "model": "each replaces the model the clients train",
    "aggregator": "each decides how the uploads of a round combine",
    "weighting": "each sets the clients' aggregation weights",
}
ROLE_METHODS = {"server_update": "server_update", "aggregator": "aggregate", "weighting": "client_weight"}


class CompositionError(UserError):
    """An impossible combination of plug-ins."""


@dataclass(frozen=True)
class Plan:
    plugins: tuple[Plugin, ...]
    tables: Mapping[str, HookTable]
    server_updater: Plugin | None
    aggregator: Plugin | None = None
    weigher: Plugin | None = None
    weighting: str = "samples"  # aggregator.weighting, used when no plug-in sets the weights

    def hook_tables(self) -> dict[str, HookTable]:
        """Fresh copies for a Trainer (the plan itself never changes)."""
        return {routine: table.copy() for routine, table in self.tables.items()}

    @property
    def label(self) -> str:
        """e.g. "FedAvg", "FedProx+Ditto+FedOpt"."""
        return "+".join(p.method or p.name for p in self.plugins) or "FedAvg"

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.plugins]

    def with_method(self, method: str) -> tuple[Plugin, ...]:
        """The plug-ins that define `method` themselves, in plan order."""
        return tuple(p for p in self.plugins if overrides(p, method))

    def messages(self, shared: Params) -> dict[str, Messages]:
        """Each plug-in's extra tensors, for this layout of the shared parameters (those that declare any)."""
        return {p.name: p.messages(shared) for p in self.with_method("messages")}

    def broadcast(self, facts: RoundFacts, messages: dict[str, Messages]) -> dict[str, Params]:
        """The round's `down` tensors of every plug-in, checked against what each declared."""
        out = {}
        senders = [p for p in self.plugins if overrides(p, "broadcast") or (p.name in messages and messages[p.name].down)]
        for plugin in senders:
            tensors = plugin.broadcast(facts)
            declared = messages[plugin.name].down if plugin.name in messages else {}
            if set(tensors) != set(declared):
                raise UserError(f"{plugin.name}.broadcast() sent {sorted(tensors)[:3]}, but its messages() declares "
                                f"{sorted(declared)[:3]} going down")
            out[plugin.name] = tensors
        return out

    def weight(self, upload: Upload) -> float:
        """A client's aggregation weight: the weighting plug-in's, else `aggregator.weighting`."""
        weight = (self.weigher.client_weight(upload) if self.weigher else WEIGHTINGS[self.weighting][0](upload))
        if not (weight > 0 and weight < float("inf")):
            who = self.weigher.name if self.weigher else f"aggregator.weighting {self.weighting}"
            raise UserError(f"{who} gave client {upload.client} the aggregation weight {weight}: weights must be "
                            "positive and finite")
        return float(weight)

    def describe_weighting(self) -> str:
        if self.weigher:
            return f"set by {self.weigher.name}"
        return f"{WEIGHTINGS[self.weighting][1]} (aggregator.weighting {self.weighting})"

    def report(self, facts: RoundFacts) -> dict[str, float]:
        """Every plug-in's figures for the round's metrics record."""
        return {k: v for p in self.with_method("report") for k, v in p.report(facts).items()}

    def update_global(self, old: Params, aggregate: Params, facts: RoundFacts) -> Params:
        """The server pipeline after aggregation: every plug-in's `receive`, each plug-in's transform in
        plan order, then the update."""
        for plugin in self.with_method("receive"):
            plugin.receive(facts)
        for plugin in self.plugins:
            aggregate = plugin.transform_aggregate(old, aggregate, facts)
        return self.server_updater.server_update(old, aggregate, facts) if self.server_updater else aggregate


def _check_roles(plugins: list[Plugin]) -> None:
    holder: dict[str, Plugin] = {}
    for plugin in plugins:
        for role in plugin.roles:
            if role in holder:
                other = holder[role]
                why = ROLE_REASONS.get(role, "the role is exclusive")
                raise CompositionError(f"{other.name} and {plugin.name} cannot be combined: both fill the "
                                       f"exclusive role '{role}' ({why}); switch one of them off")
            holder[role] = plugin
    for role, plugin in holder.items():
        method = ROLE_METHODS.get(role)
        if method and not overrides(plugin, method):
            raise CompositionError(f"{plugin.name} fills the role '{role}' but does not define {method}()")


def _check_pairs(plugins: list[Plugin]) -> None:
    for plugin in plugins:
        for other in plugins:
            why = plugin.refuses(other) if other is not plugin else ""
            if why:
                raise CompositionError(f"{plugin.name} and {other.name} cannot be combined: {why}")


def _place(table: HookTable, routine: str, specs: list[tuple[Plugin, HookSpec]]) -> None:
    """Insert hooks whose anchors are present until none is left; what cannot be placed is a cycle."""
    pending = list(specs)
    while pending:
        progress = False
        for plugin, spec in list(pending):
            present = set(table.names(spec.trigger))
            if not set(spec.before + spec.after) <= present:
                continue
            names = table.names(spec.trigger)
            low = max((names.index(a) + 1 for a in spec.after), default=None)
            high = min((names.index(b) for b in spec.before), default=None)
            if low is not None and high is not None and low > high:
                raise CompositionError(f"{plugin.name}'s hook '{spec.name}' must run after {spec.after} and before "
                                       f"{spec.before} at {spec.trigger}, but those run in the other order")
            position = high if high is not None else (low if low is not None else len(names))
            table.insert_at(spec.trigger, position, spec.fn, spec.name, owner=plugin.name)
            pending.remove((plugin, spec))
            progress = True
        if not progress:
            plugin, spec = pending[0]
            missing = [n for n in spec.before + spec.after if n not in table.names(spec.trigger)]
            waiting = [f"'{s.name}' ({p.name})" for p, s in pending if s.name in missing]
            if waiting:
                raise CompositionError(f"ordering cycle at {routine}/{spec.trigger}: {plugin.name}'s hook "
                                       f"'{spec.name}' and {' and '.join(waiting)} each wait for the other")
            raise CompositionError(f"{plugin.name}'s hook '{spec.name}' is anchored to {missing} at "
                                   f"{routine}/{spec.trigger}, but no active plug-in provides it")


def _ordered(edges: set[tuple[str, str]], a: str, b: str) -> bool:
    """Is there a chain of declared orderings from a to b?"""
    frontier, seen = [a], {a}
    while frontier:
        node = frontier.pop()
        for x, y in edges:
            if x == node and y not in seen:
                if y == b:
                    return True
                seen.add(y)
                frontier.append(y)
    return False


def _check_writes(routine: str, table: HookTable, specs: list[tuple[Plugin, HookSpec]]) -> None:
    for trigger, hooks in table:
        names = [h.name for h in hooks]
        edges = {(x, y) for x, y in zip(names, names[1:]) if hooks[names.index(x)].owner == "core"
                 and hooks[names.index(y)].owner == "core"}
        writers: list[tuple[str, str, set[str]]] = [(h.name, "core", set(CORE_WRITES.get(h.name, ())))
                                                    for h in hooks if h.owner == "core"]
        for plugin, spec in specs:
            if spec.trigger != trigger:
                continue
            edges |= {(a, spec.name) for a in spec.after} | {(spec.name, b) for b in spec.before}
            writers.append((spec.name, plugin.name, set(spec.writes)))
        for i, (name_a, owner_a, fields_a) in enumerate(writers):
            for name_b, owner_b, fields_b in writers[i + 1:]:
                shared = fields_a & fields_b
                if owner_a != owner_b and shared and not (_ordered(edges, name_a, name_b)
                                                          or _ordered(edges, name_b, name_a)):
                    raise CompositionError(
                        f"{owner_a} and {owner_b} both write ctx.{sorted(shared)[0]} at {routine}/{trigger} "
                        f"(hooks '{name_a}' and '{name_b}') with no order between them; declare before/after")


def _check_server_side(plugins: list[Plugin], weighting: str) -> None:
    if weighting not in WEIGHTINGS:
        raise CompositionError(f"aggregator.weighting '{weighting}' is not one of {', '.join(WEIGHTINGS)}")
    weighers = [p for p in plugins if "weighting" in p.roles]
    if weighers and weighting != "samples":
        raise CompositionError(f"{weighers[0].name} sets the aggregation weights itself; aggregator.weighting "
                               f"{weighting} cannot apply too: leave aggregator.weighting at samples")
    gradient = [p for p in plugins if overrides(p, "transform_gradients")]
    for plugin in plugins:
        for spec in plugin.hooks():
            if gradient and spec.replaces == BACKWARD_HOOK and spec.routine == "train":
                raise CompositionError(f"{gradient[0].name} and {plugin.name} cannot be combined: {plugin.name} "
                                       f"replaces the backward step ({BACKWARD_HOOK}), so {gradient[0].name}'s "
                                       "gradient transform would never run")


def compose(plugins: list[Plugin], weighting: str = "samples") -> Plan:
    _check_roles(plugins)
    _check_pairs(plugins)
    _check_server_side(plugins, weighting)
    tables = {"train": default_train_hooks(), "eval": default_eval_hooks()}
    for routine, table in tables.items():
        specs = [(p, s) for p in plugins for s in p.hooks() if s.routine == routine]
        replaced: dict[tuple[str, str], str] = {}
        renamed: dict[tuple[str, str], str] = {}
        for plugin, spec in specs:
            if spec.replaces is None:
                continue
            key = (spec.trigger, spec.replaces)
            if key in replaced:
                raise CompositionError(f"{replaced[key]} and {plugin.name} cannot be combined: both replace the hook "
                                       f"'{spec.replaces}' at {routine}/{spec.trigger}")
            replaced[key] = plugin.name
            renamed[key] = spec.name
            table.replace(spec.trigger, spec.replaces, spec.fn, new_name=spec.name, owner=plugin.name)
        # An anchor naming a replaced hook means its replacement (a replacing hook's anchors order only its writes).
        specs = [(p, replace(s, before=tuple(renamed.get((s.trigger, a), a) for a in s.before),
                             after=tuple(renamed.get((s.trigger, a), a) for a in s.after)))
                 for p, s in specs]
        _place(table, routine, [(p, s) for p, s in specs if s.replaces is None])
        _check_writes(routine, table, specs)
    def holder(role: str) -> Plugin | None:
        return next((p for p in plugins if role in p.roles), None)

    return Plan(tuple(plugins), MappingProxyType(tables), holder("server_update"), holder("aggregator"),
                holder("weighting"), weighting)
