"""DP-FedAvg (docs/privacy.md): clipping by hand, the fixed-denominator estimator (the uniform mean exactly
without noise when every expected client arrives, shrunk when fewer do), the noise's scale and
reproducibility, epsilon against Opacus called directly and in every output, refusals before any run
folder, composition (FedProx, FedOpt, an aggregator plug-in: noise after it), resume, launch ==
standalone, adaptive clipping, detachability."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from opacus.accountants import PRVAccountant
from opacus.accountants.analysis import rdp as rdp_analysis
from opacus.accountants.rdp import RDPAccountant

from fedplug.algorithms.adaptive_clip import AdaptiveClip, update_noise_multiplier
from fedplug.algorithms.dp import clip_update, noised_mean, update_norm
from fedplug.algorithms.dp_accountant import epsilon
from fedplug.core.messages import Messages, RoundFacts, Upload, UpSpec, scalar
from fedplug.core.plugin import LocalView, Params, Plugin
from fedplug.errors import ConfigError, UserError
from fedplug.run import checkpoint
from fedplug.run.plan import build_plan, describe_plan
from fedplug.run.simulation import run
from fedplug.seeding import DP_NOISE, generator
from fedplug_procs import Proc, fedplug_cmd, without_run_dir
from test_distributed import CONFIG, launch_words, standalone

ROOT = Path(__file__).resolve().parents[1]
DP = {"dp__use": True, "dp__clip": 0.5, "dp__noise_multiplier": 1.0}


def without(result: dict, *keys: str) -> dict:
    return {k: v for k, v in result.items() if k not in ("run_dir", *keys)}


def records(result: dict) -> list[dict]:
    return [json.loads(line) for line in (Path(result["run_dir"]) / "metrics.jsonl").read_text().splitlines()]


# -- the mechanism by hand -------------------------------------------------------------------------
def test_clipping_by_hand() -> None:
    received = {"a": torch.zeros(2), "b": torch.ones(1)}
    params = {"a": torch.tensor([3.0, 0.0]), "b": torch.tensor([5.0])}  # update (3, 0, 4): norm 5
    assert float(update_norm(params, received)) == 5.0
    clipped = clip_update(params, received, 1.0)
    torch.testing.assert_close(clipped["a"], torch.tensor([0.6, 0.0]))
    torch.testing.assert_close(clipped["b"], torch.tensor([1.8]))  # 1 + 4/5
    assert float(update_norm(clipped, received)) == pytest.approx(1.0)
    assert clip_update(params, received, 5.5) is params  # within the bound: sent as it is


def test_fixed_denominator_when_fewer_arrive() -> None:
    old, aggregate = {"w": torch.zeros(3)}, {"w": torch.tensor([1.0, 2.0, 4.0])}
    noise = generator(0, DP_NOISE, 1)
    assert noised_mean(old, aggregate, 4, 4, 0.0, noise) is aggregate  # all expected clients: the mean exactly
    half = noised_mean(old, aggregate, 2, 4, 0.0, noise)  # 2 of 4: the sum 2 * mean over 4
    torch.testing.assert_close(half["w"], torch.tensor([0.5, 1.0, 2.0]))


def test_noise_scale_and_reproducibility() -> None:
    old = {"w": torch.zeros(200_000)}
    draw = noised_mean(old, old, 5, 5, 2.0, generator(0, DP_NOISE, 3))["w"]  # std sigma / expected = 0.4
    assert float(draw.std()) == pytest.approx(0.4, rel=0.01) and abs(float(draw.mean())) < 0.005
    again = noised_mean(old, old, 5, 5, 2.0, generator(0, DP_NOISE, 3))["w"]
    other = noised_mean(old, old, 5, 5, 2.0, generator(0, DP_NOISE, 4))["w"]
    assert torch.equal(draw, again) and not torch.equal(draw, other)


def test_plugin_transform_is_seeded_per_round(small_cfg) -> None:
    plugin = build_plan(small_cfg(**DP)).plugins[0]
    old = {"w": torch.zeros(1000)}

    def facts(round_num: int) -> RoundFacts:
        return RoundFacts(round_num, 12, tuple(range(6)), old, received=list(range(6)))

    first = plugin.transform_aggregate(old, old, facts(2))["w"]
    assert torch.equal(first, plugin.transform_aggregate(old, old, facts(2))["w"])
    assert not torch.equal(first, plugin.transform_aggregate(old, old, facts(3))["w"])
    assert float(first.std()) == pytest.approx(1.0 * 0.5 / 6, rel=0.1)  # z * clip / expected


def test_adaptive_clip_by_hand() -> None:
    assert update_noise_multiplier(1.0, 3.0) == pytest.approx((1 - 1 / 36) ** -0.5)
    clip = AdaptiveClip(target_quantile=0.5, lr=0.2, count_noise=0.0, z=0.0)  # no noise: the paper's update exactly
    noise = generator(0, DP_NOISE, 1)
    assert clip.next_clip(1.0, 4 * 0.5, 4, noise) == pytest.approx(math.exp(-0.2 * 0.5))  # all within: shrink
    assert clip.next_clip(1.0, 4 * -0.5, 4, noise) == pytest.approx(math.exp(0.2 * 0.5))  # all clipped: grow


# -- accounting ------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def fresh_epsilon_cache():
    """epsilon() is cached per process: each test computes its own figures (mutation testing forks a process
    whose cache an earlier test filled)."""
    epsilon.cache_clear()


def test_epsilon_matches_opacus_called_directly() -> None:
    q, z, rounds, delta = 0.2, 1.1, 50, 1e-5
    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = rdp_analysis.compute_rdp(q=q, noise_multiplier=z, steps=rounds, orders=orders)
    direct, _ = rdp_analysis.get_privacy_spent(orders=orders, rdp=rdp, delta=delta)
    assert epsilon("rdp", q, z, rounds, delta) == pytest.approx(float(direct), rel=1e-12)
    prv = PRVAccountant()
    for _ in range(rounds):
        prv.step(noise_multiplier=z, sample_rate=q)
    assert epsilon("prv", q, z, rounds, delta) == pytest.approx(prv.get_epsilon(delta=delta), rel=1e-9)
    assert epsilon("rdp", q, z, rounds + 10, delta) > epsilon("rdp", q, z, rounds, delta)
    assert epsilon("rdp", q, 2 * z, rounds, delta) < epsilon("rdp", q, z, rounds, delta)
    assert epsilon("rdp", q, 0.0, rounds, delta) == math.inf and epsilon("rdp", q, z, 0, delta) == 0.0
    every = rdp_analysis.compute_rdp(q=1.0, noise_multiplier=z, steps=rounds, orders=orders)  # every client, each round
    assert epsilon("rdp", 1.0, z, rounds, delta) == pytest.approx(
        float(rdp_analysis.get_privacy_spent(orders=orders, rdp=every, delta=delta)[0]), rel=1e-12)
    for q_outside in (0.0, 1.5):
        with pytest.raises(ConfigError, match=f"the accountant needs a sampling rate q in \\(0, 1\\], got {q_outside}"):
            epsilon("rdp", q_outside, z, rounds, delta)


def test_epsilon_in_every_record_the_summary_and_the_final_line(small_cfg) -> None:
    result = run(small_cfg(**DP))
    lines = records(result)
    assert [r["epsilon"] for r in lines] == [epsilon("rdp", 0.5, 1.0, r["round"], 1e-5) for r in lines]
    assert lines[0]["epsilon"] < lines[-1]["epsilon"]
    summary = json.loads((Path(result["run_dir"]) / "summary.json").read_text())
    assert result["epsilon"] == summary["epsilon"] == lines[-1]["epsilon"] == epsilon("rdp", 0.5, 1.0, 6, 1e-5)
    plain = run(small_cfg())
    assert "epsilon" not in plain and all("epsilon" not in r for r in records(plain))


def test_zero_noise_and_huge_clip_is_the_uniform_mean_bit_for_bit(small_cfg) -> None:
    dp = run(small_cfg(dp__use=True, dp__clip=1e9, dp__noise_multiplier=0.0))
    assert dp["method"] == "DP-FedAvg" and dp["epsilon"] == math.inf
    assert without(dp, "method", "epsilon") == without(run(small_cfg(aggregator__weighting="uniform")), "method")
    assert without(run(small_cfg(**DP)), "epsilon") != without(dp, "epsilon")  # noise and clip do change the run


# -- refusals --------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, message", [
    ({"dp__clip": 0.0}, "dp.clip must be > 0"),
    ({"dp__clip": -1.0}, "dp.clip must be > 0"),
    ({"dp__noise_multiplier": -0.5}, "dp.noise_multiplier"),
    ({"dp__delta": 0.0}, "dp.delta"),
    ({"dp__delta": 1.0}, "dp.delta"),
    ({"dp__accountant": "pld"}, "dp.accountant"),
    ({"dp__accountant": "prv", "dp__noise_multiplier": 0.0}, "prv cannot account a noise multiplier of 0"),
    ({"dp__adaptive_clip__use": True, "dp__adaptive_clip__target_quantile": 1.5}, "target_quantile"),
    ({"dp__adaptive_clip__use": True, "dp__adaptive_clip__lr": 0.0}, "adaptive_clip.lr"),
    ({"dp__adaptive_clip__use": True, "dp__adaptive_clip__count_noise": 0.4},
     "2 \\* count_noise > dp.noise_multiplier"),
    ({"scaffold__use": True}, "dp and scaffold cannot be combined: scaffold sends"),
    ({"fednova__use": True}, "dp and fednova cannot be combined: both fill the exclusive role 'weighting'"),
    ({"aggregator__weighting": "uniform"}, "dp sets the aggregation weights itself"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_refused_before_any_run_folder(small_cfg, tmp_path: Path, overrides: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        run(small_cfg(**{**DP, **overrides}))
    assert not (tmp_path / "runs").exists()


def test_cli_refusal_is_one_error_line(tmp_path: Path) -> None:
    proc = subprocess.run(fedplug_cmd("--cfg", CONFIG, "outdir", tmp_path / "runs", "dp.use", "True"), cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("fedplug: error: dp.clip must be")
    assert not (tmp_path / "runs").exists()


# -- composition -----------------------------------------------------------------------------------
class Median(Plugin):
    """A tiny aggregator plug-in: the coordinate-wise median of the uploads."""

    name = "test_median"
    roles = ("aggregator",)

    def aggregate(self, uploads: list[Upload], facts: RoundFacts):
        return {n: torch.stack([u.params[n] for u in uploads]).median(dim=0).values for n in uploads[0].params}

    def describe_server(self) -> list[str]:
        return [f"{'aggregate':<19}coordinate-wise median"]


def test_with_fedprox_and_fedopt(small_cfg) -> None:
    cfg = small_cfg(**DP, fedprox__use=True, fedprox__mu=0.1, fedopt__use=True, fedopt__optimizer__lr=0.5)
    text = describe_plan(build_plan(cfg))
    assert text.index("transform          new = old +") < text.index("update             global <- SGD")
    result = run(cfg)
    assert result["method"] == "DP-FedAvg+FedProx+FedOpt" and result["test_acc"] > 0.5


def test_noise_goes_on_the_aggregate_before_other_transforms(small_cfg) -> None:
    text = describe_plan(build_plan(small_cfg(**DP, feddyn__use=True)))
    # FedDyn's h reads the noised aggregate
    assert text.index("transform          new = old +") < text.index("transform          h <- h - alpha")


def test_noise_comes_after_an_aggregator_plugin(small_cfg, register) -> None:
    register(Median)
    cfg = small_cfg(test_median__use=True, **{**DP, "dp__noise_multiplier": 0.0, "dp__clip": 1e9})
    text = describe_plan(build_plan(cfg))
    assert "transform_upload [dp]" in text
    median, noise = text.index("[test_median]"), text.index("transform          new = old +")
    assert median < noise < text.index("global <- aggregate")
    # Without noise and with every client in, DP passes the aggregator's output on unchanged; with noise it does not.
    median_only = run(small_cfg(test_median__use=True))
    assert without(run(cfg), "method", "epsilon") == without(median_only, "method")
    assert without(run(small_cfg(test_median__use=True, **DP)), "method", "epsilon") != without(median_only, "method")


# -- resume, distributed, adaptive, detachability -----------------------------------------------------
def test_resume_is_exact_with_the_adaptive_clip(small_cfg, rewind) -> None:
    cfg = small_cfg(**DP, dp__adaptive_clip__use=True, dp__adaptive_clip__count_noise=1.0, checkpoint__every=2,
                    eval__freq=1)
    first = run(cfg)
    run_dir = Path(first["run_dir"])
    before = (run_dir / "metrics.jsonl").read_text()
    clips = [r["dp_clip"] for r in records(first)]
    assert len(set(clips)) == len(clips) and clips[0] != 0.5  # the clip moves every round
    rewind(run_dir, 4)
    tensors, meta = checkpoint.load(run_dir / checkpoint.CHECKPOINT_FILE)
    assert meta["round"] == 4 and float(tensors["server/dp/clip/value"]) == clips[3]
    again = run(cfg, run_dir, resume=True)  # rounds 5 and 6 again: same clip, same noise
    assert again == first and (run_dir / "metrics.jsonl").read_text() == before


def test_vectorized_backend_equals_sequential(small_cfg) -> None:
    """The clip at the upload point and the count of unclipped updates, per client of a cohort."""
    cfg = dict(DP, dp__adaptive_clip__use=True, dp__adaptive_clip__count_noise=1.0)
    sequential, vectorized = run(small_cfg(**cfg)), run(small_cfg(**cfg, federate__backend="vectorized"))
    assert vectorized["epsilon"] == sequential["epsilon"]
    for key in ("test_acc", "val_loss", "test_loss"):
        assert vectorized[key] == pytest.approx(sequential[key], abs=1e-5)


def test_launch_equals_standalone(tmp_path: Path, data_root: Path) -> None:
    words = ["dp.use", "True", "dp.clip", "0.5", "dp.noise_multiplier", "0.8", "dp.adaptive_clip.use", "True",
             "federate.total_round_num", "6"]
    expected = standalone(tmp_path, data_root, words)
    assert expected["method"] == "DP-FedAvg" and 0 < expected["epsilon"] < math.inf
    launch = Proc(fedplug_cmd("launch", "--cfg", CONFIG, *launch_words(tmp_path, data_root), *words), tmp_path)
    code, result = launch.finish()
    assert code == 0, launch.log[-3000:]
    assert without_run_dir(result) == without_run_dir(expected)


def test_dp_off_is_not_imported() -> None:
    code = ("import sys; from fedplug.config import load_config; "
            "from fedplug.run.plan import build_plan, describe_plan;"
            "describe_plan(build_plan(load_config(None, {'fedprox.use': True})));"
            "print([m for m in ('fedplug.algorithms.dp', 'fedplug.algorithms.dp_accountant', 'opacus') "
            "if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip() == "[]"


# -- the mechanism's edges (mutation testing) --------------------------------------------------------
def test_norm_is_summed_in_float64_and_an_update_at_the_bound_goes_as_it_is() -> None:
    huge = {"a": torch.tensor([3e20, 4e20])}  # float32 squares overflow to inf
    assert float(update_norm(huge, {"a": torch.zeros(2)})) == pytest.approx(5e20, rel=1e-6)
    received, params = {"a": torch.zeros(2)}, {"a": torch.tensor([3.0, 4.0])}
    assert clip_update(params, received, 5.0) is params  # norm exactly the clip: not clipped


def test_fewer_arrive_from_a_nonzero_global_and_the_noise_of_float64_parameters() -> None:
    old, aggregate = {"w": torch.ones(3)}, {"w": torch.tensor([2.0, 3.0, 5.0])}
    half = noised_mean(old, aggregate, 2, 4, 0.0, generator(0, DP_NOISE, 1))  # old + 2/4 (aggregate - old)
    torch.testing.assert_close(half["w"], torch.tensor([1.5, 2.0, 3.0]))
    zero = {"w": torch.zeros(5, dtype=torch.float64)}
    noised = noised_mean(zero, zero, 2, 2, 3.0, generator(0, DP_NOISE, 1))["w"]
    assert torch.equal(noised, torch.randn(5, generator=generator(0, DP_NOISE, 1), dtype=torch.float64) * 1.5)


def test_plugin_transform_when_fewer_arrive(small_cfg) -> None:
    plugin = build_plan(small_cfg(**DP)).plugins[0]
    old, aggregate = {"w": torch.ones(4)}, {"w": torch.arange(4.0)}
    got = plugin.transform_aggregate(old, aggregate, RoundFacts(2, 12, tuple(range(6)), old, received=[0, 1, 2]))
    want = noised_mean(old, aggregate, 3, 6, 1.0 * 0.5, generator(plugin.cfg.seed, DP_NOISE, 2))  # sigma z * clip
    assert torch.equal(got["w"], want["w"])


def test_an_update_at_the_clip_counts_as_unclipped(small_cfg) -> None:
    plugin = build_plan(small_cfg(**DP, dp__adaptive_clip__use=True, dp__adaptive_clip__count_noise=1.0)).plugins[0]

    def sent(clip: float) -> float:
        view = LocalView({"a": torch.tensor([3.0, 4.0])}, {"a": torch.zeros(2)},
                         {"clip": torch.tensor(clip, dtype=torch.float64)}, {}, 0.1)
        return float(plugin.client_upload(view)["unclipped"])

    assert (sent(5.0), sent(4.9)) == (0.5, -0.5)  # b_k - 1/2, b_k = 1 when the norm is at most the clip


class TwoUps(Plugin):
    """A user's plug-in sending two tensors up besides the model."""

    name = "dp_two_ups"

    def messages(self, shared: Params) -> Messages:
        return Messages(up={"norm": UpSpec(scalar(), "sum"), "count": UpSpec(scalar(), "sum")})


@pytest.mark.parametrize("other, sends", [("scaffold", "<parameter>"), ("dp_two_ups", "count, norm")])
def test_refusal_names_what_the_other_plugin_would_send_in_the_clear(small_cfg, register, other: str,
                                                                    sends: str) -> None:
    register(TwoUps)
    with pytest.raises(UserError) as refused:
        build_plan(small_cfg(**DP, **{f"{other}__use": True}))
    assert str(refused.value).endswith(f"{other} sends {sends} up besides the model, which DP-FedAvg neither "
                                       "clips nor noises: the server would see them in the clear")


def test_plan_prints_the_adaptive_clip_line(small_cfg) -> None:
    cfg = small_cfg(**DP, dp__adaptive_clip__use=True, dp__adaptive_clip__count_noise=1.0)
    lines = describe_plan(build_plan(cfg)).splitlines()
    a = cfg.dp.adaptive_clip
    z = update_noise_multiplier(1.0, 1.0)
    assert (f"  transform          clip <- clip * exp(-{a.lr} * (b - {a.target_quantile})), b = (sum(b_k - 1/2) + "
            f"N(0, 1.0^2)) / expected + 1/2; update noise multiplier {z:.4g} [dp]") in lines
