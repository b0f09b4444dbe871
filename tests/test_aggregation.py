"""Server arithmetic and sampling on known numbers."""
from __future__ import annotations

import pytest
import torch

from fedplug.errors import ConfigError
from fedplug.server.aggregation import WeightedMean
from fedplug.server.sampling import clients_per_round, sample_clients


def test_weighted_mean_on_known_tensors() -> None:
    like = {"w": torch.zeros(2, 2), "b": torch.zeros(2)}
    mean = WeightedMean(like)
    mean.add({"w": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "b": torch.tensor([1.0, -1.0])}, 1)
    mean.add({"w": torch.tensor([[5.0, 6.0], [7.0, 8.0]]), "b": torch.tensor([5.0, 3.0])}, 3)
    result = mean.result()
    # (1*a + 3*b) / 4, exact in binary floating point
    assert torch.equal(result["w"], torch.tensor([[4.0, 5.0], [6.0, 7.0]]))
    assert torch.equal(result["b"], torch.tensor([4.0, 2.0]))
    assert mean.total_weight == 4
    assert torch.equal(like["w"], torch.zeros(2, 2))  # the template is not written to


def test_weighted_mean_matches_the_formula_on_random_tensors() -> None:
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(5, 3, generator=g) for _ in range(7)]
    weights = [17, 64, 640, 3, 100, 250, 1]
    mean = WeightedMean({"p": torch.zeros(5, 3)})
    for p, w in zip(params, weights):
        mean.add({"p": p}, w)
    expected = sum(w * p.double() for p, w in zip(params, weights)) / sum(weights)
    assert torch.allclose(mean.result()["p"].double(), expected, atol=1e-6)


def test_weighted_mean_refuses_nonsense() -> None:
    mean = WeightedMean({"p": torch.zeros(1)})
    with pytest.raises(ValueError, match="no client result"):
        mean.result()
    with pytest.raises(ValueError, match="must be positive"):
        mean.add({"p": torch.ones(1)}, 0)


def test_sampling_is_seeded_distinct_and_sorted() -> None:
    draw = lambda seed: sample_clients(300, 60, torch.Generator().manual_seed(seed))  # noqa: E731
    first = draw(1)
    assert first == draw(1) and first != draw(2)
    assert len(set(first)) == 60 and first == sorted(first) and all(0 <= c < 300 for c in first)


def test_clients_per_round(small_cfg) -> None:
    assert clients_per_round(small_cfg(federate__sample_client_rate=0.2), 300) == 60
    assert clients_per_round(small_cfg(federate__sample_client_rate=0.001), 300) == 1
    assert clients_per_round(small_cfg(federate__sample_client_num=7), 300) == 7
    with pytest.raises(ConfigError, match="federate.sample_client_num is 700 but there are 300 clients"):
        clients_per_round(small_cfg(federate__sample_client_num=700), 300)  # refused, not clamped
