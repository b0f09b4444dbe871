"""The robust aggregation rules (`aggregator.rule`): each rule by hand on a few small vectors, the exact
reductions (nothing excluded is FedAvg bit for bit), an outlier that changes nothing, the extras reduced over
the selected clients, the start-up refusals against the sampled count, FederatedScope's keys, and whole runs
(FedProx + FedOpt, SCAFFOLD, FedNova; sequential == vectorized; resume exact; detached when off)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fedplug.aggregators.krum import krum_scores
from fedplug.cli import main
from fedplug.config import load_config
from fedplug.core.compose import CompositionError
from fedplug.core.messages import RoundFacts, Upload
from fedplug.core.plugin import Plugin
from fedplug.errors import ConfigError
from fedplug.run import checkpoint
from fedplug.run.plan import build_plan, describe_plan
from fedplug.run.simulation import run
from fedplug.server.round import RoundAggregation
from test_scaffold import metrics_lines, without_run_dir

ROOT = Path(__file__).resolve().parents[1]
RULES = ["krum", "multikrum", "median", "trimmedmean", "bulyan", "normbounding", "centeredclip"]


def aggregate(cfg, vectors, samples=None, previous=None, extras=None):
    """The rule of `cfg` on one round of uploads {"w": vector} (float64), through the server's own fold.
    Returns (aggregate["w"], facts)."""
    plan = build_plan(cfg)
    dim = len(vectors[0])
    prev = {"w": torch.tensor(previous if previous is not None else [0.0] * dim, dtype=torch.float64)}
    facts = RoundFacts(1, 12, tuple(range(len(vectors))), prev)
    fold = RoundAggregation(plan, facts, plan.messages(prev))
    for i, v in enumerate(vectors):
        metrics = {"train_total": (samples or [1] * len(vectors))[i], "train_steps": 5, "train_loss": 0.0}
        fold.add(Upload(i, {"w": torch.tensor(v, dtype=torch.float64)}, metrics, (extras or {}).get(i, {})))
    return fold.aggregate()["w"], facts


def uniform(small_cfg, rule: str, f: int = 0, **keys):
    return small_cfg(aggregator__rule=rule, aggregator__byzantine_node_num=f, aggregator__weighting="uniform",
                     federate__sample_client_rate=1.0, **keys)


def close(t: torch.Tensor, expected: list[float]) -> bool:
    return torch.allclose(t, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)


# -- by hand -----------------------------------------------------------------------------------------------------

# a, b, c, d, e; squared distances from a: b 1, c 4, d 2, e 200. f = 1: each score sums the n - f - 2 = 2 closest:
# a 1+2, b 1+1, c 2+4, d 1+2, e 162+164
POINTS = [[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [10.0, 10.0]]


def test_krum_scores_and_choice_by_hand(small_cfg) -> None:
    distances = torch.tensor([[sum((p - q) ** 2 for p, q in zip(a, b)) for b in POINTS] for a in POINTS],
                             dtype=torch.float64)
    assert krum_scores(distances, 2).tolist() == [3.0, 2.0, 6.0, 3.0, 326.0]
    result, facts = aggregate(uniform(small_cfg, "krum", 1), POINTS)
    assert result.tolist() == [1.0, 0.0] and facts.selected == [1]


def test_multikrum_by_hand(small_cfg) -> None:
    """m = 2: b, then a over d (equal scores: the earlier upload); m = 3: a, b, d, by weight or uniformly."""
    result, facts = aggregate(uniform(small_cfg, "multikrum", 1, aggregator__krum_agg_num=2), POINTS)
    assert result.tolist() == [0.5, 0.0] and facts.selected == [0, 1]
    result, facts = aggregate(uniform(small_cfg, "multikrum", 1, aggregator__krum_agg_num=3), POINTS)
    assert close(result, [2 / 3, 1 / 3]) and facts.selected == [0, 1, 3]
    weighted = small_cfg(aggregator__rule="multikrum", aggregator__byzantine_node_num=1, aggregator__krum_agg_num=3)
    result, _ = aggregate(weighted, POINTS, samples=[10, 30, 20, 60, 1000])
    assert close(result, [(30 + 60) / 100, 60 / 100])
    # krum with m > 1 is Multi-Krum, as FederatedScope's krum.agg_num
    assert aggregate(uniform(small_cfg, "krum", 1, aggregator__krum_agg_num=2), POINTS)[0].tolist() == [0.5, 0.0]


def test_median_by_hand(small_cfg) -> None:
    odd = [[1.0, -2.0, 5.0], [3.0, 0.0, 4.0], [2.0, 7.0, -1.0], [100.0, 1.0, 0.0], [-5.0, 2.0, 9.0]]
    assert aggregate(uniform(small_cfg, "median", 1), odd, samples=[1, 1, 1, 1, 1000])[0].tolist() == [2.0, 1.0, 4.0]
    even = odd[:4]  # the mean of the two middle values
    assert aggregate(uniform(small_cfg, "median", 1), even)[0].tolist() == [2.5, 0.5, 2.0]


TRIM = [[1.0, 10.0], [4.0, -3.0], [2.0, 0.0], [8.0, 1.0], [-6.0, 2.0]]  # sorted: (-6 1 2 4 8), (-3 0 1 2 10)


@pytest.mark.parametrize("keys", [{"f": 1}, {"f": 0, "aggregator__excluded_ratio": 0.25},
                                  {"f": 0, "aggregator__excluded_ratio": 0.2}], ids=["f", "beta", "beta-exact"])
def test_trimmed_mean_by_hand(small_cfg, keys) -> None:
    """k = 1 (f = 1, or floor(0.25 * 5), or floor(0.2 * 5), a product whose float is a hair below 1): each coordinate
    keeps its 3 middle values."""
    f, others = keys["f"], {k: v for k, v in keys.items() if k != "f"}  # the parameters are shared: not popped
    cfg = uniform(small_cfg, "trimmedmean", f, **others)
    assert close(aggregate(cfg, TRIM)[0], [(1 + 2 + 4) / 3, (0 + 1 + 2) / 3])
    weighted = small_cfg(aggregator__rule="trimmedmean", aggregator__byzantine_node_num=1)
    samples = [10, 20, 30, 40, 50]  # kept: x (1, 2, 4) of clients 0, 2, 1; y (0, 1, 2) of clients 2, 3, 4
    assert close(aggregate(weighted, TRIM, samples)[0], [(10 + 60 + 80) / 60, (0 + 40 + 100) / 120])
    # k = max(f, floor(beta * n)): f = 2 wins over beta = 0.2; only the median is left
    cfg = uniform(small_cfg, "trimmedmean", 2, aggregator__excluded_ratio=0.2)
    assert aggregate(cfg, TRIM)[0].tolist() == [2.0, 1.0]


def test_trimmed_mean_ties_exclude_the_earlier_values_however_many_tie(small_cfg) -> None:
    """20 uploads, ten 0s then ten 1s, weights 1..20; k = 5: the 0s of clients 0-4 and the 1s of clients 15-19
    go, in the order given (from 17 values on, an unstable sort would not keep it)."""
    cfg = small_cfg(aggregator__rule="trimmedmean", aggregator__byzantine_node_num=5,
                    federate__sample_client_rate=1.0)
    result, _ = aggregate(cfg, [[0.0]] * 10 + [[1.0]] * 10, samples=list(range(1, 21)))
    assert close(result, [sum(range(11, 16)) / sum(range(6, 16))])


def test_bulyan_by_hand(small_cfg) -> None:
    """n = 7, f = 1: theta = 5 picks by Krum over the remaining r, with max(r - 3, 1) neighbours:
    r=7: 3 (score 23: 4+1+9+9); r=6: 4 (29); r=5: 1 (26); r=4: 0 and 6 tie at 36, 0 first; r=3: 6 and 50 tie,
    6 first. Selected 3, 4, 1, 0, 6: median 3, the beta = 3 closest to it 3, 4, 1: mean 8/3."""
    values = [[0.0], [1.0], [3.0], [4.0], [6.0], [50.0], [-40.0]]
    result, facts = aggregate(uniform(small_cfg, "bulyan", 1), values)
    assert close(result, [8 / 3]) and facts.selected == [2, 3, 1, 0, 4]


def test_norm_bounding_by_hand(small_cfg) -> None:
    """Global (1, 1); updates (3, 4) (norm 5, clipped to 2: (1.2, 1.6)) and (0.6, 0.8) (norm 1, kept); weights 10, 30."""
    cfg = small_cfg(aggregator__rule="normbounding", aggregator__norm_bound=2.0)
    result, _ = aggregate(cfg, [[4.0, 5.0], [1.6, 1.8]], samples=[10, 30], previous=[1.0, 1.0])
    assert close(result, [(10 * 2.2 + 30 * 1.6) / 40, (10 * 2.6 + 30 * 1.8) / 40])


def test_centered_clipping_by_hand_and_its_center_kept(small_cfg) -> None:
    """tau 2, v = 0: updates (3, 4) -> (1.2, 1.6), (0, 1) kept: v = (0.6, 1.3). Next round, global (1, 1): an update
    equal to v adds nothing, one at v + (3, 4) adds (1.2, 1.6) / 2: v = (1.2, 2.1), aggregate (2.2, 3.1)."""
    cfg = uniform(small_cfg, "centeredclip", 0, aggregator__clip_tau=2.0)
    plan = build_plan(cfg)
    (rule,) = plan.plugins
    fold = RoundAggregation(plan, RoundFacts(1, 12, (0, 1), {"w": torch.zeros(2, dtype=torch.float64)}), {})
    for i, v in enumerate([[3.0, 4.0], [0.0, 1.0]]):
        fold.add(Upload(i, {"w": torch.tensor(v, dtype=torch.float64)}, {"train_total": 5, "train_steps": 5,
                                                                          "train_loss": 0.0}))
    assert close(fold.aggregate()["w"], [0.6, 1.3]) and close(rule.center["w"], [0.6, 1.3])
    fold = RoundAggregation(plan, RoundFacts(2, 12, (0, 1), {"w": torch.ones(2, dtype=torch.float64)}), {})
    for i, v in enumerate([[1.6, 2.3], [4.6, 6.3]]):
        fold.add(Upload(i, {"w": torch.tensor(v, dtype=torch.float64)}, {"train_total": 5, "train_steps": 5,
                                                                          "train_loss": 0.0}))
    assert close(fold.aggregate()["w"], [2.2, 3.1]) and close(rule.center["w"], [1.2, 2.1])


def test_centered_clipping_iterates(small_cfg) -> None:
    """L = 2: the second iteration clips around the first's v = (0.6, 1.3)."""
    cfg = uniform(small_cfg, "centeredclip", 0, aggregator__clip_tau=2.0, aggregator__clip_iters=2)
    result, _ = aggregate(cfg, [[3.0, 4.0], [0.0, 1.0]])
    far, near = (2.4, 2.7), (-0.6, -0.3)
    scale = 2 / math.hypot(*far)
    assert close(result, [0.6 + (far[0] * scale + near[0]) / 2, 1.3 + (far[1] * scale + near[1]) / 2])


