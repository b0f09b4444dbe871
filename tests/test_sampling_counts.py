"""How many clients train per round, and how many clients the config alone implies (server/sampling.py).

The boundaries are where a wrong comparison hides: `sample_client_num` equal to N is allowed, 1 is a
count (not "use the rate"), 0 and -1 hand over to `sample_client_rate`, and a rate that rounds to no
client still samples one.
"""
from __future__ import annotations

import pytest

from fedplug.config import load_config
from fedplug.errors import ConfigError
from fedplug.server.sampling import clients_from_config, clients_per_round


def per_round(num_clients: int, **keys) -> int:
    return clients_per_round(load_config(None, {f"federate.{k}": v for k, v in keys.items()}), num_clients)


@pytest.mark.parametrize("num, expected", [(1, 1), (2, 2), (3, 3), (10, 10)])
def test_a_positive_sample_client_num_is_the_count_up_to_every_client(num: int, expected: int) -> None:
    # the rate (0.5) would give 5: the count wins whenever it is positive, also at 1 and at N itself
    assert per_round(10, sample_client_num=num, sample_client_rate=0.5) == expected


def test_more_than_every_client_is_refused_naming_the_count() -> None:
    with pytest.raises(ConfigError, match="sample_client_num is 11 but there are 10 clients"):
        per_round(10, sample_client_num=11)


@pytest.mark.parametrize("num", [0, -1])
@pytest.mark.parametrize("rate, expected", [(0.5, 5), (0.34, 3), (0.36, 4), (1.0, 10)])
def test_zero_or_negative_sample_client_num_uses_the_rate_rounded(num: int, rate: float, expected: int) -> None:
    assert per_round(10, sample_client_num=num, sample_client_rate=rate) == expected


def test_a_rate_that_rounds_to_no_client_still_samples_one() -> None:
    assert per_round(10, sample_client_rate=0.01) == 1
    assert per_round(100, sample_client_rate=0.004) == 1


@pytest.mark.parametrize("keys, expected", [
    ({"data.type": "synthetic", "data.synthetic.num_clients": 30}, 30),
    ({"data.type": "synthetic", "data.synthetic.num_clients": 30, "federate.client_num": 12}, 12),
    ({"data.type": "synthetic", "data.synthetic.num_clients": 30, "federate.client_num": 50}, 30),
    ({"data.type": "femnist", "federate.client_num": 7}, 7),
    ({"data.type": "femnist"}, 0),
])
def test_clients_from_config_is_what_the_config_alone_tells(keys: dict, expected: int) -> None:
    assert clients_from_config(load_config(None, keys)) == expected
