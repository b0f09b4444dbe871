"""The robust rules' shared tensor helpers (fedplug/aggregators/base.py) on their own: the exact float64
distances over every parameter, the coordinate slices that bound a coordinate-wise rule's memory, and the
float64 weights a trimmed mean averages with."""
from __future__ import annotations

import torch

from fedplug.aggregators import base
from fedplug.aggregators.bulyan import bulyan_selection, closest_to_median
from fedplug.aggregators.centered_clipping import clip_step
from fedplug.aggregators.krum import lowest
from fedplug.aggregators.norm_bounding import bounded
from fedplug.aggregators.trimmed_mean import TrimmedMean
from fedplug.core.messages import RoundFacts, Upload
from test_robust_aggregators import aggregate, uniform


def uploads_of(rows: list[dict[str, torch.Tensor]]) -> list[Upload]:
    return [Upload(i, params, {}, {}) for i, params in enumerate(rows)]


def test_squared_distances_sum_every_parameter_in_float64() -> None:
    # 4096^2 + 1 = 2^24 + 1 is not a float32 number; float64 keeps it
    rows = [{"a": torch.tensor([0.0]), "b": torch.tensor([0.0, 0.0])},
            {"a": torch.tensor([4096.0]), "b": torch.tensor([0.0, 1.0])}]
    distances = base.squared_distances(uploads_of(rows))
    assert distances.dtype == torch.float64
    assert distances.tolist() == [[0.0, 16777217.0], [16777217.0, 0.0]]


def test_squared_distances_of_equal_uploads_are_exactly_zero_for_many_uploads() -> None:
    """Above 25 rows torch.cdist's default goes through a Gram matrix, |x|^2 + |y|^2 - 2 x.y, whose cancellation
    leaves an upload a non-zero distance to itself: Krum would then see equal uploads as apart."""
    g = torch.Generator().manual_seed(0)
    rows = [{"w": torch.randn(50, generator=g) * 1e3 + 1e4} for _ in range(30)]
    rows[5] = {"w": rows[3]["w"].clone()}
    distances = base.squared_distances(uploads_of(rows))
    assert torch.all(torch.diagonal(distances) == 0) and distances[3, 5] == 0
    assert torch.equal(distances, distances.T)


def test_coordinatewise_takes_the_coordinates_a_slice_at_a_time(monkeypatch) -> None:
    monkeypatch.setattr(base, "COORDINATES_AT_ONCE", 2)
    seen: list[list[float]] = []

    def record_then_max(values: torch.Tensor) -> torch.Tensor:
        seen.append(values[0].tolist())
        return values.max(dim=0).values

    rows = [{"w": torch.tensor([[1.0, 5.0], [2.0, 0.0], [9.0, 3.0]])},
            {"w": torch.tensor([[4.0, 1.0], [0.0, 7.0], [2.0, 8.0]])}]
    result = base.coordinatewise(uploads_of(rows), "w", record_then_max)
    assert result.tolist() == [[4.0, 5.0], [2.0, 7.0], [9.0, 8.0]]
    assert seen == [[1.0, 5.0], [2.0, 0.0], [9.0, 3.0]]  # coordinates 0-1, 2-3, 4-5 of the first upload


def test_the_median_of_one_upload_is_that_upload(small_cfg) -> None:
    result, _ = aggregate(uniform(small_cfg, "median", 0), [[3.0, -1.5]])
    assert result.tolist() == [3.0, -1.5]


def test_trimmed_mean_weights_are_float64(small_cfg) -> None:
    """Weights such as FedNova's normalized ones are any float: rounded to float32 they would move the mean."""
    rule = TrimmedMean(uniform(small_cfg, "trimmedmean", 1))
    values = [0.3, 0.1, 0.7, 0.2, 0.9]
    weights = {0: 0.1, 1: 1 / 3, 2: 0.7, 3: 2 / 7, 4: 0.05}
    rows = [{"w": torch.tensor([v], dtype=torch.float64)} for v in values]
    facts = RoundFacts(1, 5, tuple(range(5)), {"w": torch.zeros(1, dtype=torch.float64)}, weights=weights)
    kept = [3, 0, 2]  # sorted 0.1 (client 1), 0.2 (3), 0.3 (0), 0.7 (2), 0.9 (4): one excluded at each end
    total, weight = values[kept[0]] * weights[kept[0]], weights[kept[0]]
    for c in kept[1:]:
        total, weight = total + values[c] * weights[c], weight + weights[c]
    assert rule.aggregate(uploads_of(rows), facts)["w"].item() == total / weight


def test_krum_ties_go_to_the_earlier_upload_however_many_tie() -> None:
    """Equal uploads tie exactly; from 17 values on, an unstable sort no longer keeps the order given."""
    assert lowest(torch.zeros(40, dtype=torch.float64), 5) == [0, 1, 2, 3, 4]
    assert lowest(torch.tensor([1.0, 0.0] * 20, dtype=torch.float64), 3) == [1, 3, 5]


def test_bulyan_picks_with_at_least_one_neighbour() -> None:
    """f = 0 on the line 0, 1, 10: with 3 left Krum counts max(3 - 0 - 2, 1) = 1 neighbour, so 0 and 1 tie at 1 and
    the earlier goes first (two neighbours would have picked 1 first: 82 against 0's 101)."""
    points = torch.tensor([[0.0], [1.0], [10.0]], dtype=torch.float64)
    assert bulyan_selection(torch.cdist(points, points) ** 2, 0) == [0, 1, 2]


def test_bulyan_ties_around_the_median_go_to_the_earlier_value() -> None:
    """21 values: the median 0, then -1 and 1 in turn (all at distance 1 from it); beta = 5 keeps 0 and the first
    four of the tied ones, in the order given (from 17 values on, an unstable sort would not keep it)."""
    values = torch.tensor([[0.0]] + [[-1.0], [1.0]] * 10, dtype=torch.float64)
    weights = torch.arange(1, 22, dtype=torch.float64).reshape(21, 1)
    assert closest_to_median(values, weights, 5).item() == (-2 + 3 - 4 + 5) / 15


def test_norm_bounding_leaves_an_update_of_exactly_the_bound_as_it_is() -> None:
    """(3, 4) from the origin has norm 5: at bound 5 the upload is returned as it is, not rescaled by 5 / 5 (which
    rounds: center + (upload - center) need not be the upload)."""
    params, center = {"w": torch.tensor([3.0, 4.0])}, {"w": torch.zeros(2)}
    assert bounded(params, center, 5.0) is params
    assert bounded(params, center, 2.5)["w"].tolist() == [1.5, 2.0]


def test_centered_clipping_step_clips_short_offsets_and_keeps_a_zero_one() -> None:
    """tau 0.1: the offset (0.3, 0.4) (length 0.5, under 1) is scaled to length 0.1; an offset of length 0 (an update
    at the center) adds nothing and divides by nothing. Weights 1 and 1."""
    center = {"w": torch.zeros(2, dtype=torch.float64)}
    deltas = [{"w": torch.zeros(2, dtype=torch.float64)}, {"w": torch.tensor([0.3, 0.4], dtype=torch.float64)}]
    step = clip_step(deltas, [1.0, 1.0], center, 0.1)
    assert torch.allclose(step["w"], torch.tensor([0.03, 0.04], dtype=torch.float64), rtol=0, atol=1e-15)