# -- exact reductions ----------------------------------------------------------------------------------------------

def random_round(n: int = 6, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(7, generator=gen).tolist() for _ in range(n)], [int(s) for s in torch.randint(5, 90, (n,),
                                                                                                       generator=gen)]


def fedavg(small_cfg, vectors, samples):
    return aggregate(small_cfg(), vectors, samples, previous=[0.5] * 7)[0]


@pytest.mark.parametrize("rule, keys", [("trimmedmean", {}), ("multikrum", {}), ("normbounding",
                                                                                   {"aggregator__norm_bound": 1e9})])
def test_excluding_nothing_is_fedavg_bit_for_bit(small_cfg, rule: str, keys: dict) -> None:
    """f = 0: trimmed mean trims nothing, Multi-Krum keeps m = n - f = n; a bound nothing reaches clips nothing."""
    vectors, samples = random_round()
    result, facts = aggregate(small_cfg(aggregator__rule=rule, **keys), vectors, samples, previous=[0.5] * 7)
    assert torch.equal(result, fedavg(small_cfg, vectors, samples))
    assert facts.selected in (None, list(range(6)))
    uniform_mean = torch.tensor(vectors, dtype=torch.float64).mean(0)
    got = aggregate(small_cfg(aggregator__rule=rule, aggregator__weighting="uniform", **keys), vectors, samples)[0]
    torch.testing.assert_close(got, uniform_mean, rtol=0, atol=1e-12)


