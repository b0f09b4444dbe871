"""pFedMe: one step against a hand computation, the server transform, personalized evaluation,
a small run, the exclusive personalization role, the 0 boundaries of personalization.lr and grad.grad_clip, and
the forward passes per inner step."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch


from fedplug.algorithms.pfedme import PFedMe
from fedplug.backends import build_backend
from fedplug.backends.sequential import SequentialBackend
from fedplug.core.compose import CompositionError, compose
from fedplug.core.messages import RoundFacts
from fedplug.core.plugin import HookSpec, Plugin
from fedplug.core.trainer import Trainer
from fedplug.data import build_data
from fedplug.models import build_model
from fedplug.run.plan import build_plan
from fedplug.run.simulation import run

K, PERSONAL_LR, LR, LAMBDA = 2, 0.3, 0.2, 0.7


def records(result: dict) -> list[dict]:
    return [json.loads(line) for line in (Path(result["run_dir"]) / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("mu", [0.0, 0.5])
def test_one_step_equals_the_hand_computation(small_cfg, mu: float) -> None:
    cfg = small_cfg(pfedme__use=True, fedprox__use=mu > 0, fedprox__mu=mu, personalization__K=K,
                    personalization__lr=PERSONAL_LR, personalization__regular_weight=LAMBDA, train__optimizer__lr=LR,
                    train__local_update_steps=1, dataloader__batch_size=4)
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.5, -0.2, 0.1], [0.3, 0.4, -0.6]]))
        model.bias.copy_(torch.tensor([0.05, -0.1]))
    x = torch.tensor([[1.0, 2.0, -1.0], [0.5, -1.5, 2.0], [-2.0, 0.3, 0.7], [1.2, 1.1, 0.9]])
    y = torch.tensor([0, 1, 1, 0])
    received = {n: p.detach().clone() for n, p in model.named_parameters()}
    # A received model other than the start makes FedProx's term nonzero at the first step already.
    global_params = {n: t + 0.1 for n, t in received.items()}
    plan = build_plan(cfg)
    trainer = Trainer(model, cfg)
    trainer.hooks = plan.hook_tables()
    states = {name: {} for name in plan.names}
    trainer.train(x, y, torch.Generator().manual_seed(0), client_id=0, client_states=states,
                  global_params=global_params, trainer=trainer)

    names = list(received)
    theta = [received[n].clone().requires_grad_(True) for n in names]
    w = [received[n].clone() for n in names]
    for _ in range(K):
        loss = torch.nn.functional.cross_entropy(x @ theta[0].T + theta[1], y)
        loss = loss + mu * 0.5 * sum(((t - global_params[n]) ** 2).sum() for n, t in zip(names, theta))
        grads = torch.autograd.grad(loss, theta)
        with torch.no_grad():
            theta = [(t - PERSONAL_LR * (g + LAMBDA * (t - v))).requires_grad_(True)
                     for t, g, v in zip(theta, grads, w)]
    w = [v - LR * LAMBDA * (v - t.detach()) for v, t in zip(w, theta)]

    for i, name in enumerate(names):
        torch.testing.assert_close(states["pfedme"][name], theta[i].detach())  # kept: the personalized model
        torch.testing.assert_close(dict(model.named_parameters())[name].detach(), w[i])  # uploaded: w
    assert not torch.allclose(states["pfedme"]["weight"], model.weight)


def test_server_transform_interpolates_by_beta(small_cfg) -> None:
    old = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([[-3.0]])}
    aggregate = {"a": torch.tensor([3.0, 6.0]), "b": torch.tensor([[1.0]])}
    facts = RoundFacts(1, 12, (0, 1), old)
    half = PFedMe(small_cfg(pfedme__use=True, personalization__beta=0.5)).transform_aggregate(old, aggregate, facts)
    assert torch.equal(half["a"], torch.tensor([2.0, 4.0])) and torch.equal(half["b"], torch.tensor([[-1.0]]))
    full = PFedMe(small_cfg(pfedme__use=True, personalization__beta=1.0))
    assert all(torch.equal(full.transform_aggregate(old, aggregate, facts)[n], aggregate[n]) for n in aggregate)
    assert full.describe_server() == ["transform          new = (1 - beta) * old + beta * aggregate, beta = 1.0"]


def test_evaluation_uses_the_personalized_model(small_cfg) -> None:
    cfg = small_cfg(pfedme__use=True, personalization__regular_weight=1.0)
    data, plan = build_data(cfg), build_plan(cfg)
    model = build_model(cfg, data.input_shape, plan)
    backend = SequentialBackend(cfg, model, plan, data)
    global_params = {k: v.clone() for k, v in backend.shared_parameters().items()}
    trained = [1, 4]
    for client in trained:
        backend.train_client(client, 1, global_params)
    personalized = backend.evaluate(global_params, "val")

    theta = backend.client_states(1)["pfedme"]
    plain = Trainer(build_model(cfg, data.input_shape), cfg)
    plain.model.load_state_dict(theta)
    assert plain.evaluate(*data.splits["val"].client(1), split="val") == personalized[1]

    for client in trained:
        backend.client_states(client)["pfedme"].clear()
    with_global = backend.evaluate(global_params, "val")
    for client in range(data.num_clients):
        if client in trained:
            assert personalized[client]["val_loss_sum"] != with_global[client]["val_loss_sum"]
        else:  # never trained: judged by the global model
            assert personalized[client] == with_global[client]


def test_a_small_run_learns_and_repeats(small_cfg) -> None:
    cfg = small_cfg(pfedme__use=True, personalization__K=3, personalization__regular_weight=1.0)
    first, second = run(cfg), run(cfg)
    lines = records(first)
    assert first["method"] == "pFedMe"
    assert lines[-1]["val_loss"] < lines[0]["val_loss"]
    assert lines == records(second)
    assert {k: v for k, v in first.items() if k != "run_dir"} == {k: v for k, v in second.items() if k != "run_dir"}


def test_two_personalization_plugins_are_refused(small_cfg) -> None:
    class OtherPersonal(Plugin):
        name = "otherpersonal"
        roles = ("personalization",)

    cfg = small_cfg(pfedme__use=True)
    with pytest.raises(CompositionError) as err:
        compose([PFedMe(cfg), OtherPersonal(cfg)])
    message = str(err.value)
    assert "pfedme" in message and "otherpersonal" in message and "'personalization'" in message


def trained(small_cfg, backend: str, **keys) -> list[dict[str, torch.Tensor]]:
    """Round 1 of clients 0-2 on `backend`: each client's upload (w) and kept personalized model (theta)."""
    cfg = small_cfg(pfedme__use=True, federate__backend=backend, personalization__regular_weight=0.5,
                    personalization__K=2, **keys)
    data, plan = build_data(cfg), build_plan(cfg)
    runner = build_backend(cfg, build_model(cfg, data.input_shape, plan), plan, data)
    received = {n: t.clone() for n, t in runner.shared_parameters().items()}
    uploads = list(runner.train_cohort([0, 1, 2], 1, received, {}))
    return [{**{f"w.{n}": t.clone() for n, t in u.params.items()},
             **{f"theta.{n}": t.clone() for n, t in runner.client_states(u.client)["pfedme"].items()}}
            for u in uploads]


