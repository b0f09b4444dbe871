"""FedEM: the E-step and pi update, the weighted loss, the mixture at evaluation, M = 1 = FedAvg, the fresh
mixture, the plan's server line, and what the forward hooks leave in the Context."""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from fedplug.algorithms.fedem import FedEM, MixtureModel
from fedplug.backends.sequential import SequentialBackend
from fedplug.config import load_config
from fedplug.core.context import Context
from fedplug.core.plugin import HookSpec, Plugin
from fedplug.data import build_data
from fedplug.models import build_model
from fedplug.run.plan import build_plan, describe_plan
from fedplug.run.simulation import run

# Two fixed components on 2 features, 2 classes, and four samples.
WEIGHTS = [([[1.0, -2.0], [0.5, 1.0]], [0.1, -0.3]), ([[-1.0, 0.5], [2.0, 0.0]], [0.0, 0.2])]
X = [[0.5, 1.0], [-1.0, 0.3], [2.0, -0.5], [0.0, 0.0]]
Y = [0, 1, 1, 0]


def records(result: dict) -> list[dict]:
    return [json.loads(line) for line in (Path(result["run_dir"]) / "metrics.jsonl").read_text().splitlines()]


def mixture() -> MixtureModel:
    components = []
    for weight, bias in WEIGHTS:
        layer = nn.Linear(2, 2)
        with torch.no_grad():
            layer.weight.copy_(torch.tensor(weight))
            layer.bias.copy_(torch.tensor(bias))
        components.append(layer)
    return MixtureModel(components)


def softmax_by_hand(m: int, x: list[float]) -> list[float]:
    weight, bias = WEIGHTS[m]
    logits = [sum(w * v for w, v in zip(row, x)) + b for row, b in zip(weight, bias)]
    exps = [math.exp(z) for z in logits]
    return [e / sum(exps) for e in exps]


def loss_by_hand(m: int, i: int) -> float:
    return -math.log(softmax_by_hand(m, X[i])[Y[i]])


def context(cfg, model: nn.Module, pi: list[float] | None) -> Context:
    state = {"fedem": {} if pi is None else {"pi": torch.tensor(pi)}}
    return Context(model=model, cfg=cfg, x=torch.tensor(X), y=torch.tensor(Y), client_states=state)


def test_e_step_and_pi_update_by_hand(small_cfg) -> None:
    plugin = FedEM(small_cfg(fedem__use=True, fedem__num_models=2))
    pi = [0.3, 0.7]
    ctx = context(plugin.cfg, mixture(), pi)
    plugin._hook_on_fit_start_e_step(ctx)
    joint = [[pi[m] * math.exp(-loss_by_hand(m, i)) for i in range(4)] for m in range(2)]
    q = [[joint[m][i] / (joint[0][i] + joint[1][i]) for i in range(4)] for m in range(2)]
    new_pi = [sum(q[m]) / 4 for m in range(2)]
    assert torch.allclose(ctx.fedem_q, torch.tensor(q), atol=1e-6)
    assert torch.allclose(ctx.model.pi, torch.tensor(new_pi), atol=1e-6)
    assert not torch.allclose(ctx.model.pi, torch.tensor(pi), atol=1e-3)  # it moved
    plugin._hook_on_fit_end_keep_pi(ctx)
    assert torch.equal(plugin.state(ctx)["pi"], ctx.model.pi)
    # A client's first visit starts from the uniform weights.
    first = context(plugin.cfg, mixture(), None)
    plugin._hook_on_fit_start_e_step(first)
    joint = [[0.5 * math.exp(-loss_by_hand(m, i)) for i in range(4)] for m in range(2)]
    expected = [sum(joint[m][i] / (joint[0][i] + joint[1][i]) for i in range(4)) / 4 for m in range(2)]
    assert torch.allclose(first.model.pi, torch.tensor(expected), atol=1e-6)