def test_bulyan_with_f_zero_is_the_weighted_mean(small_cfg) -> None:
    vectors, samples = random_round()
    result, facts = aggregate(small_cfg(aggregator__rule="bulyan"), vectors, samples, previous=[0.5] * 7)
    torch.testing.assert_close(result, fedavg(small_cfg, vectors, samples), rtol=0, atol=1e-12)
    assert sorted(facts.selected) == list(range(6))


@pytest.mark.parametrize("n", [4, 5])
def test_median_of_identical_uploads_is_that_upload(small_cfg, n: int) -> None:
    vector = random_round(1)[0][0]
    assert aggregate(small_cfg(aggregator__rule="median"), [vector] * n)[0].tolist() == vector


# -- an outlier ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rule", ["krum", "multikrum", "median", "trimmedmean", "bulyan"])
def test_an_outlier_scaled_by_a_million_changes_nothing(small_cfg, rule: str) -> None:
    """Seven uploads, one far off; scaling it by 1e6 leaves the result bit for bit (FedAvg moves by ~1e7)."""
    vectors, samples = random_round(7, seed=3)
    far = [100.0 + v for v in vectors[4]]
    scaled = [1e6 * v for v in far]
    cfg = uniform(small_cfg, rule, 1)
    with_far = aggregate(cfg, vectors[:4] + [far] + vectors[5:])[0]
    with_scaled = aggregate(cfg, vectors[:4] + [scaled] + vectors[5:])[0]
    assert torch.equal(with_far, with_scaled)
    assert with_far.abs().max() < 3  # the honest range, not the outlier's
    mean = uniform(small_cfg, "none")
    assert (aggregate(mean, vectors[:4] + [scaled] + vectors[5:])[0] - aggregate(mean, vectors[:4] + [far] +
                                                                                  vectors[5:])[0]).abs().min() > 1e6


