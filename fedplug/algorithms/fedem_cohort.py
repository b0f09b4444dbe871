"""FedEM's cohort form, for the vectorized backend: the E-step, the q-weighted losses and the mixture.

The same arithmetic as fedem.py's hooks, on parameters stacked along a client axis: each
component's log-probabilities come from `functional_call` of that component under vmap; the
E-step runs over each client's whole (padded, masked) training split with the received
components; a training batch's task loss is sum_m mean_i q(m|i) l_m(i) over the client's real
rows; evaluation is each client's mixture with its kept pi. Imported only by FedEM's cohort methods.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap

from fedplug.backends.masked_norm import row_mask
from fedplug.core.default_hooks import on_device
from fedplug.core.params import Params


def component_log_probs(model: Any, params: Params, buffers: Params, x: torch.Tensor,
                        mask: torch.Tensor) -> torch.Tensor:
    """(C, M, rows, classes) log-softmax of every component of every client."""
    count = len(model.components)

    def one(p: Params, b: Params, xs: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        outs = []
        with row_mask(m):
            for j in range(count):
                prefix = f"components.{j}."
                own = ({n[len(prefix):]: t for n, t in p.items() if n.startswith(prefix)},
                       {n[len(prefix):]: t for n, t in b.items() if n.startswith(prefix)})
                outs.append(F.log_softmax(functional_call(model.components[j], own, (xs,)), dim=-1))
        return torch.stack(outs)

    return vmap(one)(params, buffers, x, mask)


def _nll_rows(log_probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """-log p(y) per row: (..., rows, classes) with y broadcastable to (..., rows)."""
    return -log_probs.gather(-1, y.unsqueeze(-1).expand(*log_probs.shape[:-1], 1)).squeeze(-1)


def kept_pi(states: list[dict[str, torch.Tensor]], count: int, device: torch.device) -> torch.Tensor:
    """(C, M): each client's kept mixture weights, uniform before its first local update."""
    uniform = torch.full((count,), 1.0 / count, device=device)
    return torch.stack([s["pi"] if "pi" in s else uniform for s in states])


def mixture(log_probs: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
    """(C, rows, classes): log sum_m pi_m p_m per client."""
    return torch.logsumexp(torch.log(pi).to(log_probs).view(*pi.shape, 1, 1) + log_probs, dim=1)


def e_step(cohort: Any, count: int, name: str) -> None:
    """q(m|i) over each client's training split with the received components; pi <- mean_i q."""
    backend = cohort.backend
    split = backend.data.splits["train"]
    sizes = torch.tensor(cohort.sizes)  # row indices are built on the host, then moved where the data are
    starts = torch.tensor(cohort.offsets).view(-1, 1)
    device = backend.device
    most = int(sizes.max())
    block = max(1, min(most, backend.cfg.eval.batch_size))
    params = {n: t.detach() for n, t in cohort.params.items()}
    backend.model.eval()  # the E-step only reads the received components
    losses = []
    with torch.no_grad():
        for start in range(0, most, block):
            pos = torch.arange(start, min(start + block, most)).view(1, -1)
            real = pos < sizes.view(-1, 1)
            index = torch.where(real, starts + pos, starts).to(split.y.device)
            x, y = on_device(split.x[index], device), on_device(split.y[index], device)
            log_probs = component_log_probs(backend.model, params, cohort.buffers, x, real.float().to(device))
            losses.append(_nll_rows(log_probs, y.unsqueeze(1)))
        losses = torch.cat(losses, dim=2)  # (C, M, rows)
        log_joint = torch.log(kept_pi(cohort.states(name), count, device)).unsqueeze(2) - losses
        q = torch.exp(log_joint - torch.logsumexp(log_joint, dim=1, keepdim=True))
        sizes = sizes.to(device)
        real = (torch.arange(most, device=device).view(1, -1) < sizes.view(-1, 1)).unsqueeze(1)
        pi = (q * real).sum(dim=2) / sizes.view(-1, 1)
    backend.model.train()
    cohort.extra["fedem_q"], cohort.extra["fedem_pi"] = q, pi


def batch_losses(cohort: Any, params: Params, buffers: Params, x: torch.Tensor, y: torch.Tensor,
                 mask: torch.Tensor, local: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(task, batch) per client: the q-weighted component losses, and the mixture NLL for the figure."""
    k = x.shape[0]
    log_probs = component_log_probs(cohort.backend.model, params, buffers, x, mask.float())  # (k, M, B, K)
    real, counts = mask.float(), mask.sum(dim=1)
    loss_batch = (_nll_rows(mixture(log_probs, cohort.extra["fedem_pi"][:k]), y) * real).sum(dim=1) / counts
    q = cohort.extra["fedem_q"][:k]
    q = q.gather(2, local.unsqueeze(1).expand(-1, q.shape[1], -1))  # (k, M, B)
    per_component = (q * _nll_rows(log_probs, y.unsqueeze(1)) * real.unsqueeze(1)).sum(dim=2) / counts.unsqueeze(1)
    return per_component.sum(dim=1), loss_batch


def keep_pi(cohort: Any, name: str) -> None:
    for i, state in enumerate(cohort.states(name)):
        state["pi"] = cohort.extra["fedem_pi"][i].clone()


def eval_outputs(backend: Any, clients: list[int], params: Params, buffers: Params, x: torch.Tensor,
                 mask: torch.Tensor, name: str, count: int) -> torch.Tensor:
    log_probs = component_log_probs(backend.model, params, buffers, x, mask.float())
    return mixture(log_probs, kept_pi([backend.client_states(c)[name] for c in clients], count, backend.device))
