"""Ditto: Li, Hu, Beirami, Smith, "Ditto: Fair and Robust Federated Learning Through
Personalization", ICML 2021.

Each client keeps a personal model v across rounds next to the shared global model w. At a visit
the client first takes `personalization.local_update_steps` SGD steps (lr `personalization.lr`) on

    f_k(v) + lambda/2 * ||v - w_received||^2          (lambda = `personalization.regular_weight`)

and keeps v; then it runs the ordinary local update of w (with any other plug-in's hooks, e.g.
FedProx) and uploads w only. The server is FedAvg's. Evaluation judges each client by its v.

Choices made here (`ditto.semantics: paper`, the default):
- as in the paper's Algorithm 1, all of v's steps come first, pulled toward the *received* w;
- v starts, at a client's first visit, as the model it received (the global model);
- the personal update runs before the global one and draws its batches from the same client
  generator, so both stay deterministic per (seed, round, client);
- a client that has never trained has no v and is evaluated with the downloaded global model.

`ditto.semantics: federatedscope` reproduces FederatedScope's trainer (its published figures came
from it; federatedscope/core/trainers/trainer_Ditto.py), with `train.batch_or_epoch: batch`:
- `init_Ditto_ctx` adds v's batches to each epoch of w's schedule and
  `_hook_on_batch_start_switch_model` trains v on an epoch's first batches, w on the rest: per
  epoch of w's schedule, v takes one pass of batches (the last epoch: `local_update_steps` of
  v modulo the pass, as FederatedScope counts it), then w takes its own;
- both draw from one loader per visit, reshuffled at each epoch start and whenever a pass runs
  out (FederatedScope's ReIterator), so in a short last epoch w continues v's permutation;
- v's regularizer is anchored to the received w, frozen for the visit (`core/optimizer.py`,
  `wrap_regularized_optimizer.set_compared_para_group` deep-copies it); v's optimizer lives
  for the whole visit; the uploaded weight counts w's samples only (`_hook_on_fit_end_calibrate`);
- v starts as the freshly initialised model (`init_Ditto_ctx` deep-copies the client's model
  before any download), and a never-trained client is evaluated with it
  (`_hook_on_fit_start_switch_local_model`). FederatedScope initialises each client's model with
  its own draws; here every client starts from the run's initial model (seed stream 0);
- FederatedScope's v takes `train.optimizer`'s lr; here `personalization.lr` (set them equal).
This option has no cohort form: the vectorized backend says so and runs Ditto's clients sequentially.
"""
from __future__ import annotations

from fedplug.algorithms.ditto_federatedscope import FederatedScopeDitto, _hook_on_batch_start_stream
from fedplug.algorithms.regularizers import get_regularizer
from fedplug.config import ConfigNode
from fedplug.core.context import Context, CtxVar
from fedplug.core.default_hooks import default_train_hooks
from fedplug.core.hooks import HookTable
from fedplug.core.params import Params, copy_parameters, load_parameters
from fedplug.core.plugin import HookSpec, Plugin
from fedplug.errors import ConfigError

PERSONAL_REGULARIZER_HOOK = "_hook_on_batch_forward_ditto_add_personal_term"