def test_norm_bounding_bounds_an_outliers_pull(small_cfg) -> None:
    vectors, _ = random_round(7, seed=3)
    cfg = uniform(small_cfg, "normbounding", aggregator__norm_bound=0.5)
    honest = aggregate(cfg, vectors[:4] + vectors[5:])[0]
    pulled = aggregate(cfg, vectors[:4] + [[1e8] * 7] + vectors[5:])[0]
    assert float(torch.linalg.vector_norm(pulled - honest * 6 / 7)) <= 0.5 / 7 + 1e-9


# -- extras ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rule, counted", [("krum", [1]), ("multikrum", [0, 1, 3]), ("median", [0, 1, 2, 3, 4])])
def test_extras_are_reduced_over_the_selected_clients(small_cfg, rule: str, counted: list[int]) -> None:
    """SCAFFOLD's delta c_i (summed): over the uploads the rule kept (Krum's b; Multi-Krum's a, b, d), else over all."""
    cfg = uniform(small_cfg, rule, 1, scaffold__use=True, aggregator__krum_agg_num=3 if rule == "multikrum" else 0)
    deltas = {i: {"scaffold": {"w": torch.tensor([10.0 ** i, -(i + 1.0)], dtype=torch.float64)}} for i in range(5)}
    _, facts = aggregate(cfg, POINTS, extras=deltas)
    expected = sum(deltas[i]["scaffold"]["w"] for i in counted)
    assert torch.equal(facts.extras("scaffold")["w"], expected)


# -- refusals -------------------------------------------------------------------------------------------------------

