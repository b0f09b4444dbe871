"""One round on the server: the uploads folded in as they arrive, then the plan's global update.

Shared by the simulation and the distributed server, so both fold the same uploads in the same
order into the same sums. Per upload: its weight (the plan's weighting), the aggregate (the
streaming weighted mean, or every upload kept for an aggregator plug-in), each declared extra
tensor's reduction (again over the uploads an aggregator selected, when it selects: Krum), and the
train loss (always weighted by samples processed: it is a figure of the data, not of the aggregation).
"""
from __future__ import annotations

from fedplug.core.compose import Plan
from fedplug.core.messages import Messages, RoundFacts, Upload
from fedplug.core.params import Params
from fedplug.errors import UserError
from fedplug.server.aggregation import Reduction, WeightedMean


class RoundAggregation:
    def __init__(self, plan: Plan, facts: RoundFacts, messages: dict[str, Messages]) -> None:
        self.plan, self.facts = plan, facts
        self.mean = WeightedMean(facts.previous_global) if plan.aggregator is None else None
        self.kept: list[Upload] = []  # only for an aggregator plug-in: it needs every upload
        self.declared = {plugin: m.up for plugin, m in messages.items() if m.up}
        self.reductions = {plugin: {name: Reduction(up.reduction) for name, up in ups.items()}
                           for plugin, ups in self.declared.items()}
        self.train_loss_sum = 0.0
        self.samples = 0.0

    def add(self, upload: Upload) -> None:
        """Fold in one client's upload; its tensors may be views the backend reuses: read them now."""
        self._check_extras(upload)
        weight = self.plan.weight(upload)
        self.facts.received.append(upload.client)
        self.facts.weights[upload.client] = weight
        if self.mean is not None:
            self.mean.add(upload.params, weight)
        else:
            self.kept.append(upload.copied())
        for plugin, reductions in self.reductions.items():
            for name, reduction in reductions.items():
                reduction.add(upload.extras[plugin][name], weight)
        self.train_loss_sum += upload.metrics["train_loss"] * upload.samples
        self.samples += upload.samples

    def _check_extras(self, upload: Upload) -> None:
        """As the wire checks them in distributed mode: the declared names, dtypes and shapes."""
        for plugin, ups in self.declared.items():
            sent = upload.extras.get(plugin, {})
            if set(sent) != set(ups):
                raise UserError(f"{plugin}'s upload of client {upload.client} holds {sorted(sent)[:3]}, but its "
                                f"messages() declares {sorted(ups)[:3]} going up")
            for name, tensor in sent.items():
                spec = ups[name].spec
                if tensor.dtype != spec.dtype or tuple(tensor.shape) != spec.shape:
                    raise UserError(f"{plugin}'s upload '{name}' of client {upload.client} is {tensor.dtype} "
                                    f"{tuple(tensor.shape)}, but its messages() declares {spec.dtype} {spec.shape}")

    @property
    def empty(self) -> bool:
        return not self.facts.received

    @property
    def train_loss(self) -> float:
        return self.train_loss_sum / self.samples if self.samples > 0 else float("nan")

    def aggregate(self) -> Params:
        """The round's aggregate; also fills `facts.reduced` with the extras' reductions."""
        self.facts.reduced = {plugin: {name: r.result() for name, r in reductions.items()}
                              for plugin, reductions in self.reductions.items()}
        if self.mean is not None:
            return self.mean.result()
        aggregate = self.plan.aggregator.aggregate(self.kept, self.facts)
        if self.facts.selected is not None:  # the aggregator kept only these uploads: so do the extras
            chosen = set(self.facts.selected)
            self.facts.reduced = self._reduce([u for u in self.kept if u.client in chosen])
        return aggregate

    def _reduce(self, uploads: list[Upload]) -> dict[str, Params]:
        """The declared reductions of the extras over `uploads`, folded in the order given."""
        out = {}
        for plugin, ups in self.declared.items():
            reductions = {name: Reduction(up.reduction) for name, up in ups.items()}
            for upload in uploads:
                for name, reduction in reductions.items():
                    reduction.add(upload.extras[plugin][name], self.facts.weights[upload.client])
            out[plugin] = {name: r.result() for name, r in reductions.items()}
        return out