class Ditto(FederatedScopeDitto, Plugin):
    name = "ditto"
    method = "Ditto"
    roles = ("personalization",)
    vectorizes = True  # cohort_fit_start / cohort_eval_params below

    def __init__(self, cfg: ConfigNode) -> None:
        super().__init__(cfg)
        personal = cfg.personalization
        self.regular_weight: float = personal.regular_weight  # lambda
        self.personal_steps: int = (personal.local_update_steps if personal.local_update_steps > 0
                                    else cfg.train.local_update_steps)
        self.personal_lr: float = personal.lr if personal.lr > 0 else cfg.train.optimizer.lr
        self.regularizer = get_regularizer("proximal_regularizer")  # 1/2 ||w - ctx.global_params||^2
        # The personal update runs the plain routine plus Ditto's term only: other plug-ins'
        # hooks (FedProx's proximal term, ...) belong to the global model's update.
        self.personal_table: HookTable = default_train_hooks()
        self.personal_table.add("on_batch_forward", self._hook_on_batch_forward_add_personal_term,
                                PERSONAL_REGULARIZER_HOOK, after="_hook_on_batch_forward", owner=self.name)
        self.federatedscope: bool = cfg.ditto.semantics == "federatedscope"
        self.initial: Params = {}  # the freshly initialised model (federatedscope semantics)
        if self.federatedscope:
            if cfg.train.batch_or_epoch != "batch":
                raise ConfigError("ditto.semantics federatedscope needs train.batch_or_epoch batch (its per-epoch "
                                  "alternation is written for step counts)")
            self.vectorizes = False
            self.sequential_reason = "with ditto.semantics federatedscope (no cohort form)"
            table = self.personal_table  # v's batches come from the visit's one loader, no shuffle of their own
            table.remove("on_epoch_start", "_hook_on_epoch_start_shuffle")
            table.replace("on_batch_start", "_hook_on_batch_start_gather", _hook_on_batch_start_stream,
                          "_hook_on_batch_start_ditto_stream", owner=self.name)
            table.add("on_fit_start", self._hook_on_fit_start_keep_optimizer, "_hook_on_fit_start_ditto_optimizer",
                      after="_hook_on_fit_start_init", owner=self.name)

    def hooks(self) -> list[HookSpec]:
        if self.federatedscope:
            return self._federatedscope_hooks()
        return [
            HookSpec("on_fit_start", self._hook_on_fit_start_train_personal, "_hook_on_fit_start_ditto_personal",
                     before=("_hook_on_fit_start_init",), writes=("model", "ditto_personal_results")),
            HookSpec("on_fit_start", self._hook_on_fit_start_load_personal, "_hook_on_fit_start_ditto_load_personal",
                     routine="eval", before=("_hook_on_fit_start_eval_init",), writes=("model",)),
        ]

    def extra_routines(self) -> dict[str, HookTable]:
        when = ", a pass per epoch before w's batches" if self.federatedscope else ""
        return {f"ditto personal ({self.personal_steps} steps{when}, lr {self.personal_lr})": self.personal_table}

    def _hook_on_batch_forward_add_personal_term(self, ctx: Context) -> None:
        """In the personal update: loss += lambda/2 * ||v - w_received||^2."""
        ctx.ditto_loss_regular = CtxVar(self.regular_weight * self.regularizer(ctx), "batch")
        ctx.loss_task = CtxVar(ctx.loss_task + ctx.ditto_loss_regular, "batch")

    def _hook_on_fit_start_train_personal(self, ctx: Context) -> None:
        """Train v (from its last value, or from the received model) before the global update."""
        state = self.state(ctx)
        received = copy_parameters(ctx.model)  # what the global update must start from
        if state:
            load_parameters(ctx.model, state)
        results = ctx.trainer.train(ctx.x, ctx.y, ctx.generator, table=self.personal_table,
                                    local_update_steps=self.personal_steps, lr=self.personal_lr,
                                    global_params=ctx.global_params, client_id=ctx.client_id,
                                    client_states=ctx.client_states)
        state.update(copy_parameters(ctx.model))
        ctx.ditto_personal_results = CtxVar(results, "routine")
        load_parameters(ctx.model, received)

    # -- the same for a cohort (vectorized backend) -----------------------------------------------
    def cohort_fit_start(self, cohort) -> None:
        """Train every client's v, stacked, before the global update (same steps, same generators)."""
        from fedplug.backends.functional import proximal

        states = cohort.states(self.name)
        v = cohort.stacked([s if s else {n: t[i].detach() for n, t in cohort.params.items()}
                            for i, s in enumerate(states)])
        weight = self.regular_weight
        cohort.train(v, self.personal_steps, self.personal_lr,
                     penalty=lambda p: weight * proximal(p, cohort.received))
        for i, s in enumerate(states):
            s.update({n: t[i].detach().clone() for n, t in v.items()})

    def cohort_eval_params(self, states, params):
        """Each client is judged by its v; a client never trained keeps the global model."""
        for i, s in enumerate(states):
            for n in s:
                params[n][i] = s[n]
        return params

    def _hook_on_fit_start_load_personal(self, ctx: Context) -> None:
        """Evaluate with v; a client never trained keeps the downloaded global model (federatedscope semantics:
        the freshly initialised one)."""
        state = self.state(ctx)
        if state or self.federatedscope:
            load_parameters(ctx.model, state or self.initial)