REFUSED = [  # small_cfg: 12 clients, sample_client_rate 0.5: 6 sampled per round
    ({"aggregator.rule": "krum", "aggregator.byzantine_node_num": 2},
     "aggregator.rule krum cannot aggregate 6 clients sampled per round: Krum needs more than 2f + 2 = 6 uploads "
     "(f = aggregator.byzantine_node_num 2)"),
    ({"aggregator.rule": "multikrum", "aggregator.byzantine_node_num": 1, "aggregator.krum_agg_num": 6},
     "Multi-Krum averages at most n - f = 5 uploads, but aggregator.krum_agg_num is 6"),
    ({"aggregator.rule": "bulyan", "aggregator.byzantine_node_num": 1}, "Bulyan needs n >= 4f + 3 = 7 uploads"),
    ({"aggregator.rule": "trimmedmean", "aggregator.byzantine_node_num": 3},
     "it excludes k = 3 values at each end of every coordinate, so it needs 2k < n"),
    ({"aggregator.rule": "median", "aggregator.byzantine_node_num": 3}, "n > 2f = 6"),
    ({"aggregator.rule": "centeredclip", "aggregator.byzantine_node_num": 3}, "n > 2f = 6"),
    ({"aggregator.rule": "krum", "aggregator.byzantine_node_num": 2, "federate.sample_client_rate": 1.0,
      "federate.sample_client_num": 5}, "cannot aggregate 5 clients sampled per round"),
    ({"aggregator.rule": "median", "aggregator.byzantine_node_num": 1, "federate.mode": "distributed",
      "federate.min_received_num": 2},
     "aggregator.rule median cannot aggregate a distributed round of federate.min_received_num 2 uploads"),
    ({"aggregator.rule": "median", "aggregator.byzantine_node_num": 3, "federate.mode": "distributed",
      "federate.min_received_num": 6}, "aggregator.rule median cannot aggregate 6 clients sampled per round"),
    ({"aggregator.rule": "median", "fednova.use": True}, "aggregator.rule median and fednova cannot be combined"),
    ({"aggregator.rule": "median", "federate.method": "FedNova"}, "aggregator.rule median and fednova cannot be combined"),
    ({"aggregator.byzantine_node_num": -1}, "config key 'aggregator.byzantine_node_num' must be >= 0; got -1"),
    ({"aggregator.rule": "krumm"}, "must be one of .* got 'krumm'. Did you mean 'krum'?"),
    ({"aggregator.robust_rule": "trimmed_mean"}, "Did you mean 'trimmedmean'?"),
    ({"aggregator.excluded_ratio": 0.5}, "must be in \\[0, 0.5\\)"),
]


@pytest.mark.parametrize("overrides, message", REFUSED, ids=[f"{i}" for i in range(len(REFUSED))])
def test_refused_at_start_up(small_cfg, overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message if "*" in message or "\\" in message else None) as err:
        build_plan(small_cfg(**overrides))
    if "*" not in message and "\\" not in message:
        assert message in str(err.value)


class MyAggregator(Plugin):
    name = "rb_my_aggregator"
    roles = ("aggregator",)

    def aggregate(self, uploads, facts):
        return dict(uploads[0].params)


def test_a_second_aggregator_is_refused(small_cfg, register) -> None:
    register(MyAggregator)
    with pytest.raises(CompositionError, match="rb_my_aggregator and median cannot be combined: both fill the "
                                               "exclusive role 'aggregator'"):
        build_plan(small_cfg(rb_my_aggregator__use=True, aggregator__rule="median"))


@pytest.mark.parametrize("overrides", [
    {"aggregator.rule": "krum", "aggregator.byzantine_node_num": 2, "federate.sample_client_rate": 1.0},
    {"aggregator.rule": "krum", "aggregator.byzantine_node_num": 1, "federate.sample_client_rate": 1.0,
     "federate.sample_client_num": 5},  # n = 2f + 3: the fewest Krum takes
    {"aggregator.rule": "trimmedmean", "aggregator.byzantine_node_num": 1, "federate.sample_client_rate": 1.0,
     "federate.sample_client_num": 3},  # n = 2k + 1
    {"aggregator.rule": "bulyan", "aggregator.byzantine_node_num": 1, "federate.sample_client_rate": 1.0,
     "federate.sample_client_num": 7},  # n = 4f + 3
    {"aggregator.rule": "centeredclip", "aggregator.byzantine_node_num": 1, "federate.sample_client_rate": 1.0,
     "federate.sample_client_num": 3},  # n = 2f + 1
    {"aggregator.rule": "bulyan", "aggregator.byzantine_node_num": 2, "federate.sample_client_rate": 1.0},
    {"aggregator.rule": "median", "aggregator.byzantine_node_num": 1, "federate.mode": "distributed",
     "federate.min_received_num": 3},
], ids=["krum-12", "krum-5", "trimmedmean-3", "bulyan-7", "centeredclip-3", "bulyan-12",
                     "median-distributed"])
