"""FedProx: Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith, "Federated Optimization in
Heterogeneous Networks", MLSys 2020.

Each client minimises its loss plus mu/2 * ||w - w_global||^2, which keeps local models near the
model they received. With mu = 0 it is FedAvg exactly (the term adds exact zeros to the gradient).
Key: `fedprox.mu`.
"""
from __future__ import annotations

from fedplug.algorithms.regularizers import get_regularizer
from fedplug.core.context import Context, CtxVar
from fedplug.core.plugin import HookSpec, Plugin


class FedProx(Plugin):
    name = "fedprox"
    method = "FedProx"
    vectorizes = True  # the term is cohort_penalty on stacked parameters

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.mu = self.section.mu
        self.regularizer = get_regularizer("proximal_regularizer")

    def hooks(self) -> list[HookSpec]:
        return [HookSpec("on_batch_forward", self._hook_on_batch_forward_add_proximal_term,
                         "_hook_on_batch_forward_add_proximal_term", after=("_hook_on_batch_forward",),
                         writes=("loss_task", "loss_regular"))]

    def cohort_penalty(self, params, received):
        """The same term for a cohort (vectorized backend): (clients,) from stacked parameters."""
        from fedplug.backends.functional import proximal

        return self.mu * proximal(params, received)

    def _hook_on_batch_forward_add_proximal_term(self, ctx: Context) -> None:
        ctx.loss_regular = CtxVar(self.mu * self.regularizer(ctx), "batch")
        ctx.loss_task = CtxVar(ctx.loss_task + ctx.loss_regular, "batch")
