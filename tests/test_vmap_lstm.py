"""StackedLSTM is nn.LSTM: same initial weights, the same outputs bit for bit through the fused kernel,
within 1e-5 (outputs and gradients) through the tensor-op cell under vmap; the vectorized backend
trains CharLSTM cohorts with the sequential backend's numbers."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from fedplug.backends.vectorized import model_blockers
from fedplug.config import load_config
from fedplug.models.lstm import CharLSTM
from fedplug.models.vmap_lstm import StackedLSTM
from fedplug.run.plan import build_plan, describe_plan
from test_shakespeare_data import _write_leaf
from test_vectorized import compare_rounds

TOL = dict(rtol=1e-5, atol=1e-5)


def pair(seed: int, *shape: int) -> tuple[nn.LSTM, StackedLSTM]:
    torch.manual_seed(seed)
    ref = nn.LSTM(*shape, batch_first=True)
    torch.manual_seed(seed)
    return ref, StackedLSTM(*shape, batch_first=True)


def test_same_seed_same_parameters_and_state_dict() -> None:
    ref, mine = pair(3, 5, 12, 2)
    assert list(ref.state_dict()) == list(mine.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), mine.state_dict().values()))
    torch.manual_seed(7)
    old = CharLSTM.__new__(CharLSTM)  # today's CharLSTM, built the way it was: nn.LSTM in the middle
    nn.Module.__init__(old)
    old.embed, old.lstm, old.fc = nn.Embedding(80, 8), nn.LSTM(8, 256, 2, batch_first=True), nn.Linear(256, 80)
    torch.manual_seed(7)
    new = CharLSTM()
    assert sum(p.numel() for p in new.parameters()) == 819_920
    assert list(old.state_dict()) == list(new.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(old.state_dict().values(), new.state_dict().values()))
    x = torch.randint(0, 80, (4, 10))
    assert torch.equal(old(x), new(x))


@pytest.mark.parametrize("batch_first", [True, False])
def test_fused_path_is_nn_lstm_exactly(batch_first: bool) -> None:
    torch.manual_seed(0)
    ref = nn.LSTM(6, 10, 2, batch_first=batch_first)
    mine = StackedLSTM(6, 10, 2, batch_first=batch_first)
    mine.load_state_dict(ref.state_dict())
    x = torch.randn(4, 7, 6)
    state = (torch.randn(2, 7 if not batch_first else 4, 10), torch.randn(2, 7 if not batch_first else 4, 10))
    for args in ((x,), (x, state)):
        (out_r, (h_r, c_r)), (out_m, (h_m, c_m)) = ref(*args), mine(*args)
        assert torch.equal(out_r, out_m) and torch.equal(h_r, h_m) and torch.equal(c_r, c_m)
        g_r = torch.autograd.grad(out_r.square().sum(), list(ref.parameters()))
        g_m = torch.autograd.grad(out_m.square().sum(), list(mine.parameters()))
        assert all(torch.equal(a, b) for a, b in zip(g_r, g_m))


def test_tensor_ops_equal_nn_lstm_in_outputs_and_gradients() -> None:
    ref, mine = pair(1, 6, 16, 2)
    x, state = torch.randn(5, 9, 6), (torch.randn(2, 5, 16), torch.randn(2, 5, 16))
    out_r, (h_r, c_r) = ref(x, state)
    out_m, (h_m, c_m) = mine._tensor_ops(x.transpose(0, 1), state)  # the path vmap takes, called directly
    for a, b in ((out_r, out_m), (h_r, h_m), (c_r, c_m)):
        torch.testing.assert_close(b, a, **TOL)
    g_r = torch.autograd.grad((out_r.square().sum() + c_r.sum()), list(ref.parameters()))
    g_m = torch.autograd.grad((out_m.square().sum() + c_m.sum()), list(mine.parameters()))
    for a, b in zip(g_r, g_m):
        torch.testing.assert_close(b, a, **TOL)


def test_vmap_over_three_clients_equals_three_nn_lstms() -> None:
    """A stack of 3 different clients' parameters and inputs under vmap (and vmap over grad) against
    3 separate nn.LSTM runs."""
    models = [pair(seed, 6, 16, 2)[0] for seed in (0, 1, 2)]
    mine = StackedLSTM(6, 16, 2, batch_first=True)
    stacked = {n: torch.stack([dict(m.named_parameters())[n].detach() for m in models]) for n, _ in
               mine.named_parameters()}
    xs = torch.randn(3, 4, 9, 6)

    def loss(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        out, (h, c) = functional_call(mine, params, (x,))
        return out.square().sum() + c.sum()

    def outputs(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(mine, params, (x,))[0]

    outs, grads = vmap(outputs)(stacked, xs), vmap(grad(loss))(stacked, xs)
    leaves = {n: t.clone().requires_grad_(True) for n, t in stacked.items()}
    autograd = torch.autograd.grad(vmap(loss)(leaves, xs).sum(), list(leaves.values()))
    for c, model in enumerate(models):
        out, (_, cell) = model(xs[c])
        torch.testing.assert_close(outs[c], out, **TOL)
        expected = torch.autograd.grad(out.square().sum() + cell.sum(), list(model.parameters()))
        for (name, _), want, got in zip(model.named_parameters(), expected, autograd):
            torch.testing.assert_close(grads[name][c], want, **TOL)
            torch.testing.assert_close(got[c], want, **TOL)


def test_input_of_the_wrong_rank_is_refused() -> None:
    with pytest.raises(ValueError, match="expected a 3-D input"):
        StackedLSTM(3, 4)(torch.zeros(5, 3))


def shakespeare_cfg(tmp_path: Path, **over: object):
    users = {f"ROLE{i}": list(range(7 * i, 7 * i + 20 + 9 * i)) for i in range(4)}  # uneven clients
    _write_leaf(tmp_path / "leaf", users)
    return load_config(None, {
        "data.type": "shakespeare", "data.shakespeare.source": "leaf",
        "data.shakespeare.leaf_dir": str(tmp_path / "leaf"),
        "data.shakespeare.seq_len": 8, "model.type": "lstm", "model.out_channels": 80, "model.hidden": 16,
        "federate.sample_client_num": 3, "train.local_update_steps": 3, "dataloader.batch_size": 5,
        "train.optimizer.lr": 0.5, "outdir": str(tmp_path / "runs"), "threads": 1, **over})


def test_vectorized_charlstm_equals_sequential(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    seq, vec = shakespeare_cfg(tmp_path), shakespeare_cfg(tmp_path, **{"federate.backend": "vectorized"})
    compare_rounds(seq, vec, rounds=1)  # asserts the backend vectorized
    assert not [r for r in caplog.records if "one client at a time" in r.getMessage()]
    assert describe_plan(build_plan(vec), vec).count("backend: vectorized (every client routine runs") == 1
    assert "one client at a time" not in describe_plan(build_plan(vec), vec)


def test_raw_rnn_layers_still_block() -> None:
    assert model_blockers(CharLSTM()) == []
    for layer in (nn.LSTM(3, 4), nn.GRU(3, 4)):
        (line,) = model_blockers(nn.Sequential(layer))
        assert f"{type(layer).__name__} layer has no vmap batching rule" in line