def test_the_same_f_is_accepted_when_enough_are_sampled(small_cfg, overrides: dict) -> None:
    assert build_plan(small_cfg(**overrides)).aggregator is not None


def test_the_check_uses_the_data_sets_count_once_known(small_cfg) -> None:
    """The server calls setup(N) before the first round: a data set of 9 clients samples round(4.5) = 4."""
    (rule,) = build_plan(small_cfg(aggregator__rule="krum", aggregator__byzantine_node_num=1)).plugins
    with pytest.raises(ConfigError, match="cannot aggregate 4 clients sampled per round: Krum needs more than 2f"):
        rule.setup(9)
    rule.setup(0)  # a distributed client process reading its own data: the server checks
    (median,) = build_plan(uniform(small_cfg, "median", 1)).plugins
    with pytest.raises(ConfigError, match="cannot aggregate 1 clients sampled per round: the median needs a majority"):
        median.setup(1)  # a federation of one client


def test_a_refusal_is_one_line_before_any_work(tmp_path: Path, capsys) -> None:
    code = main(["--cfg", str(ROOT / "configs" / "fedavg_lr_on_synthetic.yaml"), "outdir", str(tmp_path),
                 "aggregator.rule", "bulyan", "aggregator.byzantine_node_num", "15"])
    err = capsys.readouterr().err
    assert code == 2 and err == ("fedplug: error: aggregator.rule bulyan cannot aggregate 60 clients sampled per "
                                 "round: Bulyan needs n >= 4f + 3 = 63 uploads (f = aggregator.byzantine_node_num 15)\n")
    assert not any(tmp_path.iterdir())  # no run folder


# -- FederatedScope's keys ----------------------------------------------------------------------------------------

def test_federatedscope_keys_are_aliases(tmp_path: Path) -> None:
    path = tmp_path / "fs.yaml"
    path.write_text("aggregator:\n  robust_rule: krum\n  byzantine_node_num: 1\n  krum:\n    agg_num: 3\n"
                    "  trimmedmean:\n    excluded_ratio: 0.2\n  normbounding:\n    norm_bound: 2.5\n")
    a = load_config(path).aggregator
    assert (a.rule, a.byzantine_node_num, a.krum_agg_num, a.excluded_ratio, a.norm_bound) == ("krum", 1, 3, 0.2, 2.5)
    later = load_config(None, ["aggregator.robust_rule", "trimmedmean", "aggregator.BFT_args.krum_agg_num", "2",
                               "aggregator.BFT_args.trimmedmean_excluded_ratio", "0.1"]).aggregator
    assert (later.rule, later.krum_agg_num, later.excluded_ratio) == ("trimmedmean", 2, 0.1)
    path.write_text("aggregator:\n  krum:\n    agg_numm: 3\n")
    with pytest.raises(ConfigError, match="unknown config key 'aggregator.krum.agg_numm'"):
        load_config(path)


# -- the plan --------------------------------------------------------------------------------------------------------

def test_plan_names_the_rule_and_who_set_it(small_cfg) -> None:
    text = describe_plan(build_plan(small_cfg(aggregator__rule="multikrum", aggregator__byzantine_node_num=1,
                                              fedprox__use=True, fedopt__use=True)))
    assert text.startswith("plan: FedProx+FedOpt+Multi-Krum (plug-ins: fedprox, fedopt, multikrum)\n")
    server = text[text.index("server (in this order):"):].splitlines()[1:]
    assert server == [
        "  weights            samples processed in the local update (aggregator.weighting samples) [core]",
        "  aggregate          Multi-Krum: the mean of the m = n - f uploads with the lowest Krum scores "
        "(aggregator.rule multikrum, f = 1; uploads held until the round ends) [multikrum]",
        "  update             global <- SGD(lr 1.0, momentum 0.0) step on delta = aggregate - global [fedopt]"]


