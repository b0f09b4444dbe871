"""pFedMe: Dinh, Tran, Nguyen, "Personalized Federated Learning with Moreau Envelopes", NeurIPS 2020
(Algorithm 1).

Each client keeps two models during its local update: the local model w (what it uploads) and the
personalized model theta (held by the model object, so the forward hooks see it). Per batch, theta
approximately solves min_theta f(theta; batch) + lambda/2 * ||theta - w||^2 with K gradient steps of
size `personalization.lr`, then w moves toward theta: w <- w - lr * lambda * (w - theta). At the
start of a round theta = w = the downloaded global model. The client keeps its last theta and is
evaluated with it (clients never trained are evaluated with the global model). The server moves
the global model by new = (1 - beta) * old + beta * aggregate.

Deviations and choices: the first inner step uses the loss the forward hooks already computed, later
ones re-run the forward hooks (so FedProx's term, if on, is part of f). The reported train loss is
the one of the last forward pass of each batch (at theta after K - 1 inner steps). The updates are
plain SGD: the configured momentum and weight decay are not applied; gradient-norm clipping
(`grad.grad_clip`) is applied to each inner step's task gradient.
Keys: `pfedme.use`, `personalization.K`, `.lr`, `.regular_weight` (lambda), `.beta`.
"""
from __future__ import annotations

import torch

from fedplug.config import ConfigNode
from fedplug.core.context import Context, CtxVar
from fedplug.core.params import copy_parameters, load_parameters, trainable
from fedplug.core.messages import RoundFacts
from fedplug.core.plugin import HookSpec, Params, Plugin


class PFedMe(Plugin):
    name = "pfedme"
    method = "pFedMe"
    roles = ("personalization",)
    vectorizes = True  # cohort_fit_start / cohort_step / cohort_fit_end / cohort_eval_params below

    def __init__(self, cfg: ConfigNode) -> None:
        super().__init__(cfg)
        section = cfg.personalization
        self.inner_steps: int = section.K
        self.personal_lr: float = section.lr if section.lr > 0 else cfg.train.optimizer.lr
        self.regular_weight: float = section.regular_weight  # lambda
        self.beta: float = section.beta

    def hooks(self) -> list[HookSpec]:
        return [
            HookSpec("on_fit_start", self._hook_on_fit_start_copy_local_model, "_hook_on_fit_start_copy_local_model",
                     after=("_hook_on_fit_start_init",), writes=("pfedme_w",)),
            HookSpec("on_batch_backward", self._hook_on_batch_backward_pfedme, "_hook_on_batch_backward_pfedme",
                     replaces="_hook_on_batch_backward"),
            HookSpec("on_fit_end", self._hook_on_fit_end_keep_personal_upload_local,
                     "_hook_on_fit_end_keep_personal_upload_local", before=("_hook_on_fit_end",)),
            HookSpec("on_fit_start", self._hook_on_fit_start_load_personal_model,
                     "_hook_on_fit_start_load_personal_model", routine="eval", after=("_hook_on_fit_start_eval_init",)),
        ]

    # -- client training ---------------------------------------------------------------------------
    def _hook_on_fit_start_copy_local_model(self, ctx: Context) -> None:
        """w starts as the downloaded model; theta (the model object) starts equal to it."""
        ctx.pfedme_w = CtxVar(copy_parameters(ctx.model), "routine")

    def _hook_on_batch_backward_pfedme(self, ctx: Context) -> None:
        theta = trainable(ctx.model)
        local = ctx.pfedme_w
        for step in range(self.inner_steps):
            if step > 0:  # the forward hooks computed the loss at the first theta; recompute at the moved one
                ctx.run_forward()
            for p in theta.values():
                p.grad = None
            ctx.loss_task.backward()
            if ctx.cfg.grad.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(theta.values(), ctx.cfg.grad.grad_clip)
            with torch.no_grad():
                for name, p in theta.items():
                    p.sub_(self.personal_lr * (p.grad + self.regular_weight * (p - local[name])))
        with torch.no_grad():
            for name, w in local.items():
                w.sub_(ctx.lr * self.regular_weight * (w - theta[name]))

    def _hook_on_fit_end_keep_personal_upload_local(self, ctx: Context) -> None:
        """Keep theta for evaluation and the next round; leave w in the model, which is what uploads."""
        self.state(ctx).update(copy_parameters(ctx.model))
        load_parameters(ctx.model, ctx.pfedme_w)

    # -- evaluation --------------------------------------------------------------------------------
    def _hook_on_fit_start_load_personal_model(self, ctx: Context) -> None:
        """A client is judged by its personalized model; one never trained keeps the downloaded global."""
        load_parameters(ctx.model, self.state(ctx))  # empty for a client never trained

    # -- the same for a cohort (vectorized backend): theta is the stacked params, w a stacked copy --
    def cohort_fit_start(self, cohort) -> None:
        cohort.extra["pfedme_w"] = {n: t.detach().clone() for n, t in cohort.params.items()}

    def cohort_step(self, cohort):
        from fedplug.backends.functional import clip

        cfg = cohort.backend.cfg
        w, lr, max_norm = cohort.extra["pfedme_w"], cfg.train.optimizer.lr, cfg.grad.grad_clip

        def step(theta, forward_loss, k):
            local = {name: t[:k] for name, t in w.items()}  # the clients still training are the first k
            leaves = list(theta.values())
            for _ in range(self.inner_steps):
                task, loss_batch = forward_loss()
                grads = list(torch.autograd.grad(task.sum(), leaves))
                if max_norm > 0:
                    grads = clip(grads, max_norm)
                with torch.no_grad():
                    for (name, p), g in zip(theta.items(), grads):
                        p.sub_(self.personal_lr * (g + self.regular_weight * (p - local[name])))
            with torch.no_grad():
                for name, t in local.items():
                    t.sub_(lr * self.regular_weight * (t - theta[name]))
            return loss_batch

        return step

    def cohort_fit_end(self, cohort) -> None:
        w = cohort.extra.pop("pfedme_w")
        for i, s in enumerate(cohort.states(self.name)):
            s.update({n: t[i].detach().clone() for n, t in cohort.params.items()})
        with torch.no_grad():
            for name, t in w.items():
                cohort.params[name].copy_(t)  # w is what uploads

    def cohort_eval_params(self, states, params):
        for i, s in enumerate(states):
            for n in s:
                params[n][i] = s[n]
        return params

    # -- server ------------------------------------------------------------------------------------
    def transform_aggregate(self, old: Params, aggregate: Params, facts: RoundFacts) -> Params:
        return {name: (1 - self.beta) * old[name] + self.beta * aggregate[name] for name in aggregate}

    def describe_server(self) -> list[str]:
        return [f"{'transform':<19}new = (1 - beta) * old + beta * aggregate, beta = {self.beta}"]
