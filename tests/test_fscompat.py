"""`ditto.semantics` / `pfedme.semantics: federatedscope`: FederatedScope's schedules replayed by hand on tiny
cases (which batches train which model, in which order; w's updates per epoch; the counted samples that weight
the aggregation), which model is evaluated, and the vectorized backend's one line before it runs them sequentially."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fedplug.algorithms.ditto import Ditto
from fedplug.backends.sequential import SequentialBackend
from fedplug.backends.vectorized import VectorizedBackend
from fedplug.core.dropout import SeededDropout
from fedplug.core.trainer import Trainer
from fedplug.data import build_data
from fedplug.errors import ConfigError
from fedplug.models import build_model
from fedplug.run.plan import build_plan
from fedplug.run.simulation import run

X = torch.tensor([[1.0, 2.0, -1.0], [0.5, -1.5, 2.0], [-2.0, 0.3, 0.7], [1.2, 1.1, 0.9], [0.1, -0.4, 0.3],
                  [-0.8, 0.9, -1.3]])
Y = torch.tensor([0, 1, 1, 0, 1, 0])


def clone(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in params.items()}


def grad_f(params: dict[str, torch.Tensor], rows: torch.Tensor) -> dict[str, torch.Tensor]:
    w = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    loss = torch.nn.functional.cross_entropy(X[rows] @ w["weight"].T + w["bias"], Y[rows])
    return dict(zip(w, torch.autograd.grad(loss, list(w.values()))))


def tiny_trainer(cfg, seed: int, make=lambda: torch.nn.Linear(3, 2)) -> tuple[torch.nn.Module, Trainer, list]:
    """A model (Linear(3, 2)) trained through the plan's tables; each batch's (routine, rows) recorded at its end."""
    plan = build_plan(cfg)
    torch.manual_seed(seed)
    model = make()
    for plugin in plan.plugins:
        model = plugin.wrap_model(model, None)
    trainer = Trainer(model, cfg)
    trainer.hooks = plan.hook_tables()
    seen: list = []
    trainer.hooks["train"].add("on_batch_end", lambda ctx: seen.append(("G", ctx.batch_index.clone())), "record")
    for plugin in plan.plugins:
        if isinstance(plugin, Ditto):
            plugin.personal_table.add("on_batch_end", lambda ctx: seen.append(("P", ctx.batch_index.clone())),
                                      "record")
    return model, trainer, [seen, plan]


# 6 rows, 3 steps of each model. Per batch: (who, pass, its first batch_size rows or the rest), the passes drawn in
# order from the client's generator. Two batches a pass (batch 3, 4 or 5): epochs of P P G G (w's first batch
# starts a new pass), then a last epoch P G (w continues v's pass).
TWO_A_PASS = [("P", 0, "head"), ("P", 0, "tail"), ("G", 1, "head"), ("G", 1, "tail"), ("P", 2, "head"),
              ("G", 2, "tail")]
# drop_last with batch 4: one full batch a pass (the 2 rows left are dropped), so three epochs of P G, a pass each.
ONE_A_PASS = [(who, i, "head") for i, who in enumerate("PGPGPG")]


@pytest.mark.parametrize("batch_size, drop_last, momentum, schedule", [
    (4, False, 0.0, TWO_A_PASS), (3, False, 0.9, TWO_A_PASS), (5, False, 0.9, TWO_A_PASS),
    (4, True, 0.9, ONE_A_PASS)], ids=["batch4", "batch3-divides-momentum", "batch5-one-left-momentum",
                                      "batch4-drop-last-momentum"])
def test_ditto_alternates_personal_and_global_batches_each_epoch_from_one_loader(
        small_cfg, batch_size: int, drop_last: bool, momentum: float, schedule: list) -> None:
    plr, lr, lam = 0.3, 0.05, 0.7
    cfg = small_cfg(federate__method="Ditto", ditto__semantics="federatedscope", dataloader__batch_size=batch_size,
                    dataloader__drop_last=drop_last, train__local_update_steps=3, train__optimizer__lr=lr,
                    train__optimizer__momentum=momentum, personalization__local_update_steps=3,
                    personalization__lr=plr, personalization__regular_weight=lam)
    model, trainer, (seen, plan) = tiny_trainer(cfg, 0)
    initial = clone(dict(model.named_parameters()))
    received = {k: v + 0.3 for k, v in initial.items()}  # v starts at the initial model, not at what it received
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(received[n])
    states = {name: {} for name in plan.names}
    result = trainer.train(X, Y, torch.Generator().manual_seed(1), client_id=0, client_states=states,
                           global_params=clone(received), trainer=trainer)

    assert [who for who, _ in seen] == [who for who, _, _ in schedule]
    g = torch.Generator().manual_seed(1)
    passes = [torch.randperm(6, generator=g) for _ in range(schedule[-1][1] + 1)]
    expected = [passes[i][:batch_size] if part == "head" else passes[i][batch_size:] for _, i, part in schedule]
    assert all(torch.equal(rows, want) for (_, rows), want in zip(seen, expected))
    # Replay: v pulled toward the received w (frozen), w by plain SGD, in the recorded order; each model's
    # momentum lives for the whole visit (v's optimizer is kept across the epochs' personal batches).
    v, w = clone(initial), clone(received)
    v_buf: dict = {}
    w_buf: dict = {}
    for who, rows in seen:
        params, buf, rate = (v, v_buf, plr) if who == "P" else (w, w_buf, lr)
        grad = grad_f(params, rows)
        if who == "P":
            grad = {k: grad[k] + lam * (v[k] - received[k]) for k in v}
        for k in params:
            buf[k] = grad[k] if k not in buf else momentum * buf[k] + grad[k]
            params[k] = params[k] - rate * buf[k]
    assert all(torch.allclose(states["ditto"][k], v[k], atol=1e-6) for k in v)
    assert all(torch.allclose(p, w[k], atol=1e-6) for k, p in model.named_parameters())
    assert result["train_total"] == (12 if drop_last else 12 - batch_size)  # w's samples only weight the upload


def ditto_fs_cfg(small_cfg, **over):
    return small_cfg(federate__method="Ditto", ditto__semantics="federatedscope", dataloader__batch_size=4,
                     train__local_update_steps=3, personalization__local_update_steps=3, **over)


def test_ditto_dropout_masks_come_from_the_clients_generator_in_both_models_updates(small_cfg) -> None:
    """v's update inside w's epoch start hands the client's generator on too: torch's global one changes nothing."""
    def make() -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Linear(3, 8), SeededDropout(0.5), torch.nn.Linear(8, 2))

    results = []
    for global_seed in (0, 1):
        model, trainer, (_, plan) = tiny_trainer(ditto_fs_cfg(small_cfg), 0, make)
        states = {name: {} for name in plan.names}
        torch.manual_seed(global_seed)
        trainer.train(X, Y, torch.Generator().manual_seed(1), client_id=0, client_states=states,
                      global_params=clone(dict(model.named_parameters())), trainer=trainer)
        results.append((clone(dict(model.named_parameters())), states["ditto"]))
    (w0, v0), (w1, v1) = results
    assert all(torch.equal(w0[k], w1[k]) and torch.equal(v0[k], v1[k]) for k in w0)


def test_ditto_stream_batch_fields_end_with_the_batch_in_both_models_updates(small_cfg) -> None:
    """The loader's batch (rows, x, y, size) is batch-scoped, as the core gather's: kept to the epoch's end it
    would hold the batch's memory, and a hook there would read a stale batch."""
    fields = ("batch_index", "x_batch", "y_batch", "batch_size")
    model, trainer, (seen, plan) = tiny_trainer(ditto_fs_cfg(small_cfg), 0)
    at_epoch_end: list = []

    def look(ctx) -> None:
        at_epoch_end.append({n for n in fields if n in vars(ctx)})

    trainer.hooks["train"].add("on_epoch_end", look, "look")
    next(p for p in plan.plugins if isinstance(p, Ditto)).personal_table.add("on_epoch_end", look, "look")
    trainer.train(X, Y, torch.Generator().manual_seed(1), client_id=0, client_states={n: {} for n in plan.names},
                  global_params=clone(dict(model.named_parameters())), trainer=trainer)
    assert len(seen) == 6 and at_epoch_end == [set()] * 4  # 2 epochs of w, each with one epoch of v


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_ditto_federatedscope_with_the_data_in_host_memory_on_a_gpu(small_cfg) -> None:
    """The loader's batches are moved to the model's device (data.placement host: pinned host memory)."""
    over = dict(federate__method="Ditto", ditto__semantics="federatedscope", device="cuda", federate__total_round_num=2)
    host, on_device = run(small_cfg(**over, data__placement="host")), run(small_cfg(**over, data__placement="device"))
    assert {k: host[k] for k in ("val_loss", "test_acc")} == {k: on_device[k] for k in ("val_loss", "test_acc")}