@pytest.mark.parametrize("rule, m, method", [("krum", 0, "Krum"), ("krum", 1, "Krum"), ("krum", 2, "Multi-Krum"),
                                              ("multikrum", 0, "Multi-Krum"), ("multikrum", 1, "Multi-Krum")])
def test_krum_with_m_above_one_is_multikrum_in_name_and_summary(small_cfg, rule: str, m: int, method: str) -> None:
    plan = build_plan(small_cfg(aggregator__rule=rule, aggregator__byzantine_node_num=1, aggregator__krum_agg_num=m))
    summary = {"Krum": "Krum: the upload with the lowest Krum score",
               "Multi-Krum": f"Multi-Krum: the mean of the m = {m or 'n - f'} uploads with the lowest Krum scores"}
    assert plan.aggregator.method == method and plan.aggregator.summary == summary[method]


# -- whole runs ------------------------------------------------------------------------------------------------------

RULE_KEYS = {"krum": {"f": 1}, "multikrum": {"f": 1}, "median": {"f": 1}, "trimmedmean": {"f": 1},
             "bulyan": {"f": 1, "federate__sample_client_rate": 0.75}, "normbounding": {"aggregator__norm_bound": 0.3},
             "centeredclip": {"f": 1, "aggregator__clip_tau": 0.1}}


def rule_cfg(small_cfg, rule: str, **more):
    keys = dict(RULE_KEYS[rule])
    return small_cfg(aggregator__rule=rule, aggregator__byzantine_node_num=keys.pop("f", 0), **keys, **more)


def assert_runs_agree(a: dict, b: dict) -> None:
    lines_a, lines_b = metrics_lines(a), metrics_lines(b)
    assert [r["round"] for r in lines_a] == [r["round"] for r in lines_b]
    for ra, rb in zip(lines_a, lines_b):
        for key, value in ra.items():
            assert value == pytest.approx(rb[key], rel=1e-5, abs=1e-6), key


@pytest.mark.parametrize("rule", RULES)
def test_each_rule_with_fedprox_fedopt_learns_and_vectorizes(small_cfg, rule: str) -> None:
    common = dict(fedprox__use=True, fedprox__mu=0.1, fedopt__use=True, fedopt__optimizer__lr=0.8, eval__freq=1)
    seq = run(rule_cfg(small_cfg, rule, **common))
    vec = run(rule_cfg(small_cfg, rule, federate__backend="vectorized", **common))
    plain = run(small_cfg(**common, **{k: v for k, v in RULE_KEYS[rule].items() if k.startswith("federate")}))
    assert_runs_agree(seq, vec)
    assert seq["method"].startswith("FedProx+FedOpt+") and seq["test_acc"] > 0.6
    lines, fedavg = metrics_lines(seq), metrics_lines(plain)
    assert lines[-1]["val_loss"] < lines[0]["val_loss"]  # learns
    assert lines[-1]["val_loss"] != fedavg[-1]["val_loss"]  # and is not the weighted mean


@pytest.mark.parametrize("rule", ["multikrum", "trimmedmean", "centeredclip"])
def test_with_scaffold(small_cfg, rule: str) -> None:
    result = run(rule_cfg(small_cfg, rule, scaffold__use=True))
    assert result["method"].startswith("SCAFFOLD+") and result["test_acc"] > 0.6
    vec = run(rule_cfg(small_cfg, rule, scaffold__use=True, federate__backend="vectorized"))
    assert_runs_agree(result, vec)


def test_with_fednova_and_different_step_counts(small_cfg) -> None:
    """Multi-Krum keeping everyone (f = 0: m = n) is FedNova bit for bit: its weights and its extras, reduced over
    the selected, all enter; with f = 1 one client is left out and the result moves."""
    epochs = dict(train__batch_or_epoch="epoch", train__local_update_steps=1, fednova__use=True)
    fednova = without_run_dir(run(small_cfg(**epochs)), "method")
    everyone = run(small_cfg(aggregator__rule="multikrum", **epochs))
    assert everyone["method"] == "FedNova+Multi-Krum" and without_run_dir(everyone, "method") == fednova
    assert without_run_dir(run(rule_cfg(small_cfg, "multikrum", **epochs)), "method") != fednova