def test_weighted_loss_by_hand_and_separate_gradients(small_cfg) -> None:
    plugin = FedEM(small_cfg(fedem__use=True, fedem__num_models=2))
    model = mixture()
    model.pi = torch.tensor([0.4, 0.6])
    q = torch.tensor([[0.9, 0.2, 0.5, 0.7, 0.1], [0.1, 0.8, 0.5, 0.3, 0.9]])  # five training rows
    rows = [3, 0, 2]  # the batch: rows of the client's data; row 3 of X is sample 2 of the batch, etc.
    batch_x, batch_y = [X[1], X[0], X[3]], [Y[1], Y[0], Y[3]]
    sample = [1, 0, 3]  # which of X/Y each batch row is
    ctx = Context(model=model, cfg=plugin.cfg, x_batch=torch.tensor(batch_x), y_batch=torch.tensor(batch_y),
                  batch_index=torch.tensor(rows), fedem_q=q)
    plugin._hook_on_batch_forward_weighted(ctx)
    term = [sum(q[m, r].item() * loss_by_hand(m, s) for r, s in zip(rows, sample)) / 3 for m in range(2)]
    assert ctx.loss_task.item() == pytest.approx(sum(term), abs=1e-6)
    mixture_nll = -sum(math.log(0.4 * softmax_by_hand(0, X[s])[Y[s]] + 0.6 * softmax_by_hand(1, X[s])[Y[s]])
                       for s in sample) / 3
    assert ctx.loss_batch.item() == pytest.approx(mixture_nll, abs=1e-6)
    ctx.loss_task.backward()
    for m, layer in enumerate(model.components):
        # d/dW of mean_i q(m|i) * CE_m(i) = mean_i q(m|i) (p_m(x_i) - onehot(y_i)) x_i^T: component m's term only.
        grad = [[sum(q[m, r].item() * (softmax_by_hand(m, X[s])[c] - (Y[s] == c)) * X[s][j]
                     for r, s in zip(rows, sample)) / 3 for j in range(2)] for c in range(2)]
        assert torch.allclose(layer.weight.grad, torch.tensor(grad), atol=1e-6)
        assert layer.weight.grad.abs().sum() > 0


def test_one_component_is_fedavg_bit_for_bit(small_cfg) -> None:
    """Exact, not approximately: 12 rounds, where CrossEntropyLoss on the log-probs would differ by ~1e-9."""
    plain = run(small_cfg(federate__total_round_num=12))
    fedem = run(small_cfg(federate__total_round_num=12, fedem__use=True, fedem__num_models=1))
    assert fedem["method"] == "FedEM"
    for key in ("test_acc", "val_loss", "best_round", "test_loss"):
        assert fedem[key] == plain[key], key
    assert records(fedem) == records(plain)  # every figure of every evaluation, train loss included


def test_mixture_prediction_and_pi_never_travels(small_cfg) -> None:
    model = mixture()
    model.pi = torch.tensor([0.25, 0.75])
    out = model(torch.tensor(X))
    by_hand = [[math.log(0.25 * softmax_by_hand(0, x)[c] + 0.75 * softmax_by_hand(1, x)[c]) for c in range(2)]
               for x in X]
    assert torch.allclose(out, torch.tensor(by_hand), atol=1e-6)

    cfg = small_cfg(fedem__use=True, fedem__num_models=3)
    data, plan = build_data(cfg), build_plan(cfg)
    backend = SequentialBackend(cfg, build_model(cfg, data.input_shape, plan), plan, data)
    keys = set(backend.shared_parameters())
    assert keys == {f"components.{m}.fc.{p}" for m in range(3) for p in ("weight", "bias")}
    assert not backend.kept_names and "pi" not in backend.model.state_dict()
    start = {k: v.clone() for k, v in backend.shared_parameters().items()}
    assert set(backend.train_client(4, 1, start)["params"]) == keys
    pi = backend.client_states(4)["fedem"]["pi"]
    assert pi.shape == (3,) and not torch.allclose(pi, torch.full((3,), 1 / 3))
    # Evaluation: client 4 with its own pi, client 5 (never trained) with uniform weights.
    for client, weights in ((4, pi), (5, torch.full((3,), 1 / 3))):
        x, y = data.splits["val"].client(client)
        backend.download(client, start)
        backend.model.pi = weights
        with torch.no_grad():
            expected = -backend.model(x).gather(1, y.view(-1, 1)).sum().item()
        backend.model.pi = torch.full((3,), 0.0)  # the eval hook must set it from the state
        result = backend.evaluate(start, "val")[client]
        assert result["val_loss_sum"] == pytest.approx(expected, rel=1e-5)


def test_three_components_learn_and_are_deterministic(small_cfg) -> None:
    first = run(small_cfg(fedem__use=True, fedem__num_models=3))
    second = run(small_cfg(fedem__use=True, fedem__num_models=3))
    lines = records(first)
    assert lines[-1]["val_loss"] < lines[0]["val_loss"]
    assert lines == records(second)
    assert {k: v for k, v in first.items() if k != "run_dir"} == {k: v for k, v in second.items() if k != "run_dir"}


