"""Ditto: the personal update by hand, personal state across rounds and at evaluation, the pull of
lambda, a small run, composition with FedProx, the fallbacks of personalization's 0 settings, the plan text of
v's routine in both semantics, and what v's routine leaves in the Context."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from fedplug.algorithms.ditto import PERSONAL_REGULARIZER_HOOK, Ditto
from fedplug.backends.sequential import SequentialBackend
from fedplug.core.compose import compose
from fedplug.core.default_hooks import default_train_hooks
from fedplug.core.plugin import HookSpec, Plugin
from fedplug.core.trainer import Trainer
from fedplug.data import build_data
from fedplug.models import build_model
from fedplug.run.plan import build_plan, describe_plan
from fedplug.run.simulation import run
from fedplug.seeding import CLIENT_TRAINING, generator


def ditto_cfg(small_cfg, **overrides):
    return small_cfg(federate__method="Ditto", **overrides)


def clone(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in params.items()}


def load(model: torch.nn.Module, params: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(params[name])


def records(result: dict) -> list[dict]:
    return [json.loads(line) for line in (Path(result["run_dir"]) / "metrics.jsonl").read_text().splitlines()]


def without_run_dir(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "run_dir"}


def test_one_personal_step_by_hand_and_the_upload_is_the_global_model(small_cfg) -> None:
    lam, personal_lr, global_lr = 0.7, 0.3, 0.05
    cfg = ditto_cfg(small_cfg, dataloader__batch_size=8, train__local_update_steps=1, train__optimizer__lr=global_lr,
                    personalization__local_update_steps=1, personalization__lr=personal_lr,
                    personalization__regular_weight=lam)
    torch.manual_seed(0)
    x, y = torch.randn(6, 3), torch.tensor([0, 1, 1, 0, 1, 0])  # 6 rows, batch 8: one full batch per step
    model = torch.nn.Linear(3, 2)
    plan = compose([Ditto(cfg)])
    trainer = Trainer(model, cfg)
    trainer.hooks = plan.hook_tables()
    states: dict = {"ditto": {}}

    def grad_f(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        w = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        loss = torch.nn.functional.cross_entropy(x @ w["weight"].T + w["bias"], y)
        return dict(zip(w, torch.autograd.grad(loss, list(w.values()))))

    def visit(received: dict[str, torch.Tensor]) -> None:
        load(model, received)
        trainer.train(x, y, torch.Generator().manual_seed(1), client_id=0, client_states=states,
                      global_params=clone(received), trainer=trainer)

    w0 = clone(dict(model.named_parameters()))
    visit(w0)  # first visit: v starts at w0, where the pull term is zero
    v1 = clone(states["ditto"])
    assert all(torch.allclose(v1[k], w0[k] - personal_lr * grad_f(w0)[k], atol=1e-6) for k in w0)

    w1 = {k: v + torch.randn_like(v) for k, v in w0.items()}  # a new global model, away from v1
    visit(w1)
    g = grad_f(v1)
    expected_v2 = {k: v1[k] - personal_lr * (g[k] + lam * (v1[k] - w1[k])) for k in v1}
    assert all(torch.allclose(states["ditto"][k], expected_v2[k], atol=1e-6) for k in v1)
    # The model left for upload is the global model's update from w1, not v.
    g1 = grad_f(w1)
    assert all(torch.allclose(p, w1[k] - global_lr * g1[k], atol=1e-6) for k, p in model.named_parameters())


def make_backend(cfg) -> SequentialBackend:
    data, plan = build_data(cfg), build_plan(cfg)
    return SequentialBackend(cfg, build_model(cfg, data.input_shape, plan), plan, data)


def test_personal_model_persists_across_rounds_and_is_used_at_evaluation(small_cfg) -> None:
    # lambda = 0: the personal update is plain local training from the previous v, reproducible exactly.
    cfg = ditto_cfg(small_cfg, personalization__regular_weight=0.0, personalization__local_update_steps=7,
                    personalization__lr=0.3)
    backend = make_backend(cfg)
    client, other = 3, 5
    g0 = clone(backend.shared_parameters())
    g1 = clone(backend.train_client(client, 1, g0)["params"])  # some other global model for round 2
    v_first = clone(backend.client_states(client)["ditto"])
    assert not all(torch.equal(v_first[k], g1[k]) for k in g1)  # v is kept, not the upload

    backend.train_client(client, 2, g1)
    v_second = clone(backend.client_states(client)["ditto"])
    # Replay by hand: the plain routine from v_first, on the same client batches.
    reference = Trainer(backend.model, cfg)
    load(backend.model, v_first)
    x, y = backend.data.splits["train"].client(client)
    reference.train(x, y, generator(cfg.seed, CLIENT_TRAINING, 2, client), table=default_train_hooks(),
                    local_update_steps=7, lr=0.3)
    assert all(torch.equal(v_second[k], p) for k, p in backend.model.named_parameters())
    load(backend.model, g1)  # starting from the global model instead would give another v
    reference.train(x, y, generator(cfg.seed, CLIENT_TRAINING, 2, client), table=default_train_hooks(),
                    local_update_steps=7, lr=0.3)
    assert not all(torch.equal(v_second[k], p) for k, p in backend.model.named_parameters())

    # Evaluation: the trained client is judged by its v, a never-trained one by the global model.
    results = backend.evaluate(g1, "val")
    for who, params in ((client, v_second), (other, g1)):
        load(backend.model, params)
        expected = reference.evaluate(*backend.data.splits["val"].client(who), split="val")
        assert results[who] == expected
    load(backend.model, g1)
    assert results[client] != reference.evaluate(*backend.data.splits["val"].client(client), split="val")


def test_lambda_times_lr_one_pulls_v_to_within_one_gradient_step_of_the_global_model(small_cfg) -> None:
    # With lr * lambda = 1 each step is v <- w - lr * grad f(v): whatever v was, it ends within
    # lr * max ||grad f|| of w. For softmax regression ||grad f|| <= sqrt(2) * sqrt(max ||x||^2 + 1).
    lr, lam = 1e-3, 1e3
    cfg = ditto_cfg(small_cfg, personalization__regular_weight=lam, personalization__lr=lr)
    backend = make_backend(cfg)
    client = 4
    g0 = clone(backend.shared_parameters())
    backend.train_client(client, 1, g0)
    far = {k: v + 5.0 for k, v in g0.items()}  # a global model far from the client's v
    v_before = clone(backend.client_states(client)["ditto"])
    backend.train_client(client, 2, far)
    v = backend.client_states(client)["ditto"]
    x, _ = backend.data.splits["train"].client(client)
    bound = lr * math.sqrt(2) * math.sqrt(float((x.flatten(1) ** 2).sum(1).max()) + 1)

    def distance(a: dict, b: dict) -> float:
        return math.sqrt(sum(float(((a[k] - b[k]) ** 2).sum()) for k in b))

    assert distance(v_before, far) > 100 * bound  # it started far away
    assert distance(v, far) <= bound * 1.01 + 1e-5


def test_small_run_learns_and_is_deterministic(small_cfg) -> None:
    cfg = ditto_cfg(small_cfg)
    first, second = run(cfg), run(cfg)
    assert first["method"] == "Ditto"
    lines = records(first)
    assert lines[-1]["val_loss"] < lines[0]["val_loss"]
    assert without_run_dir(first) == without_run_dir(second)
    assert records(second) == lines


def test_ditto_composes_with_fedprox(small_cfg) -> None:
    cfg = ditto_cfg(small_cfg, fedprox__use=True, fedprox__mu=0.1)
    plan = build_plan(cfg)
    assert plan.label == "FedProx+Ditto"
    train, evaluate = plan.tables["train"], plan.tables["eval"]
    assert train.names("on_fit_start") == ["_hook_on_fit_start_ditto_personal", "_hook_on_fit_start_init"]
    assert train.names("on_batch_forward") == ["_hook_on_batch_forward", "_hook_on_batch_forward_add_proximal_term"]
    assert evaluate.names("on_fit_start") == ["_hook_on_fit_start_ditto_load_personal",
                                              "_hook_on_fit_start_eval_init"]
    ditto = next(p for p in plan.plugins if p.name == "ditto")
    # FedProx's term belongs to the global update only; the personal one carries Ditto's term.
    assert ditto.personal_table.names("on_batch_forward") == ["_hook_on_batch_forward", PERSONAL_REGULARIZER_HOOK]
    result = run(cfg)
    assert result["method"] == "FedProx+Ditto" and 0 < result["test_acc"] <= 1
    assert run(ditto_cfg(small_cfg))["test_acc"] != result["test_acc"]  # mu changed the global model


def test_personal_steps_and_lr_of_zero_mean_the_global_updates_own(small_cfg) -> None:
    """personalization.local_update_steps <= 0 and .lr <= 0 take train.local_update_steps and train.optimizer.lr;
    0 is the boundary (the defaults are -1), and 1 personal step is one step, not the fallback."""
    def personal_model(**keys) -> dict[str, torch.Tensor]:
        backend = make_backend(ditto_cfg(small_cfg, train__local_update_steps=5, train__optimizer__lr=0.1,
                                         personalization__regular_weight=0.5, **keys))
        backend.train_client(2, 1, clone(backend.shared_parameters()))
        return clone(backend.client_states(2)["ditto"])

    explicit = personal_model(personalization__local_update_steps=5, personalization__lr=0.1)
    fallback = personal_model(personalization__local_update_steps=0, personalization__lr=0.0)
    assert all(torch.equal(fallback[k], explicit[k]) for k in explicit)
    one_step = personal_model(personalization__local_update_steps=1, personalization__lr=0.1)
    assert not any(torch.equal(one_step[k], explicit[k]) for k in explicit)


PERSONAL_ROUTINE = {
    "paper": """\
