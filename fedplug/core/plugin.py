"""The plug-in contract: what an algorithm declares, in one class.

A plug-in is switched on by `<name>.use: true` (or `federate.method`). It declares:
- `hooks()`: client hooks, each at a trigger point of a routine, placed relative to named hooks
  (`before`/`after`), or replacing one (`replaces`), with the context fields it `writes`;
- `roles`: exclusive roles it fills ("personalization", "server_update", "model", ...): two
  active plug-ins filling one role are refused at start-up;
- its server side: `transform_aggregate` (chained, in plan order) and, for the one plug-in with
  the "server_update" role, `server_update`;
- `local_parameters(names)`: parameter names that never travel (kept per client);
- `wrap_model(model, make)`: for the plug-in with the "model" role, the model the clients train;
- per-client state: `self.state(ctx)` is this plug-in's own dict for the client being visited,
  kept between rounds by the runner (tensors only);
- `vectorizes` and the `cohort_*` forms of its client hooks, for the vectorized backend
  (docs/vectorized.md).
Each plug-in sees its own frozen config section as `self.section` and the whole config read-only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from fedplug.config import ConfigNode
from fedplug.core.context import Context
from fedplug.core.hooks import HookFn, HookTable
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


class Plugin:
    """Base class of every algorithm; override only what the algorithm changes."""

    name: ClassVar[str]  # registry name = config section
    method: ClassVar[str] = ""  # FederatedScope's `federate.method` value, e.g. "FedProx"
    roles: ClassVar[tuple[str, ...]] = ()
    # The vectorized backend runs a cohort of clients at once only with plug-ins that declare it
    # and give the cohort form of their client hooks (the cohort_* methods below); with any other
    # plug-in it says so in one line and runs the client routines one at a time.
    vectorizes: ClassVar[bool] = False

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

    def transform_aggregate(self, old: Params, aggregate: Params) -> Params:
        return aggregate

    def server_update(self, old: Params, aggregate: Params) -> Params:
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
