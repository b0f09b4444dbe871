"""Tests of the FEMNIST ConvNet2 and the Shakespeare CharLSTM."""
from __future__ import annotations

import torch
from torch import nn

from fedplug.models.convnet2 import ConvNet2
from fedplug.models.lstm import CharLSTM


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts() -> None:
    assert n_params(ConvNet2()) == 6_603_902
    assert n_params(CharLSTM()) == 819_920


def test_convnet2_shapes_flat_and_image_agree() -> None:
    torch.manual_seed(0)
    model = ConvNet2().eval()
    img = torch.randn(3, 1, 28, 28)
    out_img = model(img)
    out_flat = model(img.reshape(3, 784))
    assert out_img.shape == (3, 62)
    assert torch.equal(out_img, out_flat)
    assert ConvNet2(num_classes=10).eval()(torch.randn(2, 784)).shape == (2, 10)


def test_convnet2_batchnorm_names_and_buffers() -> None:
    model = ConvNet2()
    bn_params = {
        f"{mod_name}.{p_name}"
        for mod_name, mod in model.named_modules()
        if isinstance(mod, nn.BatchNorm2d)
        for p_name, _ in mod.named_parameters()
    }
    assert bn_params == {"bn1.weight", "bn1.bias", "bn2.weight", "bn2.bias"}
    assert all("bn" in name for name in bn_params)
    # Non-BN parameters must not match FedBN's "bn" pattern.
    assert all("bn" not in n for n, _ in model.named_parameters() if n not in bn_params)
    param_names = {n for n, _ in model.named_parameters()}
    buffer_names = {n for n, _ in model.named_buffers()}
    for stat in ("bn1.running_mean", "bn1.running_var", "bn2.running_mean", "bn2.running_var"):
        assert stat in buffer_names and stat not in param_names


def test_charlstm_shape_and_batch_consistency() -> None:
    torch.manual_seed(0)
    model = CharLSTM().eval()
    x = torch.randint(0, 80, (4, 80), dtype=torch.int64)
    with torch.no_grad():
        out = model(x)
        rows = torch.cat([model(x[i : i + 1]) for i in range(4)])
    assert out.shape == (4, 80)
    assert torch.allclose(out, rows, atol=1e-6, rtol=0)


def test_charlstm_uses_whole_sequence_up_to_last_step() -> None:
    torch.manual_seed(0)
    model = CharLSTM().eval()
    x = torch.randint(0, 80, (1, 80), dtype=torch.int64)
    first = x.clone()
    first[0, 0] = (x[0, 0] + 1) % 80  # change only the first character
    last = x.clone()
    last[0, -1] = (x[0, -1] + 1) % 80  # change only the last character
    early = x.clone()
    early[0, :60] = torch.randint(0, 80, (60,))  # share the last 20 characters only
    with torch.no_grad():
        base, out_first, out_last, out_early = model(x), model(first), model(last), model(early)
    assert not torch.equal(base, out_first)
    assert not torch.equal(base, out_last)  # read out at the last step, not the first
    assert (base - out_early).abs().max() > 1e-6


def _sgd_loss_drops(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    losses = []
    for _ in range(3):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_sgd_reduces_loss_convnet2() -> None:
    torch.manual_seed(0)
    model = ConvNet2().train()
    _sgd_loss_drops(model, torch.randn(4, 784), torch.randint(0, 62, (4,)), lr=0.05)


def test_sgd_reduces_loss_charlstm() -> None:
    torch.manual_seed(0)
    model = CharLSTM().train()
    x = torch.randint(0, 80, (4, 10), dtype=torch.int64)
    _sgd_loss_drops(model, x, torch.randint(0, 80, (4,)), lr=1.0)
