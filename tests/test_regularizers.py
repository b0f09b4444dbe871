"""The regularizer registry (algorithms/regularizers.py): register by name, get by name, clear refusals."""
from __future__ import annotations

import pytest
import torch

from fedplug.algorithms import regularizers
from fedplug.algorithms.regularizers import get_regularizer, register_regularizer
from fedplug.core.context import Context


@pytest.fixture
def clean_registry():
    before = dict(regularizers._REGULARIZERS)
    yield
    regularizers._REGULARIZERS.clear()
    regularizers._REGULARIZERS.update(before)


def test_a_registered_regularizer_is_got_back_by_name_and_a_second_of_that_name_is_refused(clean_registry) -> None:
    def l1(ctx: Context) -> torch.Tensor:
        return sum(p.abs().sum() for p in ctx.model.parameters())

    assert register_regularizer("test_l1")(l1) is l1
    assert get_regularizer("test_l1") is l1
    with pytest.raises(ValueError, match="a regularizer named 'test_l1' is already registered"):
        register_regularizer("test_l1")(lambda ctx: torch.tensor(0.0))
    assert get_regularizer("test_l1") is l1


def test_an_unknown_regularizer_is_refused_naming_the_registered_ones() -> None:
    with pytest.raises(KeyError, match="no regularizer named 'l3' \\(registered: proximal_regularizer\\)"):
        get_regularizer("l3")


def test_the_proximal_regularizer_is_half_the_squared_distance_to_the_received_parameters() -> None:
    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
        model.bias.fill_(-1.0)
    ctx = Context(model=model, global_params={"weight": torch.tensor([[0.0, 4.0]]), "bias": torch.tensor([1.0])})
    # (1^2 + 2^2) for the weight, 2^2 for the bias: 0.5 * 9
    assert get_regularizer("proximal_regularizer")(ctx).item() == 4.5
    ctx.global_params = {"weight": torch.tensor([[0.0, 4.0]])}  # a parameter not received (kept local) adds nothing
    assert get_regularizer("proximal_regularizer")(ctx).item() == 2.5
