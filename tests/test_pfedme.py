"""pFedMe: one step against a hand computation, the server transform, personalized evaluation,
a small run, and the exclusive personalization role."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch


from fedplug.algorithms.pfedme import PFedMe
from fedplug.backends.sequential import SequentialBackend
from fedplug.core.compose import CompositionError, compose
from fedplug.core.messages import RoundFacts
from fedplug.core.plugin import Plugin
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
