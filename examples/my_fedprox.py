"""FedProx written outside fedplug, as docs/writing-an-algorithm.md builds it step by step.

    fedplug --cfg configs/fedavg_lr_on_synthetic.yaml plugins examples/my_fedprox.py \
        my_fedprox.use True my_fedprox.mu 0.1

gives exactly what the built-in `fedprox.use True fedprox.mu 0.1` gives (tests/test_tutorial.py).
"""
from __future__ import annotations

from fedplug.algorithms.registry import register_algorithm
from fedplug.config import Key, Section, register_section
from fedplug.core.context import Context, CtxVar
from fedplug.core.plugin import HookSpec, Plugin

# The config section: `my_fedprox.use` switches it on, `my_fedprox.mu` is its parameter.
register_section("my_fedprox", Section("FedProx, written outside fedplug", {
    "use": Key(False, "switch my_fedprox on"),
    "mu": Key(0.0, "weight of the proximal term", check=lambda v: v >= 0, check_msg=">= 0"),
}))


# Step 1: put the algorithm's parameters in the Context.
def init_my_fedprox_ctx(mu: float):
    def _hook_on_fit_start_init_my_fedprox(ctx: Context) -> None:
        ctx.my_fedprox_mu = CtxVar(mu, "routine")
        # the model as received, the anchor of the proximal term
        ctx.my_fedprox_anchor = CtxVar({n: t.detach() for n, t in ctx.global_params.items()}, "routine")

    return _hook_on_fit_start_init_my_fedprox


# Step 2: the hook that changes training: add mu/2 * ||w - w_received||^2 to the loss backward uses.
def _hook_on_batch_forward_my_proximal_term(ctx: Context) -> None:
    anchor = ctx.my_fedprox_anchor
    squared = sum(((p - anchor[n]) ** 2).sum() for n, p in ctx.model.named_parameters() if n in anchor)
    ctx.loss_task = CtxVar(ctx.loss_task + ctx.my_fedprox_mu * (0.5 * squared), "batch")


# Step 3: assemble the hooks into a plug-in and register it by name.
@register_algorithm
class MyFedProx(Plugin):
    name = "my_fedprox"

    def hooks(self) -> list[HookSpec]:
        return [
            HookSpec("on_fit_start", init_my_fedprox_ctx(self.section.mu), "_hook_on_fit_start_init_my_fedprox",
                     after=("_hook_on_fit_start_init",), writes=("my_fedprox_mu", "my_fedprox_anchor")),
            HookSpec("on_batch_forward", _hook_on_batch_forward_my_proximal_term,
                     "_hook_on_batch_forward_my_proximal_term", after=("_hook_on_batch_forward",),
                     writes=("loss_task",)),
        ]

