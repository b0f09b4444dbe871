"""Shared by the contract tests (tests/test_contract_*.py): the records their plug-ins keep, and
hand-computation helpers.

The plug-ins in those tests are users' plug-ins: registered (section and class) through the public functions
by the `register` fixture (conftest.py), switched on by `<name>.use`, and removed again after each test, so that no other
test's config (or config file written for a subprocess) sees their sections. They record what they see in
`REC`; the tests recompute everything by hand from the clients' own records.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from fedplug.core.messages import RoundFacts
from fedplug.core.plugin import Params
from fedplug.seeding import CLIENT_SAMPLING, generator
from fedplug.server.sampling import clients_per_round, sample_clients

ROOT_DIR = Path(__file__).resolve().parents[1]
REC: dict[str, Any] = defaultdict(list)  # what the plug-ins saw, by kind; cleared before each test
FAST = {"federate.total_round_num": 2, "eval.freq": 100, "threads": 1}  # evaluation only after the last round


def clone(tensors: Params) -> Params:
    return {n: t.detach().clone() for n, t in tensors.items()}


def snapshot(facts: RoundFacts) -> dict[str, Any]:
    """The facts as they are now (the object is filled in as the round goes on)."""
    return {"round": facts.round_num, "N": facts.num_clients, "sampled": tuple(facts.sampled),
            "received": list(facts.received), "weights": dict(facts.weights), "previous": clone(facts.previous_global)}


def sampled_clients(cfg, round_num: int) -> list[int]:
    n = cfg.data.synthetic.num_clients
    return sample_clients(n, clients_per_round(cfg, n), generator(cfg.seed, CLIENT_SAMPLING, round_num))


def assert_equal(a: Params, b: Params) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name


def assert_close(a: Params, b: Params, tol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name].double(), b[name].double(), rtol=tol, atol=tol, msg=name)


def weighted_mean(tensors: list[Params], weights: list[float]) -> Params:
    """By hand, in float64."""
    total = sum(weights)
    return {n: sum(w * t[n].double() for t, w in zip(tensors, weights)) / total for n in tensors[0]}


def run_log(result: dict) -> str:
    return (Path(result["run_dir"]) / "run.log").read_text()


def without(result: dict, *keys: str) -> dict:
    return {k: v for k, v in result.items() if k not in ("run_dir", *keys)}

