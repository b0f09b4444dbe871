"""The vectorized backend: a round's sampled clients train together, parameters stacked on a client axis.

Same numbers as the sequential backend (within float rounding, tests/test_vectorized.py): each
client draws its batches from its own generator in the same order, takes exactly the same steps,
and keeps the same state (local parameters, buffers, plug-in states in the same per-client
stores). Only the arithmetic is batched: `functional_call` under `vmap` over the cohort, one
backward for all clients, SGD on the stacked tensors. Cohorts are cut into chunks of
`federate.vectorized.chunk_size` clients (0: as many as `memory_mb` allows).

What cannot vectorize is named, never silently run another way: a plug-in that does not declare
`vectorizes`, or a layer without a vmap batching rule (nn.LSTM, nn.GRU, nn.RNN; CharLSTM's
StackedLSTM has one: models/vmap_lstm.py) or with random draws (dropout), makes
the whole client routine run one client at a time through the sequential backend, and
`blockers()` says why in one line each (logged at start, printed by `fedplug plan`).
"""
from __future__ import annotations

import logging
from types import MappingProxyType
from typing import Any, Iterator

import torch
from torch import nn

from fedplug.backends.cohort import Cohort, Gradient
from fedplug.backends.evaluation import evaluate_global, evaluate_per_client
from fedplug.backends import masked_norm
from fedplug.backends.functional import make_forward, make_masked_forward, stack
from fedplug.backends.sequential import SequentialBackend
from fedplug.config import ConfigNode
from fedplug.core.compose import CompositionError, Plan
from fedplug.core.params import Params
from fedplug.core.messages import Upload
from fedplug.core.plugin import LocalView, Plugin, overrides
from fedplug.data.federated import FederatedData

logger = logging.getLogger("fedplug")


def _no_client_code(plugin: Plugin) -> bool:
    cls = type(plugin)
    return not plugin.hooks() and cls.wrap_model is Plugin.wrap_model and not plugin.extra_routines()


TRAIN_FORMS = ("cohort_penalty", "cohort_fit_start", "cohort_step", "cohort_fit_end", "cohort_losses")
EVAL_FORMS = ("cohort_eval_params", "cohort_eval_outputs")


def check_cohort_forms(plan: Plan) -> None:
    """A plug-in that claims `vectorizes` must give the cohort form of each routine it hooks into:
    otherwise its hooks would silently not run on cohorts. Refused with a sentence instead."""
    for plugin in plan.plugins:
        if not plugin.vectorizes:
            continue
        routines = {spec.routine for spec in plugin.hooks()} | ({"train"} if plugin.extra_routines() else set())
        for routine, forms in (("train", TRAIN_FORMS), ("eval", EVAL_FORMS)):
            if routine in routines and not any(overrides(plugin, form) for form in forms):
                raise CompositionError(
                    f"{plugin.name} declares `vectorizes` and hooks into the {routine} routine, but defines none of "
                    f"{', '.join(forms)}: its hooks would not run on cohorts. Give their cohort form, or set "
                    "vectorizes = False (the backend then runs client routines one client at a time)")


def plugin_blockers(plan: Plan) -> list[str]:
    """One line per active plug-in whose client side has no cohort form."""
    return [f"{p.name} {p.sequential_reason or 'does not declare `vectorizes`'}: client routines run one client at a "
            "time (sequential)" for p in plan.plugins if not (p.vectorizes or _no_client_code(p))]


def model_blockers(model: nn.Module) -> list[str]:
    """One line per layer type that cannot run under vmap with the sequential backend's numbers."""
    lines = []
    for kind in sorted({type(m).__name__ for m in model.modules() if isinstance(m, nn.RNNBase)}):
        hint = "; fedplug.models.vmap_lstm.StackedLSTM is an LSTM that vectorizes" if kind == "LSTM" else ""
        lines.append(f"the model's {kind} layer has no vmap batching rule in PyTorch: client routines run one "
                     f"client at a time (sequential{hint})")
    if any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules()):
        lines.append("the model has dropout, whose random draws under vmap differ from the sequential ones: "
                     "client routines run one client at a time (sequential)")
    return lines


def size_blockers(model: nn.Module, cfg: ConfigNode) -> list[str]:
    """A model too big for a cohort to pay on CPU (`federate.vectorized.max_params`)."""
    limit = cfg.federate.vectorized.max_params
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if limit and count > limit and all(p.device.type == "cpu" for p in model.parameters()):
        return [f"the model has {count:,} parameters, over federate.vectorized.max_params ({limit:,}): on CPU its "
                "steps are bound by arithmetic and memory traffic, which a cohort does not reduce: client routines "
                "run one client at a time (sequential; set max_params 0 to vectorize anyway)"]
    return []