client ditto personal (3 steps, lr 0.2) routine:
  on_fit_start       _hook_on_fit_start_init [core]
  on_epoch_start     _hook_on_epoch_start_shuffle [core]
  on_batch_start     _hook_on_batch_start_gather [core]
  on_batch_forward   _hook_on_batch_forward [core], _hook_on_batch_forward_ditto_add_personal_term [ditto]
  on_batch_backward  _hook_on_batch_backward [core]
  on_batch_end       _hook_on_batch_end [core]
  on_epoch_end       -
  on_fit_end         _hook_on_fit_end [core]""",
    "federatedscope": """\
client ditto personal (3 steps, a pass per epoch before w's batches, lr 0.2) routine:
  on_fit_start       _hook_on_fit_start_init [core], _hook_on_fit_start_ditto_optimizer [ditto]
  on_epoch_start     -
  on_batch_start     _hook_on_batch_start_ditto_stream [ditto]
  on_batch_forward   _hook_on_batch_forward [core], _hook_on_batch_forward_ditto_add_personal_term [ditto]
  on_batch_backward  _hook_on_batch_backward [core]
  on_batch_end       _hook_on_batch_end [core]
  on_epoch_end       -
  on_fit_end         _hook_on_fit_end [core]""",
}


@pytest.mark.parametrize("semantics", sorted(PERSONAL_ROUTINE))
def test_plan_prints_the_personal_routine_of_each_semantics(small_cfg, semantics) -> None:
    """`fedplug plan`'s text of v's routine: its hooks and owners, the step count and lr, and, under
    federatedscope semantics, that v takes a pass of the visit's one loader per epoch (no shuffle of its own)."""
    cfg = ditto_cfg(small_cfg, ditto__semantics=semantics, personalization__local_update_steps=3,
                    personalization__lr=0.2)
    text = describe_plan(build_plan(cfg))
    start = text.index("client ditto personal")
    assert text[start:].split("\nserver")[0] == PERSONAL_ROUTINE[semantics]


def test_personal_results_reach_a_users_hook_and_the_personal_terms_end_with_the_batch(register, small_cfg) -> None:
    """ctx.ditto_personal_results (a declared write) is v's routine's results; Ditto's per-batch fields in v's
    routine hold the batch's graph, so they must be gone when the epoch ends."""
    seen: list = []

    class Reader(Plugin):
        name = "ditto_reader"

        def hooks(self) -> list[HookSpec]:
            return [HookSpec("on_fit_start", lambda ctx: seen.append(ctx.ditto_personal_results), "read_personal",
                             after=("_hook_on_fit_start_ditto_personal",), before=("_hook_on_fit_start_init",))]

    register(Reader)
    cfg = ditto_cfg(small_cfg, ditto_reader__use=True, personalization__local_update_steps=3, dataloader__batch_size=4)
    backend = make_backend(cfg)
    ditto = next(p for p in backend.plan.plugins if p.name == "ditto")
    fields = ("ditto_loss_regular", "loss_task")
    at_batch_end, at_epoch_end = [], []
    ditto.personal_table.add("on_batch_end", lambda ctx: at_batch_end.append({n for n in fields if n in vars(ctx)}),
                             "probe_batch")
    ditto.personal_table.add("on_epoch_end", lambda ctx: at_epoch_end.append({n for n in fields if n in vars(ctx)}),
                             "probe_epoch")
    backend.train_client(1, 1, clone(backend.shared_parameters()))

    assert at_batch_end == [set(fields)] * 3  # there while the batch lasts
    assert at_epoch_end and all(names == set() for names in at_epoch_end)
    (results,) = seen
    assert results["train_steps"] == 3 and results["train_total"] == 3 * 4  # v's 3 steps, not w's 5