def same(a: list[dict[str, torch.Tensor]], b: list[dict[str, torch.Tensor]]) -> bool:
    return all(x.keys() == y.keys() and all(torch.equal(x[n], y[n]) for n in x) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("backend", ["sequential", "vectorized"])
def test_zero_personal_lr_and_zero_grad_clip_are_the_documented_defaults(small_cfg, backend: str) -> None:
    """personalization.lr <= 0 takes train.optimizer.lr, and grad.grad_clip <= 0 disables clipping: 0 is the
    boundary of both (the defaults are -1), so 0 must give, bit for bit, what the explicit setting gives."""
    explicit = trained(small_cfg, backend, personalization__lr=0.1, grad__grad_clip=-1.0)
    assert same(trained(small_cfg, backend, personalization__lr=0.0, grad__grad_clip=0.0), explicit)
    assert not same(trained(small_cfg, backend, personalization__lr=0.05, grad__grad_clip=-1.0), explicit)


SEEN: list[str] = []


class ForwardCounter(Plugin):
    """A user's forward hook, as FedProx's term is (pFedMe runs the forward hooks once per inner step), and the
    batches' ends."""

    name = "pf_forward_counter"

    def hooks(self) -> list[HookSpec]:
        return [HookSpec("on_batch_forward", lambda ctx: SEEN.append("forward"), "pf_count",
                         after=("_hook_on_batch_forward",)),
                HookSpec("on_batch_end", lambda ctx: SEEN.append("end"), "pf_end")]


@pytest.mark.parametrize("semantics", ["paper", "federatedscope"])
def test_the_forward_hooks_run_once_per_inner_step(register, small_cfg, semantics: str) -> None:
    """K inner steps cost K forward passes: the first step uses the loss the batch's forward already computed
    (paper: K steps per batch; federatedscope: one step per batch call, K calls per batch)."""
    register(ForwardCounter)
    SEEN.clear()
    cfg = small_cfg(pfedme__use=True, pfedme__semantics=semantics, pf_forward_counter__use=True,
                    personalization__K=3, train__local_update_steps=2)
    data, plan = build_data(cfg), build_plan(cfg)
    runner = SequentialBackend(cfg, build_model(cfg, data.input_shape, plan), plan, data)
    runner.train_client(0, 1, {n: t.clone() for n, t in runner.shared_parameters().items()})
    ends = SEEN.count("end")
    assert ends == (2 if semantics == "paper" else 14)  # federatedscope: 3 epochs, 2 passes of 6 batches, then 2
    assert SEEN.count("forward") == (3 if semantics == "paper" else 1) * ends


CALLS: list[tuple] = []
BATCH_FIELDS = ("batch_index", "x_batch", "y_batch", "batch_size")


class ScheduleProbe(Plugin):
    """Records each epoch's permutation, each batch call's rows and position, and what outlives an epoch."""

    name = "pf_schedule_probe"

    def hooks(self) -> list[HookSpec]:
        return [HookSpec("on_epoch_start", lambda ctx: CALLS.append(("epoch", ctx.batch_order.clone())), "pf_order",
                         after=("_hook_on_epoch_start_shuffle",)),
                HookSpec("on_batch_end", lambda ctx: CALLS.append(("call", ctx.batch_index.clone(), ctx.cur_batch_i)),
                         "pf_rows"),
                HookSpec("on_epoch_end", lambda ctx: CALLS.append(("left", [n for n in BATCH_FIELDS if n in vars(ctx)])),
                         "pf_left")]


def test_federatedscopes_batch_schedule_against_a_model_of_it(register, small_cfg) -> None:
    """FederatedScope's pFedMe fetches the epoch permutation's next batch at every K-th call, calls counted over the
    visit (so a batch may carry over an epoch's end), and reuses it in between; the loop's batch position and the
    batch fields' lifetime stay as for any routine."""
    register(ScheduleProbe)
    CALLS.clear()
    k, size = 2, 16
    cfg = small_cfg(pfedme__use=True, pfedme__semantics="federatedscope", pf_schedule_probe__use=True,
                    personalization__K=k, train__local_update_steps=2, dataloader__batch_size=size)
    data, plan = build_data(cfg), build_plan(cfg)
    runner = SequentialBackend(cfg, build_model(cfg, data.input_shape, plan), plan, data)
    runner.train_client(0, 1, {n: t.clone() for n, t in runner.shared_parameters().items()})
    calls, fetched, order, position, current, most = 0, 0, None, 0, None, 0
    for event in CALLS:
        if event[0] == "epoch":
            order, fetched, position = event[1], 0, 0
        elif event[0] == "call":
            if calls % k == 0:
                current, fetched = order[fetched * size:(fetched + 1) * size], fetched + 1
                most = max(most, fetched)
            assert torch.equal(event[1], current) and event[2] == position
            calls, position = calls + 1, position + 1
        else:
            assert event[1] == []  # a reused batch's fields end with its call too
    # client 0's 86 rows: a full pass of 6 calls (3 fetches), then 2 calls (1 fetch), 2 steps x K = 4 fetches
    assert calls == 8 and most == 3