def make_backend(cfg, cls=SequentialBackend):
    data, plan = build_data(cfg), build_plan(cfg)
    return cls(cfg, build_model(cfg, data.input_shape, plan), plan, data)


@pytest.mark.parametrize("semantics", ["paper", "federatedscope"])
def test_ditto_never_trained_client_is_evaluated_with_the_initial_or_the_global_model(small_cfg, semantics) -> None:
    backend = make_backend(small_cfg(federate__method="Ditto", ditto__semantics=semantics))
    initial = clone(backend.shared_parameters())
    far = {k: v + 1.0 for k, v in initial.items()}
    results = backend.evaluate(far, "val")
    backend.download(0, initial if semantics == "federatedscope" else far)
    expected = Trainer(backend.model, backend.cfg).evaluate(*backend.data.splits["val"].client(4), split="val")
    assert results[4] == expected


def test_ditto_federatedscope_needs_batch_steps(small_cfg) -> None:
    with pytest.raises(ConfigError, match="batch_or_epoch batch"):
        build_plan(small_cfg(federate__method="Ditto", ditto__semantics="federatedscope",
                             train__batch_or_epoch="epoch"))


def pfedme_cfg(small_cfg, **over):
    return small_cfg(federate__method="pFedMe", pfedme__semantics="federatedscope", personalization__lr=0.3,
                     personalization__regular_weight=0.7, train__optimizer__lr=0.2, **over)


