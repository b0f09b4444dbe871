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

`pfedme.semantics: federatedscope` reproduces FederatedScope's trainer instead (its published
figures came from it; federatedscope/core/trainers/trainer_pFedMe.py):
- `init_pFedMe_ctx` multiplies the number of epochs by K and `_hook_on_batch_start_init_pfedme`
  fetches a new batch only every K-th batch call (a counter over the whole visit), reusing the
  cached one otherwise: each call is one theta step (`core/optimizer.py`,
  `wrap_regularized_optimizer`: grad + lambda * (theta - w));
- `_hook_on_epoch_end_update_local` moves w once per epoch (K times per pass of the schedule),
  not after each batch's K inner steps;
- `_hook_on_fit_end_update_local` leaves w in the model and theta is dropped: clients are
  evaluated with the broadcast global model, never theta;
- samples processed count every batch call, so the server's beta interpolation of the weighted
  average (FederatedScope's ClientsAvgAggregator) weights uploads by about K times the samples.
This option has no cohort form: the vectorized backend says so and runs pFedMe's clients sequentially.
Keys: `pfedme.use`, `pfedme.semantics`, `personalization.K`, `.lr`, `.regular_weight` (lambda), `.beta`.
"""
from __future__ import annotations

import torch

from fedplug.config import ConfigNode
from fedplug.core.context import Context, CtxVar
from fedplug.core.default_hooks import _hook_on_batch_start_gather
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
        self.federatedscope: bool = cfg.pfedme.semantics == "federatedscope"
        if self.federatedscope:
            self.vectorizes = False
            self.sequential_reason = "with pfedme.semantics federatedscope (no cohort form)"

    def hooks(self) -> list[HookSpec]:
        start = HookSpec("on_fit_start", self._hook_on_fit_start_copy_local_model, "_hook_on_fit_start_copy_local_model",
                         after=("_hook_on_fit_start_init",), writes=("pfedme_w",))
        if self.federatedscope:
            return [start, *self._federatedscope_hooks()]
        return [
            start,
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
        self._theta_steps(ctx, self.inner_steps)
        self._move_local(ctx)

    def _theta_steps(self, ctx: Context, steps: int) -> None:
        """`steps` SGD steps of theta on f(theta; batch) + lambda/2 * ||theta - w||^2."""
        theta = trainable(ctx.model)
        local = ctx.pfedme_w
        for step in range(steps):
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

    def _move_local(self, ctx: Context) -> None:
        """w <- w - lr * lambda * (w - theta)."""
        theta = trainable(ctx.model)
        with torch.no_grad():
            for name, w in ctx.pfedme_w.items():
                w.sub_(ctx.lr * self.regular_weight * (w - theta[name]))

    def _hook_on_fit_end_keep_personal_upload_local(self, ctx: Context) -> None:
        """Keep theta for evaluation and the next round; leave w in the model, which is what uploads."""
        self.state(ctx).update(copy_parameters(ctx.model))
        load_parameters(ctx.model, ctx.pfedme_w)

    # -- pfedme.semantics federatedscope: trainer_pFedMe.py's schedule -----------------------------
    def _federatedscope_hooks(self) -> list[HookSpec]:
        return [
            HookSpec("on_fit_start", self._hook_on_fit_start_k_epochs, "_hook_on_fit_start_pfedme_k_epochs",
                     after=("_hook_on_fit_start_copy_local_model",), writes=("pfedme_calls", "pfedme_cache")),
            HookSpec("on_epoch_start", self._hook_on_epoch_start_count, "_hook_on_epoch_start_pfedme_count",
                     after=("_hook_on_epoch_start_shuffle",), writes=("pfedme_fetched",)),
            HookSpec("on_batch_start", self._hook_on_batch_start_reuse, "_hook_on_batch_start_pfedme_reuse",
                     replaces="_hook_on_batch_start_gather"),
            HookSpec("on_batch_backward", self._hook_on_batch_backward_theta, "_hook_on_batch_backward_pfedme_theta",
                     replaces="_hook_on_batch_backward"),
            HookSpec("on_epoch_end", self._hook_on_epoch_end_move_local, "_hook_on_epoch_end_pfedme_move_local"),
            HookSpec("on_fit_end", self._hook_on_fit_end_upload_local, "_hook_on_fit_end_pfedme_upload_local",
                     before=("_hook_on_fit_end",)),
        ]

    def _hook_on_fit_start_k_epochs(self, ctx: Context) -> None:
        """init_pFedMe_ctx: `num_train_epoch *= K` (the loop reads num_epoch after on_fit_start)."""
        ctx.num_epoch = ctx.num_epoch * self.inner_steps
        ctx.pfedme_calls = CtxVar(0, "routine")
        ctx.pfedme_cache = CtxVar(None, "routine")

    def _hook_on_epoch_start_count(self, ctx: Context) -> None:
        ctx.pfedme_fetched = CtxVar(0, "epoch")  # batches taken from this epoch's permutation

    def _hook_on_batch_start_reuse(self, ctx: Context) -> None:
        """_hook_on_batch_start_init_pfedme: the next batch of the epoch's permutation every K-th call, counted
        over the visit (so across epochs), else the cached batch again."""
        if ctx.pfedme_calls % self.inner_steps == 0:
            position = ctx.cur_batch_i
            ctx.cur_batch_i = ctx.pfedme_fetched
            _hook_on_batch_start_gather(ctx)
            ctx.cur_batch_i = position
            ctx.pfedme_fetched += 1
            ctx.pfedme_cache = (ctx.batch_index, ctx.x_batch, ctx.y_batch, ctx.batch_size)
        else:
            index, x, y, size = ctx.pfedme_cache
            ctx.batch_index, ctx.x_batch = CtxVar(index, "batch"), CtxVar(x, "batch")
            ctx.y_batch, ctx.batch_size = CtxVar(y, "batch"), CtxVar(size, "batch")
        ctx.pfedme_calls += 1

    def _hook_on_batch_backward_theta(self, ctx: Context) -> None:
        """One call, one regularized theta step; w waits for the end of the epoch."""
        self._theta_steps(ctx, 1)

    def _hook_on_epoch_end_move_local(self, ctx: Context) -> None:
        """_hook_on_epoch_end_update_local: w moves toward theta once per epoch."""
        self._move_local(ctx)

    def _hook_on_fit_end_upload_local(self, ctx: Context) -> None:
        """_hook_on_fit_end_update_local: w is uploaded; theta is not kept (evaluation uses the global model)."""
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