def test_alias_sets_num_models(small_cfg) -> None:
    cfg = small_cfg(federate__method="FedEM", model__model_num_per_trainer=2)
    assert cfg.fedem.num_models == 2
    assert load_config(None, ["model.model_num_per_trainer", "2"]).fedem.num_models == 2
    model = build_model(cfg, (60,), build_plan(cfg))
    assert isinstance(model, MixtureModel) and len(model.components) == 2


def test_fedprox_anchors_to_the_mixture_forward(small_cfg) -> None:
    """FedEM's forward keeps the core hook's name, so FedProx's term lands on FedEM's weighted loss."""
    plan = build_plan(small_cfg(fedem__use=True, fedprox__use=True, fedprox__mu=0.1))
    hooks = dict(iter(plan.tables["train"]))["on_batch_forward"]
    assert [(h.name, h.owner) for h in hooks] == [("_hook_on_batch_forward", "fedem"),
                                                  ("_hook_on_batch_forward_add_proximal_term", "fedprox")]


def test_a_fresh_mixture_is_the_mean_of_its_components_without_warnings() -> None:
    """Before any update pi is uniform: the mixture is log(mean_m p_m); log_softmax's class dimension is named
    (an implicit one is a deprecation warning, per batch)."""
    model = mixture()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = model(torch.tensor(X))
    by_hand = [[math.log((softmax_by_hand(0, x)[c] + softmax_by_hand(1, x)[c]) / 2) for c in range(2)] for x in X]
    assert torch.allclose(out, torch.tensor(by_hand), atol=1e-6)


def test_plan_names_the_components_aggregated_separately(small_cfg) -> None:
    text = describe_plan(build_plan(small_cfg(fedem__use=True, fedem__num_models=3))).splitlines()
    assert ("  components         each of the 3 component models is aggregated separately (per-tensor weighted mean); "
            "mixture weights stay on the clients [fedem]") in text


FIELDS = ("y_prob", "loss_batch", "loss_task")
SEEN: dict[str, list] = {}


class FieldProbe(Plugin):
    """What FedEM's forward hooks leave in the Context: at each batch's end (eval) and at each epoch's end."""

    name = "fedem_probe"

    def hooks(self) -> list[HookSpec]:
        def at_epoch_end(routine: str):
            return lambda ctx: SEEN.setdefault(routine, []).append({n for n in FIELDS if n in vars(ctx)})

        def eval_batch_end(ctx: Context) -> None:
            SEEN.setdefault("eval batch", []).append(torch.equal(ctx.loss_task, ctx.loss_batch))

        return [HookSpec("on_epoch_end", at_epoch_end("train"), "probe_train"),
                HookSpec("on_epoch_end", at_epoch_end("eval"), "probe_eval", routine="eval"),
                HookSpec("on_batch_end", eval_batch_end, "probe_eval_batch", routine="eval")]


def test_forward_fields_end_with_the_batch_and_eval_loss_task_is_the_mixture_nll(register, small_cfg) -> None:
    """y_prob and the losses hold a batch's graph (train) or outputs: kept past the batch they would hold its
    memory. In evaluation loss_task (a declared write, read by users' hooks) is the mixture NLL."""
    register(FieldProbe)
    SEEN.clear()
    cfg = small_cfg(fedem__use=True, fedem__num_models=2, fedem_probe__use=True)
    data, plan = build_data(cfg), build_plan(cfg)
    backend = SequentialBackend(cfg, build_model(cfg, data.input_shape, plan), plan, data)
    start = {k: v.clone() for k, v in backend.shared_parameters().items()}
    backend.train_client(1, 1, start)
    backend.evaluate(start, "val")
    assert SEEN["train"] and all(names == set() for names in SEEN["train"])
    assert SEEN["eval"] and all(names == set() for names in SEEN["eval"])
    assert SEEN["eval batch"] and all(SEEN["eval batch"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_on_a_gpu_the_data_in_host_memory_changes_nothing(small_cfg) -> None:
    """The E-step moves each chunk of the client's data (and the kept or uniform pi) to the model's device."""
    over = dict(fedem__use=True, fedem__num_models=2, device="cuda", federate__total_round_num=2)
    host, on_device = run(small_cfg(**over, data__placement="host")), run(small_cfg(**over, data__placement="device"))
    assert records(host) == records(on_device)
