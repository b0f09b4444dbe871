"""FedEM: Marfoq, Neglia, Bellet, Kameni, Vidal, "Federated Multi-Task Learning under a Mixture
of Distributions", NeurIPS 2021 (Algorithms 1-2).

Every client's data is modelled as a mixture of M shared component models h_1..h_M with its own
mixture weights pi (M,). The model clients train is a `MixtureModel` holding the M components
(parameters `components.<m>.*`, so the server's per-tensor weighted mean aggregates each component
separately, as Algorithm 1 does). A client's local update (Algorithm 2):
- E-step, once at the start, with the received components, over its whole training split:
  q(m|i) proportional to pi_m * exp(-l_m(i)), in log space;
- M-step for pi: pi <- mean_i q(m|i), kept per client (pi never travels);
- `local_update_steps` SGD steps on sum_m mean_{i in batch} q(m|i) * l_m(i): one shared batch per
  step, and each component's gradient is its own q-weighted loss.
Clients evaluate the mixture log sum_m pi_m softmax(h_m(x)) with their last pi (uniform before
their first update). Key: `fedem.num_models` (alias `model.model_num_per_trainer`).

Choices: the E-step runs in eval mode (no BatchNorm statistics updated, no dropout). The train and
eval losses reported are the mixture NLL, computed with nll_loss on the mixture's log-probabilities
rather than CrossEntropyLoss on them (which would re-normalise them and round differently). With
M = 1 this is FedAvg bit for bit: log pi = 0 and q = 1 exactly, the q-weighted mean has the same
gradient as CrossEntropyLoss's mean, and nll_loss(log_softmax(h)) is CrossEntropyLoss(h).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fedplug.config import ConfigNode
from fedplug.core.context import Context, CtxVar
from fedplug.core.default_hooks import on_device
from fedplug.core.plugin import HookSpec, Plugin


class MixtureModel(nn.Module):
    """M component models and a client's mixture weights `pi` (a plain attribute: never sent)."""

    def __init__(self, components: list[nn.Module]) -> None:
        super().__init__()
        self.components = nn.ModuleList(components)
        self.pi = torch.full((len(components),), 1.0 / len(components))

    def component_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """(M, batch, classes): log softmax of each component's output."""
        return torch.stack([F.log_softmax(h(x), dim=-1) for h in self.components])

    def mix(self, log_probs: torch.Tensor) -> torch.Tensor:
        """log sum_m pi_m p_m, from the (M, batch, classes) component log-probabilities."""
        log_pi = torch.log(self.pi).to(log_probs)
        return torch.logsumexp(log_pi.view(-1, 1, 1) + log_probs, dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(self.component_log_probs(x))


def _per_sample_losses(log_probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(M, batch): -log p_m(y_i | x_i)."""
    index = y.view(1, -1, 1).expand(log_probs.shape[0], -1, 1)
    return -log_probs.gather(2, index).squeeze(2)


def responsibilities(losses: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
    """E-step: q(m|i) = pi_m exp(-l_m(i)) / sum_m' pi_m' exp(-l_m'(i)), from (M, n) losses."""
    log_joint = torch.log(pi).view(-1, 1) - losses
    return torch.exp(log_joint - torch.logsumexp(log_joint, dim=0, keepdim=True))


def weighted_loss(log_probs: torch.Tensor, y: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """sum_m mean_i q(m|i) l_m(i): each component's gradient comes from its own term only."""
    return (q * _per_sample_losses(log_probs, y)).mean(dim=1).sum()


class FedEM(Plugin):
    name = "fedem"
    method = "FedEM"
    roles = ("personalization", "model")
    vectorizes = True  # the cohort_* methods below, in fedem_cohort.py

    def __init__(self, cfg: ConfigNode) -> None:
        super().__init__(cfg)
        self.num_models: int = self.section.num_models  # M

    def wrap_model(self, model: nn.Module, make: Callable[[], nn.Module]) -> nn.Module:
        return MixtureModel([model] + [make() for _ in range(self.num_models - 1)])

    def describe_server(self) -> list[str]:
        return [f"{'components':<19}each of the {self.num_models} component models is aggregated separately "
                "(per-tensor weighted mean); mixture weights stay on the clients"]

    def hooks(self) -> list[HookSpec]:
        forward_writes = ("y_prob", "loss_batch", "loss_task")
        forward = "_hook_on_batch_forward"  # the replacements keep the core name: others anchor to it (FedProx)
        return [
            HookSpec("on_fit_start", self._hook_on_fit_start_e_step, "_hook_on_fit_start_fedem_e_step",
                     after=("_hook_on_fit_start_init",), writes=("fedem_q",)),
            HookSpec("on_batch_forward", self._hook_on_batch_forward_weighted, forward, replaces=forward,
                     writes=forward_writes),
            HookSpec("on_fit_end", self._hook_on_fit_end_keep_pi, "_hook_on_fit_end_fedem_keep_pi",
                     before=("_hook_on_fit_end",)),
            HookSpec("on_fit_start", self._hook_on_fit_start_load_pi, "_hook_on_fit_start_fedem_load_pi",
                     routine="eval", after=("_hook_on_fit_start_eval_init",)),
            HookSpec("on_batch_forward", self._hook_on_batch_forward_mixture, forward, routine="eval",
                     replaces=forward, writes=forward_writes),
        ]

    def _pi(self, ctx: Context) -> torch.Tensor:
        """The client's kept mixture weights; uniform before its first local update."""
        kept = self.state(ctx).get("pi")
        return kept.clone() if kept is not None else torch.full((self.num_models,), 1.0 / self.num_models)

    # -- client training ---------------------------------------------------------------------------
    def _hook_on_fit_start_e_step(self, ctx: Context) -> None:
        model: MixtureModel = ctx.model
        size = ctx.cfg.eval.batch_size  # chunked, so large clients do not need one huge forward pass
        model.eval()  # the E-step only reads the received components
        with torch.no_grad():
            device = ctx.get("device")
            losses = torch.cat([_per_sample_losses(model.component_log_probs(on_device(ctx.x[s:s + size], device)),
                                                   on_device(ctx.y[s:s + size], device))
                                for s in range(0, ctx.x.shape[0], size)], dim=1)
            pi = self._pi(ctx).to(losses)
            q = responsibilities(losses, pi)
        model.train()
        ctx.fedem_q = CtxVar(q, "routine")
        model.pi = q.mean(dim=1)  # M-step for pi; the mixture of this update uses it

    def _hook_on_batch_forward_weighted(self, ctx: Context) -> None:
        model: MixtureModel = ctx.model
        log_probs = model.component_log_probs(ctx.x_batch)
        ctx.y_prob = CtxVar(model.mix(log_probs), "batch")
        ctx.loss_batch = CtxVar(F.nll_loss(ctx.y_prob, ctx.y_batch), "batch")  # mixture NLL, for the figure
        ctx.loss_task = CtxVar(weighted_loss(log_probs, ctx.y_batch, ctx.fedem_q[:, ctx.batch_index]), "batch")

    def _hook_on_fit_end_keep_pi(self, ctx: Context) -> None:
        self.state(ctx)["pi"] = ctx.model.pi.detach().clone()

    # -- the same for a cohort (vectorized backend) -----------------------------------------------
    def cohort_fit_start(self, cohort) -> None:
        from fedplug.algorithms.fedem_cohort import e_step

        e_step(cohort, self.num_models, self.name)

    def cohort_losses(self, cohort, params, buffers, x, y, mask, local):
        from fedplug.algorithms.fedem_cohort import batch_losses

        return batch_losses(cohort, params, buffers, x, y, mask, local)

    def cohort_fit_end(self, cohort) -> None:
        from fedplug.algorithms.fedem_cohort import keep_pi

        keep_pi(cohort, self.name)

    def cohort_eval_outputs(self, backend, clients, params, buffers, x, mask):
        from fedplug.algorithms.fedem_cohort import eval_outputs

        return eval_outputs(backend, clients, params, buffers, x, mask, self.name, self.num_models)

    # -- evaluation --------------------------------------------------------------------------------
    def _hook_on_fit_start_load_pi(self, ctx: Context) -> None:
        ctx.model.pi = self._pi(ctx)

    def _hook_on_batch_forward_mixture(self, ctx: Context) -> None:
        ctx.y_prob = CtxVar(ctx.model(ctx.x_batch), "batch")
        ctx.loss_batch = CtxVar(F.nll_loss(ctx.y_prob, ctx.y_batch), "batch")  # already log-probabilities
        ctx.loss_task = CtxVar(ctx.loss_batch, "batch")
