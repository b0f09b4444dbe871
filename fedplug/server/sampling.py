"""Which clients train in a round."""
from __future__ import annotations

import torch

from fedplug.config import ConfigNode
from fedplug.errors import ConfigError


def clients_from_config(cfg: ConfigNode) -> int:
    """N when the config alone tells it (Synthetic's generator, or federate.client_num), else 0: start-up checks
    (robust rules, attackers) run with it before any work, and again with the data's N, which is never larger."""
    if cfg.data.type == "synthetic":
        n = cfg.data.synthetic.num_clients
        return min(cfg.federate.client_num, n) if cfg.federate.client_num else n
    return cfg.federate.client_num


def clients_per_round(cfg: ConfigNode, num_clients: int) -> int:
    fed = cfg.federate
    if fed.sample_client_num > num_clients:
        raise ConfigError(f"federate.sample_client_num is {fed.sample_client_num} but there are {num_clients} clients; "
                          f"set it to at most {num_clients} (or -1 to use federate.sample_client_rate)")
    k = fed.sample_client_num if fed.sample_client_num > 0 else round(fed.sample_client_rate * num_clients)
    return min(max(k, 1), num_clients)


def sample_clients(num_clients: int, k: int, generator: torch.Generator) -> list[int]:
    """k distinct clients, uniformly, in increasing id order (so the order of work is canonical)."""
    return sorted(torch.randperm(num_clients, generator=generator)[:k].tolist())