def test_pfedme_moves_w_once_per_epoch_of_k_times_the_epochs(small_cfg) -> None:
    # One batch a pass (6 rows, batch 8), one step, K = 2: two epochs of one call each on the same batch.
    cfg = pfedme_cfg(small_cfg, personalization__K=2, dataloader__batch_size=8, train__local_update_steps=1)
    model, trainer, (seen, plan) = tiny_trainer(cfg, 0)
    w = clone(dict(model.named_parameters()))
    states = {name: {} for name in plan.names}
    result = trainer.train(X, Y, torch.Generator().manual_seed(1), client_id=0, client_states=states,
                           global_params=clone(w), trainer=trainer)
    theta = clone(w)
    for _ in range(2):  # per epoch: one theta step against the current w, then w moves toward theta
        grad = grad_f(theta, torch.arange(6))
        theta = {k: theta[k] - 0.3 * (grad[k] + 0.7 * (theta[k] - w[k])) for k in theta}
        w = {k: w[k] - 0.2 * 0.7 * (w[k] - theta[k]) for k in w}
    assert all(torch.allclose(p, w[k], atol=1e-6) for k, p in model.named_parameters())  # w uploads
    assert states["pfedme"] == {}  # theta is not kept: evaluation uses the global model
    assert result["train_total"] == 2 * 6 and result["train_steps"] == 2  # K-fold samples weight the upload


def test_pfedme_fetches_a_batch_every_k_calls_across_epochs(small_cfg) -> None:
    # Two batches a pass, 2 steps, K = 3: 3 epochs of 2 calls; a new batch at calls 0 and 3.
    cfg = pfedme_cfg(small_cfg, personalization__K=3, dataloader__batch_size=4, train__local_update_steps=2)
    model, trainer, (seen, plan) = tiny_trainer(cfg, 0)
    w = clone(dict(model.named_parameters()))
    result = trainer.train(X, Y, torch.Generator().manual_seed(2), client_id=0,
                           client_states={name: {} for name in plan.names}, global_params=w, trainer=trainer)
    g = torch.Generator().manual_seed(2)
    first, second = torch.randperm(6, generator=g)[:4], torch.randperm(6, generator=g)[:4]
    expected = [first, first, first, second, second, second]  # call 2 opens epoch 1 but reuses the cache
    assert len(seen) == 6 and all(torch.equal(rows, want) for (_, rows), want in zip(seen, expected))
    assert result["train_total"] == 6 * 4  # paper semantics: 4 + 2


def test_pfedme_clients_are_judged_by_the_global_model(small_cfg) -> None:
    backend = make_backend(pfedme_cfg(small_cfg))
    g0 = clone(backend.shared_parameters())
    g1 = clone(backend.train_client(3, 1, g0)["params"])
    results = backend.evaluate(g1, "val")
    backend.download(0, g1)
    assert results[3] == Trainer(backend.model, backend.cfg).evaluate(*backend.data.splits["val"].client(3), split="val")


@pytest.mark.parametrize("method", ["Ditto", "pFedMe"])
def test_vectorized_backend_names_the_option_and_runs_it_sequentially(small_cfg, method) -> None:
    key = f"{method.lower()}__semantics"
    cfg = small_cfg(federate__method=method, federate__backend="vectorized", **{key: "federatedscope"})
    backend = make_backend(cfg, VectorizedBackend)
    assert not backend.vectorized
    assert backend.reasons == [f"{method.lower()} with {method.lower()}.semantics federatedscope (no cohort form): "
                               "client routines run one client at a time (sequential)"]
    assert make_backend(small_cfg(federate__method=method, federate__backend="vectorized"),
                        VectorizedBackend).vectorized  # the papers' semantics still vectorize
    lines = [json.loads(line) for line in (Path(run(cfg)["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["val_loss"] < lines[0]["val_loss"]  # the whole path runs, and learns