class VectorizedBackend(SequentialBackend):
    """Shares the sequential backend's stores (kept tensors, plug-in states) and falls back to it when blocked."""

    def __init__(self, cfg: ConfigNode, model: nn.Module, plan: Plan, data: FederatedData) -> None:
        super().__init__(cfg, model, plan, data)
        check_cohort_forms(plan)
        self.reasons = plugin_blockers(plan) + model_blockers(model) + size_blockers(model, cfg)
        for line in self.reasons:
            logger.warning("vectorized backend: %s", line)
        if self.reasons:
            return  # everything goes through the sequential backend
        self.forward = make_forward(model)
        self.trainable_names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.in_major = {f"{name}.weight" if name else "weight" for name, m in model.named_modules()
                         if isinstance(m, nn.Linear)}
        self.buffer_names = [n for n, _ in model.named_buffers()]
        self.batch_dependent = masked_norm.install(model)  # BatchNorm: statistics over a client's real rows
        self.masked_forward = make_masked_forward(model)
        self.loss_plugins = [p for p in plan.plugins if type(p).cohort_losses is not Plugin.cohort_losses]
        self._initial_all = self._read(self.trainable_names + self.buffer_names)
        self.chunk_train, self.chunk_eval = self._chunk_sizes()
        self.row_owners: dict[str, torch.Tensor] = {}  # split -> client of each row (global evaluation)

    @property
    def vectorized(self) -> bool:
        return not self.reasons

    # -- sizing -----------------------------------------------------------------------------------
    def _chunk_sizes(self) -> tuple[int, int]:
        """Clients per chunk for training and for evaluation: the configured size, else from the budget."""
        vec = self.cfg.federate.vectorized
        if vec.chunk_size > 0:
            return vec.chunk_size, vec.chunk_size
        state = sum(t.numel() for t in self._initial_all.values())
        per_row = self._activation_floats()
        budget = vec.memory_mb * 2**20 / 4  # in float32s
        rows = min(max(self.data.splits["val"].sizes() + self.data.splits["test"].sizes()), self.cfg.eval.batch_size)
        # training: parameters, gradients, momentum, update temporaries; activations kept for backward
        train = 4 * state + 3 * self.cfg.dataloader.batch_size * per_row
        evaluation = state + rows * per_row
        return max(1, int(budget // train)), max(1, int(budget // evaluation))

    def _activation_floats(self) -> int:
        """Floats one input row produces through the model (inputs and every module's output)."""
        sizes: list[int] = []
        hooks = [m.register_forward_hook(lambda _m, _i, out: sizes.append(out.numel() if torch.is_tensor(out) else 0))
                 for m in self.model.modules()]
        x = self.data.splits["train"].x[:1]
        try:
            with torch.no_grad():
                self.model.eval()
                self.model(x)
        finally:
            for h in hooks:
                h.remove()
        return x.numel() + sum(sizes)

    # -- training ---------------------------------------------------------------------------------
    def stacked_start(self, clients: list[int], received: Params) -> tuple[Params, Params]:
        """What each client's model holds after the download: stacked trainable leaves and buffers."""
        count = len(clients)
        kept = [self._kept.get(c, self._initial_kept) for c in clients] if self.kept_names else []
        params = {}
        for name in self.trainable_names:
            if name in received:  # one copy per client, made in `leaves`; the expand itself is a view
                one = self._laid_out(name, received[name].detach())
                params[name] = one.unsqueeze(0).expand(count, *one.shape)
            else:
                params[name] = torch.stack([k[name] for k in kept]).to(self.device)
        buffers = stack(kept, self.buffer_names, self.device) if self.buffer_names else {}
        return self.leaves(params), buffers

    def _laid_out(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """`t` in the layout its stacked leaf will have (one transposing copy, not one per client)."""
        return t.mT.contiguous().mT if name in self.in_major else t

    def leaves(self, stacked: Params) -> Params:
        """Fresh leaves requiring grad. A Linear weight (C, out, in) is laid out in-major, the layout its
        batched gradient comes in: the update then streams both in order (about 10x faster for a big layer)."""
        out = {}
        for name, t in stacked.items():
            t = t.mT.contiguous().mT if name in self.in_major else t.clone()
            out[name] = t.requires_grad_(True)
        return out

    def train_cohort(self, clients: list[int], round_num: int, global_params: Params,
                     extras: dict[str, Params] | None = None) -> Iterator[Upload]:
        if not self.vectorized:
            yield from super().train_cohort(clients, round_num, global_params, extras)
            return
        extras = extras or {}
        for start in range(0, len(clients), self.chunk_train):
            chunk = clients[start:start + self.chunk_train]
            with self.visiting(chunk):
                yield from self._train_chunk(chunk, round_num, global_params, extras)

    def _train_chunk(self, chunk: list[int], round_num: int, global_params: Params,
                     extras: dict[str, Params]) -> Iterator[Upload]:
        train = self.cfg.train
        penalties = [p for p in self.plan.plugins if type(p).cohort_penalty is not Plugin.cohort_penalty]
        steppers = [p for p in self.plan.plugins if type(p).cohort_step is not Plugin.cohort_step]
        for client in chunk:
            self.init_states(client, global_params)
        cohort = Cohort(self, chunk, round_num, global_params)
        for plugin in self.plan.plugins:
            plugin.cohort_fit_start(cohort)

        def penalty(params: Params) -> torch.Tensor:
            return sum(p.cohort_penalty(params, cohort.received) for p in penalties)

        step = steppers[0].cohort_step(cohort) if steppers else None
        loss_sum, samples, steps = cohort.train(cohort.params, train.local_update_steps, train.optimizer.lr,
                                                penalty if penalties else None, step,
                                                self._gradient_point(cohort, extras))
        for plugin in self.plan.plugins:
            plugin.cohort_fit_end(cohort)
        self._keep(cohort)
        position = {c: i for i, c in enumerate(cohort.clients)}  # the cohort runs largest first
        samples, steps, loss_sum = samples.tolist(), steps.tolist(), loss_sum.tolist()  # one transfer each
        for client in chunk:
            i = position[client]
            n = int(samples[i])
            params = {name: cohort.params[name][i].detach() for name in self.shared_names}
            metrics = {"train_total": n, "train_steps": int(steps[i]), "train_loss": float(loss_sum[i]) / max(n, 1)}
            params, uploads = self._uploads(client, round_num, params, global_params, extras, metrics)
            yield Upload(client, params, metrics, uploads)

    def _gradient_point(self, cohort: Cohort, extras: dict[str, Params]) -> Gradient | None:
        """The plan's gradient transforms on stacked gradients, with each plug-in's client states stacked."""
        plugins = self.plan.with_method("transform_gradients")
        if not plugins:
            return None
        lr = self.cfg.train.optimizer.lr
        stacked = {p.name: stack(states, list(states[0])) if states[0] else {}
                   for p in plugins for states in [cohort.states(p.name)]}

        def gradient(grads: Params, params: Params, k: int) -> Params:
            for plugin in plugins:
                # the clients still training, read-only: the kept states change at upload only
                state = MappingProxyType({n: t[:k] for n, t in stacked[plugin.name].items()})
                grads = plugin.transform_gradients(grads, LocalView(params, cohort.received,
                                                                    extras.get(plugin.name, {}), state, lr))
            return grads

        return gradient

    def _keep(self, cohort: Cohort) -> None:
        if not self.kept_names:
            return
        tensors = {**cohort.params, **cohort.buffers}
        for i, client in enumerate(cohort.clients):
            self._kept[client] = {n: tensors[n][i].detach().to(self.state_device, copy=True) for n in self.kept_names}

    # -- evaluation -------------------------------------------------------------------------------
    def evaluate(self, global_params: Params, split: str, clients: range | None = None) -> list[dict[str, Any]]:
        if not self.vectorized:
            return super().evaluate(global_params, split, clients)
        if not self.per_client_eval:
            return evaluate_global(self, global_params, split, clients)
        return evaluate_per_client(self, global_params, split, clients)


def plan_lines(cfg: ConfigNode, plan: Plan) -> list[str]:
    """`fedplug plan`'s lines for this backend: vectorized, or each reason it is not."""
    from fedplug.models import build_model

    check_cohort_forms(plan)
    reasons = plugin_blockers(plan)
    try:  # the model's layers; its input size does not change which layers it has
        model = build_model(cfg, (784,), plan)
        reasons += model_blockers(model) + size_blockers(model, cfg)
    except Exception:  # noqa: BLE001  (a model that needs its data to be built is checked at run start)
        reasons.append("the model's layers are checked when the run starts")
    if not reasons:
        return ["backend: vectorized (every client routine runs on stacked cohorts)"]
    return [f"backend: vectorized, but {line}" for line in reasons]
