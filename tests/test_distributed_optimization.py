"""FedProx, FedOpt, FedBN: equivalence with FedAvg where theory says so, and one step by hand."""
from __future__ import annotations

import pytest
import torch


from fedplug.backends.sequential import SequentialBackend
from fedplug.core.messages import RoundFacts
from fedplug.data import build_data
from fedplug.models import build_model
from fedplug.run.plan import build_plan
from fedplug.run.simulation import run


def same(a: dict, b: dict) -> bool:
    keys = ("best_round", "test_acc", "val_acc", "val_loss", "test_loss", "rounds_run")
    return all(a[k] == b[k] for k in keys)


@pytest.fixture(scope="module")
def fedavg(tmp_path_factory, data_root):
    from conftest import SMALL
    from fedplug.config import load_config

    cfg = load_config(None, {**SMALL, "data.root": str(data_root), "outdir": str(tmp_path_factory.mktemp("avg"))})
    return run(cfg)


@pytest.mark.parametrize("overrides", [
    {"fedprox__use": True, "fedprox__mu": 0.0},
    {"federate__method": "FedOpt", "fedopt__optimizer__lr": 1.0},
    {"fedbn__use": True},  # the LR model has no normalization parameter
    {"personalization__local_param": ["no_such_layer"]},
], ids=["fedprox_mu0", "fedopt_sgd_lr1", "fedbn_no_match", "local_param_no_match"])
def test_equals_fedavg_exactly(small_cfg, fedavg, overrides) -> None:
    assert same(run(small_cfg(**overrides)), fedavg)


def test_nonzero_settings_do_change_the_result(small_cfg, fedavg) -> None:
    assert not same(run(small_cfg(fedprox__use=True, fedprox__mu=1.0)), fedavg)
    assert not same(run(small_cfg(fedopt__use=True, fedopt__optimizer__lr=0.5)), fedavg)


def visit(cfg, client: int = 0) -> tuple[dict, dict]:
    """Parameters before and after one local update of `client` from the initial model."""
    data = build_data(cfg)
    backend = SequentialBackend(cfg, build_model(cfg, data.input_shape, build_plan(cfg)), build_plan(cfg), data)
    start = {k: v.clone() for k, v in backend.shared_parameters().items()}
    return start, {k: v.clone() for k, v in backend.train_client(client, 1, start)["params"].items()}


def test_fedprox_step_by_hand(small_cfg) -> None:
    cfg = small_cfg(fedprox__use=True, fedprox__mu=0.7, train__local_update_steps=2, dataloader__batch_size=1000)
    start, after = visit(cfg)
    # two full-batch steps (the client has fewer than 1000 rows: each step sees all rows, reshuffled)
    x, y = build_data(cfg).splits["train"].client(0)
    w = {k: v.clone().requires_grad_(True) for k, v in start.items()}
    for _ in range(2):
        logits = x @ w["fc.weight"].T + w["fc.bias"]
        prox = sum(((w[k] - start[k]) ** 2).sum() for k in w)
        loss = torch.nn.functional.cross_entropy(logits, y) + 0.7 / 2 * prox
        grads = torch.autograd.grad(loss, list(w.values()))
        w = {k: (v - 0.1 * g).detach().requires_grad_(True) for (k, v), g in zip(w.items(), grads)}
    for k in w:
        torch.testing.assert_close(after[k], w[k].detach(), rtol=1e-5, atol=1e-6)


def server_step(small_cfg, aggregate_values, **overrides) -> list[torch.Tensor]:
    plan = build_plan(small_cfg(fedopt__use=True, **overrides))
    global_params = {"p": torch.tensor([1.0, -2.0])}
    out = []
    for value in aggregate_values:
        facts = RoundFacts(len(out) + 1, 12, (0,), global_params)
        global_params = plan.update_global(global_params, {"p": torch.tensor(value)}, facts)
        out.append(global_params["p"])
    return out


def test_fedopt_sgd_momentum_by_hand(small_cfg) -> None:
    steps = server_step(small_cfg, [[0.0, 0.0], [0.0, 0.0]], fedopt__optimizer__lr=0.5,
                        fedopt__optimizer__momentum=0.9)
    # delta1 = (-1, 2): m1 = delta1, x1 = (1, -2) + 0.5 * m1 = (0.5, -1)
    # delta2 = (-0.5, 1): m2 = 0.9 * m1 + delta2 = (-1.4, 2.8), x2 = x1 + 0.5 * m2 = (-0.2, 0.4)
    torch.testing.assert_close(steps[0], torch.tensor([0.5, -1.0]))
    torch.testing.assert_close(steps[1], torch.tensor([-0.2, 0.4]))


