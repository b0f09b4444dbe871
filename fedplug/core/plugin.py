"""The plug-in contract: what an algorithm declares, in one class.

A plug-in is switched on by `<name>.use: true` (or `federate.method`). It declares:
- `hooks()`: client hooks, each at a trigger point of a routine, placed relative to named hooks
  (`before`/`after`), or replacing one (`replaces`), with the context fields it `writes`;
- `roles`: exclusive roles it fills ("personalization", "server_update", "model", "aggregator",
  "weighting", ...): two active plug-ins filling one role are refused at start-up;
- what travels besides the model (`messages`, `broadcast`, `client_upload`): core/messages.py;
  `transform_upload` changes the parameters a client sends (DP's clipped update);
- the gradient point (`transform_gradients`): between backward and the optimizer step;
- its server side, run in this order each round: weights (`client_weight`, the "weighting" role),
  the aggregate (`aggregate`, the "aggregator" role, else the streaming weighted mean), `receive`
  (every plug-in, plan order), `transform_aggregate` (chained, plan order), `server_update` (the
  "server_update" role); each gets the round's facts (core/messages.RoundFacts);
- `refuses(other)`: a sentence when it cannot run next to another plug-in; `report(facts)`: figures
  for the metrics records (DP's epsilon);
- `local_parameters(names)`: parameter names that never travel (kept per client);
- `wrap_model(model, make)`: for the plug-in with the "model" role, the model the clients train;
- what a client sends: `transform_upload` (after `client_upload`: the parameters it uploads instead of its
  model) and, in the standalone simulation only, `transform_uploads` (the round's uploads before the
  aggregation); both serve the attacks (docs/robustness.md); `setup(num_clients)` once N is known;
- per-client state: `self.state(ctx)` is this plug-in's own dict for the client being visited,
  kept between rounds by the runner (tensors only); `init_client_state` fills it at a first visit;
- `vectorizes` and the `cohort_*` forms of its client hooks, for the vectorized backend
  (docs/vectorized.md). The pure points (`transform_gradients`, `client_upload`, `init_client_state`)
  serve every backend as they are.
Each plug-in sees its own frozen config section as `self.section` and the whole config read-only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from fedplug.config import ConfigNode
from fedplug.core.context import Context
from fedplug.core.hooks import HookFn, HookTable
from fedplug.core.messages import Messages, RoundFacts, Upload
from fedplug.core.params import Params


@dataclass(frozen=True)
class HookSpec:
    trigger: str
    fn: HookFn
    name: str
    routine: str = "train"
    before: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    replaces: str | None = None
    writes: tuple[str, ...] = ()


@dataclass
class LocalView:
    """One local update as the pure client points see it (this plug-in's part of it)."""

    params: Params  # trainable shared parameters: current (gradient point) or final (upload), detached
    received: Params  # the global parameters the client received
    extras: Params  # this plug-in's `down` tensors as received
    state: dict[str, torch.Tensor]  # this plug-in's kept state of the client: a read-only mapping at the
    # gradient point (stacked in the vectorized backend), the store itself at upload (write into it)
    lr: float  # the client learning rate of the update
    metrics: dict[str, float] = field(default_factory=dict)  # at upload: train_total, train_steps, train_loss
    client: int = -1  # at upload: the client's id (-1 at the gradient point)
    round_num: int = 0  # at upload: the round (seeds a per-(round, client) generator, as training does)


class Plugin:
    """Base class of every algorithm; override only what the algorithm changes."""

    name: ClassVar[str]  # registry name = config section
    method: ClassVar[str] = ""  # FederatedScope's `federate.method` value, e.g. "FedProx"
    roles: ClassVar[tuple[str, ...]] = ()
    # The vectorized backend runs a cohort of clients at once only with plug-ins that declare it
    # and give the cohort form of their client hooks (the cohort_* methods below); with any other
    # plug-in it says so in one line and runs the client routines one at a time.
    vectorizes: ClassVar[bool] = False
    # Why this instance runs sequentially although its class vectorizes (an option without a cohort form):
    # the vectorized backend's one line then names it (an instance sets `vectorizes = False` and this).
    sequential_reason: str = ""

    def __init__(self, cfg: ConfigNode) -> None:
        self.cfg = cfg
        self.section = cfg.get(self.name) if self.name in cfg else None

    def hooks(self) -> list[HookSpec]:
        return []

    def extra_routines(self) -> dict[str, HookTable]:
        """Routines the plug-in runs itself (Ditto's personal update), shown by `fedplug plan`."""
        return {}

    def local_parameters(self, names: list[str]) -> set[str]:
        return set()

    def wrap_model(self, model: nn.Module, make: Callable[[], nn.Module]) -> nn.Module:
        """The model clients train; `make()` builds another freshly initialised copy (FedEM)."""
        return model

    # -- what travels (core/messages.py) ------------------------------------------------------------
    def messages(self, shared: Params) -> Messages:
        """The extra tensors this plug-in sends down and up, given the shared parameters' layout."""
        return Messages()

    def broadcast(self, facts: RoundFacts) -> Params:
        """Server: this round's `down` tensors, sent with the global model to every sampled client."""
        return {}

    # -- client side: pure functions of tensors, the same for every backend ----------------------------
    def init_client_state(self, received: Params) -> dict[str, torch.Tensor]:
        """A client's state at its first visit (before its first local update), e.g. zeros."""
        return {}

    def transform_gradients(self, grads: Params, view: LocalView) -> Params:
        """The gradient point: after backward, before clipping and the optimizer step, on every step of
        the local update of the uploaded model. Vectorized: `grads`, `view.params` and `view.state` carry a
        leading client axis and `view.received`/`view.extras` do not, so elementwise code serves both."""
        return grads

    def client_upload(self, view: LocalView) -> Params:
        """After the local update: this plug-in's `up` tensors for this client (and its state updated)."""
        return {}

    def transform_upload(self, params: Params, view: LocalView) -> Params:
        """After every `client_upload`: the shared parameters this client sends instead of `params` (its final
        model; an attacker's lie, docs/robustness.md; DP-FedAvg's clipped update, docs/privacy.md). Chained in plan
        order; `view.client` names the client. Return new tensors; never write `params`."""
        return params

    # -- start-up ------------------------------------------------------------------------------------
    def setup(self, num_clients: int) -> None:
        """Once N, the number of clients of the federation, is known: before the first round (the server) and
        before the first task (a distributed client process; 0 there when it reads its own data file)."""

    # -- server side ---------------------------------------------------------------------------------
    def client_weight(self, upload: Upload) -> float:
        """For the plug-in with the "weighting" role: a client's aggregation weight (a positive float)."""
        raise NotImplementedError

    def aggregate(self, uploads: list[Upload], facts: RoundFacts) -> Params:
        """For the plug-in with the "aggregator" role: the round's aggregate from every upload (weights in
        `facts.weights`); the default, without one, is the streaming weighted mean."""
        raise NotImplementedError

    def transform_uploads(self, uploads: list[Upload], facts: RoundFacts) -> list[Upload]:
        """Standalone simulation only (a distributed run refuses a plug-in defining it): every upload of the round,
        before any is folded in; returns the uploads to fold in their place. The point where colluding attackers
        read the round's honest uploads (ALIE, IPM)."""
        return uploads

    def receive(self, facts: RoundFacts) -> None:
        """After the aggregation: read this plug-in's reduced uploads (`facts.extras(self.name)`)."""

    def transform_aggregate(self, old: Params, aggregate: Params, facts: RoundFacts) -> Params:
        return aggregate

    def server_update(self, old: Params, aggregate: Params, facts: RoundFacts) -> Params:
        raise NotImplementedError

    def server_state(self) -> dict[str, Any]:
        """What the server keeps between rounds (checkpointed): names -> dicts of tensors; {} when nothing."""
        return {}

    def load_server_state(self, state: dict[str, Any]) -> None:
        """Restore `server_state()` from a checkpoint. The default refills the dicts it returns, in place;
        override when the state is not dicts of tensors held by the plug-in."""
        current = self.server_state()
        for key, tensors in state.items():
            current[key].clear()
            current[key].update(tensors)

    def describe_server(self) -> list[str]:
        """Lines for `fedplug plan`: what this plug-in does on the server."""
        return []

    def refuses(self, other: Plugin) -> str:
        """Why this plug-in cannot run next to `other` ('' when it can); composition refuses the pair."""
        return ""

    def report(self, facts: RoundFacts) -> dict[str, float]:
        """Figures added to each metrics record after round `facts.round_num` (DP's epsilon); the last
        record's also go to summary.json and the final line."""
        return {}

    # -- cohort forms, for the vectorized backend (tensors stacked on a leading client axis) ----------
    def cohort_penalty(self, params: Params, received: Params) -> torch.Tensor | None:
        """The term this plug-in adds to the training loss, per client: stacked params -> (clients,)."""
        return None

    def cohort_fit_start(self, cohort: Any) -> None:
        """Work done before the local update (Ditto's personal update); `cohort` is a backends.cohort.Cohort."""

    def cohort_step(self, cohort: Any) -> Callable | None:
        """A replacement of the per-batch optimizer step (pFedMe), or None for the default SGD step."""
        return None

    def cohort_fit_end(self, cohort: Any) -> None:
        """Work done after the local update (pFedMe keeps theta, uploads w)."""

    def cohort_eval_params(self, states: list[dict[str, torch.Tensor]], params: Params) -> Params:
        """The stacked parameters each client is judged by; states[i] is this plug-in's state of client i."""
        return params

    def cohort_losses(self, cohort: Any, params: Params, buffers: Params, x: torch.Tensor, y: torch.Tensor,
                      mask: torch.Tensor, local: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """A replacement of the batch forward (FedEM): (loss_task, loss_batch), each (k,), for the first k
        clients' padded batch; `local` holds the batch's row numbers within each client's split."""
        return None

    def cohort_eval_outputs(self, backend: Any, clients: list[int], params: Params, buffers: Params,
                            x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
        """A replacement of the evaluation forward: (C, rows, classes) log-probabilities (loss: NLL)."""
        return None

    def state(self, ctx: Context) -> dict[str, torch.Tensor]:
        """This plug-in's kept state for the client being visited (empty on its first visit)."""
        return ctx.client_states[self.name]

    def received(self, ctx: Context) -> Params:
        """This plug-in's `down` tensors as the client being visited received them."""
        return (ctx.get("received_extras") or {}).get(self.name, {})


def overrides(plugin: Plugin, method: str) -> bool:
    """Does the plug-in define `method` itself (rather than inherit the base class's no-op)?"""
    return getattr(type(plugin), method) is not getattr(Plugin, method)
