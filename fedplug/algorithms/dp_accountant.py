"""Privacy accounting of DP-FedAvg with Opacus' accountants (the `dp` extra).

Each round is one sampled Gaussian mechanism: every client joins with probability q (clients per
round / N), the sum of their clipped updates gets Gaussian noise of std z times the clip. The
accountant composes `rounds` of them and converts to epsilon at `delta`:
- rdp: Renyi DP of the sampled Gaussian mechanism (Mironov, Talwar, Zhang 2019), Opacus' orders;
- prv: privacy random variables (Gopi, Lee, Wutschitz, NeurIPS 2021), Opacus' upper bound.
Both analyse Poisson sampling with add/remove-one-client neighbours; fedplug samples a fixed
number of clients without replacement (docs/privacy.md says what that means for the number).
"""
from __future__ import annotations

import math
from functools import lru_cache

from fedplug.errors import ConfigError

try:
    from opacus.accountants import PRVAccountant, RDPAccountant
except ImportError:  # the base install has no DP: refuse at start-up with the extra to install
    PRVAccountant = RDPAccountant = None


def require_opacus() -> None:
    if RDPAccountant is None:
        raise ConfigError("dp.use needs the privacy accountant of Opacus: pip install 'fedplug[dp]'")


def compute_epsilon(accountant: str, q: float, z: float, rounds: int, delta: float) -> float:
    """Epsilon at `delta` after `rounds` sampled Gaussian mechanisms of rate q and noise multiplier z
    (0 before any round; infinite without noise)."""
    if not 0 < q <= 1:
        raise ConfigError(f"the accountant needs a sampling rate q in (0, 1], got {q}")
    if rounds == 0:
        return 0.0
    if z == 0:
        return math.inf
    acc = RDPAccountant() if accountant == "rdp" else PRVAccountant()
    acc.history = [(z, q, rounds)]  # one entry of `rounds` identical steps, as `step` would merge them
    return float(acc.get_epsilon(delta=delta))


# Cached: the server asks every round, with the same arguments on a resume. Wrapped by a call, not a decorator,
# so that mutation testing (which skips decorated functions) reaches the arithmetic above.
epsilon = lru_cache(maxsize=4096)(compute_epsilon)