@pytest.mark.parametrize("plugin, rule", [("ditto", "median"), ("pfedme", "bulyan"), ("fedem", "centeredclip"),
                                          ("feddyn", "krum")])
def test_with_personalization_and_server_transforms(small_cfg, plugin: str, rule: str) -> None:
    """Client-side algorithms are untouched; pFedMe's beta and FedDyn's h apply to the robust aggregate."""
    cfg = rule_cfg(small_cfg, rule, **{f"{plugin}__use": True})
    result = run(cfg)
    alone = run(small_cfg(**{f"{plugin}__use": True}, **{k: v for k, v in RULE_KEYS[rule].items()
                                                         if k.startswith("federate")}))
    assert result["method"].endswith("+" + build_plan(cfg).aggregator.method) and math.isfinite(result["val_loss"])
    assert result["test_acc"] > 0.55 and result["val_loss"] != alone["val_loss"]


@pytest.mark.parametrize("backend", ["sequential", "vectorized"])
def test_centered_clipping_resumes_exactly(small_cfg, backend: str, rewind) -> None:
    cfg = rule_cfg(small_cfg, "centeredclip", fedopt__use=True, fedopt__optimizer__momentum=0.5, checkpoint__every=2,
                   eval__freq=1, federate__backend=backend)
    first = run(cfg)
    run_dir = Path(first["run_dir"])
    before = (run_dir / "metrics.jsonl").read_text()
    rewind(run_dir, 4)
    tensors, meta = checkpoint.load(run_dir / checkpoint.CHECKPOINT_FILE)
    center = checkpoint.unflatten(tensors, "server/centeredclip/center/")
    assert meta["round"] == 4 and set(center) == {"fc.weight", "fc.bias"}
    assert all(t.abs().sum() > 0 for t in center.values())
    again = run(cfg, run_dir, resume=True)  # rounds 5 and 6 again, from round 4's v
    assert again == first and (run_dir / "metrics.jsonl").read_text() == before


def test_same_seed_same_result_bit_for_bit(small_cfg) -> None:
    assert without_run_dir(run(rule_cfg(small_cfg, "bulyan"))) == without_run_dir(run(rule_cfg(small_cfg, "bulyan")))


# -- detachable ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rule, imported", [("none", []), ("fedavg", []),
                                            ("bulyan", ["", ".base", ".bulyan", ".krum", ".median"])])
def test_only_the_chosen_rule_is_imported(rule: str, imported: list[str]) -> None:
    code = ("import json, sys\nfrom fedplug.config import load_config\nfrom fedplug.run.plan import build_plan\n"
            f"plan = build_plan(load_config(None, {{'aggregator.rule': {rule!r}}}))\n"
            "print(json.dumps([plan.aggregator is None, sorted(m for m in sys.modules if m.startswith("
            "'fedplug.aggregators'))]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    none, modules = json.loads(out)
    assert none == (not imported) and modules == [f"fedplug.aggregators{m}" for m in imported]


@pytest.mark.parametrize("rule", ["median", "trimmedmean", "bulyan"])
def test_coordinates_taken_a_slice_at_a_time_give_the_same_aggregate(small_cfg, monkeypatch, rule: str) -> None:
    """The coordinate-wise rules sort a slice of coordinates at a time (bounded memory): slices of 4 of a 37-long
    parameter, the last one short, give exactly what one slice of everything gives."""
    from fedplug.aggregators import base

    gen = torch.Generator().manual_seed(5)
    vectors = (torch.randn(11, 37, generator=gen, dtype=torch.float64) * 3).tolist()
    cfg = small_cfg(aggregator__rule=rule, aggregator__byzantine_node_num=2, federate__sample_client_rate=1.0)
    whole, _ = aggregate(cfg, vectors, samples=list(range(1, 12)))
    monkeypatch.setattr(base, "COORDINATES_AT_ONCE", 4)
    sliced, _ = aggregate(cfg, vectors, samples=list(range(1, 12)))
    assert torch.equal(whole, sliced) and not torch.equal(whole, torch.tensor(vectors[0], dtype=torch.float64))