@pytest.mark.parametrize("kind", ["Adam", "Adagrad", "Yogi"])
def test_fedopt_adaptive_by_hand(small_cfg, kind: str) -> None:
    lr, b1, b2, eps = 0.1, 0.9, 0.99, 1e-3
    steps = server_step(small_cfg, [[0.0, 0.0], [0.5, 0.5]], fedopt__optimizer__type=kind,
                        fedopt__optimizer__lr=lr, fedopt__optimizer__betas=[b1, b2], fedopt__optimizer__eps=eps)
    x, m, v = torch.tensor([1.0, -2.0], dtype=torch.float64), 0.0, torch.full((2,), eps ** 2, dtype=torch.float64)
    for target, got in zip([[0.0, 0.0], [0.5, 0.5]], steps):
        delta = torch.tensor(target, dtype=torch.float64) - x
        m = b1 * m + (1 - b1) * delta
        if kind == "Adam":
            v = b2 * v + (1 - b2) * delta ** 2
        elif kind == "Adagrad":
            v = v + delta ** 2
        else:
            v = v - (1 - b2) * delta ** 2 * torch.sign(v - delta ** 2)
        x = x + lr * m / (v.sqrt() + eps)
        torch.testing.assert_close(got.double(), x, rtol=1e-5, atol=1e-6)


def test_fedopt_yogi_at_a_tie_keeps_v_and_the_moments_are_the_checkpoints_state(small_cfg) -> None:
    """Yogi's sign(v - delta^2) is 0 where they are equal: v stays. The moments are what a checkpoint saves under
    `server/fedopt/first_moment/...` and `.../second_moment/...`: these names are the checkpoint's format."""
    lr, b1, b2, eps = 0.1, 0.9, 0.99, 0.5  # v starts at eps^2 = 0.25
    plan = build_plan(small_cfg(fedopt__use=True, fedopt__optimizer__type="Yogi", fedopt__optimizer__lr=lr,
                                fedopt__optimizer__betas=[b1, b2], fedopt__optimizer__eps=eps))
    old = {"p": torch.tensor([0.0, 0.0, 0.0], dtype=torch.float64)}
    new = plan.update_global(old, {"p": torch.tensor([0.5, 1.0, 0.1], dtype=torch.float64)},
                             RoundFacts(1, 12, (0,), old))
    # delta = (0.5, 1, 0.1), delta^2 = (0.25, 1, 0.01): v - delta^2 = (0, -0.75, 0.24) -> sign (0, -1, 1)
    m = torch.tensor([0.05, 0.1, 0.01], dtype=torch.float64)
    v = torch.tensor([0.25, 0.25 + 0.01 * 1.0, 0.25 - 0.01 * 0.01], dtype=torch.float64)
    torch.testing.assert_close(new["p"], lr * m / (v.sqrt() + eps), rtol=0, atol=1e-15)
    state = plan.plugins[0].server_state()
    assert set(state) == {"first_moment", "second_moment"}
    torch.testing.assert_close(state["first_moment"]["p"], m, rtol=0, atol=1e-15)
    torch.testing.assert_close(state["second_moment"]["p"], v, rtol=0, atol=1e-15)


def test_fedbn_keeps_matching_parameters_local(small_cfg) -> None:
    cfg = small_cfg(personalization__local_param=["bias"], federate__total_round_num=2)
    data, plan = build_data(cfg), build_plan(cfg)
    backend = SequentialBackend(cfg, build_model(cfg, data.input_shape, plan), plan, data)
    start = {k: v.clone() for k, v in backend.shared_parameters().items()}
    assert list(start) == ["fc.weight"]  # the bias is never uploaded
    initial_bias = backend.model.fc.bias.detach().clone()
    backend.train_client(3, 1, start)
    bias_after_3 = backend.model.fc.bias.detach().clone()
    backend.train_client(4, 1, start)
    backend.download(3, start)  # client 3 gets its own bias back, not client 4's, not the download's
    assert torch.equal(backend.model.fc.bias, bias_after_3)
    backend.download(7, start)  # a client never trained starts from the initial model
    assert torch.equal(backend.model.fc.bias, initial_bias)


@pytest.mark.parametrize("keys, patterns", [
    ({"fedbn.use": True}, ("bn", "norm")),
    ({"fedbn.use": True, "personalization.local_param": ["bias", "bn"]}, ("bias", "bn", "norm")),
    ({"federate.method": "FedBN"}, ("bn", "norm")),
    ({"federate.method": "fedbn", "personalization.local_param": ["head"]}, ("head", "bn", "norm")),
    ({"personalization.local_param": ["bias"]}, ("bias",)),  # local layers by name only: no norm patterns
])
def test_fedbn_local_patterns_and_the_plan_line(keys: dict, patterns: tuple) -> None:
    from fedplug.config import load_config
    from fedplug.run.plan import describe_plan

    plan = build_plan(load_config(None, keys))
    (fedbn,) = [p for p in plan.plugins if p.name == "fedbn"]
    assert fedbn.patterns == patterns
    names = ["conv.bn1.weight", "layer_norm.bias", "fc.bias", "head.weight", "fc.weight"]
    assert fedbn.local_parameters(names) == {n for n in names if any(p in n for p in patterns)}
    assert f"  local              parameters matching {list(patterns)} stay on each client [fedbn]" in \
        describe_plan(plan).splitlines()
