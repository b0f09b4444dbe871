"""Attacks (fedplug/attacks/): each transformation on hand-checked numbers, the seeded choice of attackers,
label flipping for attackers only, an attacked run worse than a clean one, exact resume, refusals in one
line, detachability, and `fedplug launch` equal to standalone with an attack on."""
from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from fedplug.attacks.alie import ALittleIsEnough, alie_update, paper_z
from fedplug.attacks.base import choose_attackers
from fedplug.attacks.gaussian import noisy
from fedplug.attacks.ipm import InnerProductManipulation, ipm_update
from fedplug.attacks.labelflip import flipped_labels
from fedplug.attacks.replacement import boosted
from fedplug.attacks.signflip import sign_flipped
from fedplug.cli import main
from fedplug.config import load_config
from fedplug.core.messages import RoundFacts, Upload
from fedplug.core.plugin import HookSpec, Plugin
from fedplug.data import build_data
from fedplug.run.plan import build_plan
from fedplug.run.simulation import run
from fedplug.seeding import generator
from fedplug_procs import ROOT, Proc, fedplug_cmd, without_run_dir
from test_distributed import CONFIG, launch_words, standalone

X = {"w": torch.tensor([0.5, 0.5]), "b": torch.tensor([1.0])}  # the received global model
Y = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([0.0])}  # a trained model: update (0.5, 1.5), (-1)


def test_sign_flip_of_a_known_update() -> None:
    out = sign_flipped(Y, X, 10.0)  # x - 10 * (y - x)
    assert torch.equal(out["w"], torch.tensor([-4.5, -14.5])) and torch.equal(out["b"], torch.tensor([11.0]))


def test_replacement_boosts_the_update() -> None:
    out = boosted(Y, X, 3.0)  # x + 3 * (y - x)
    assert torch.equal(out["w"], torch.tensor([2.0, 5.0])) and torch.equal(out["b"], torch.tensor([-2.0]))


def test_gaussian_noise_is_seeded_per_round_and_client() -> None:
    big = {"w": torch.zeros(20000)}
    out = noisy(big, big, 2.0, "replace", generator(0, 4, 3, 7))
    assert abs(out["w"].std().item() - 2.0) < 0.05 and abs(out["w"].mean().item()) < 0.05
    assert torch.equal(out["w"], noisy(big, big, 2.0, "replace", generator(0, 4, 3, 7))["w"])
    assert not torch.equal(out["w"], noisy(big, big, 2.0, "replace", generator(0, 4, 3, 8))["w"])
    noise = noisy(Y, X, 1.0, "replace", generator(0, 4, 1, 1))
    added = noisy(Y, X, 1.0, "add", generator(0, 4, 1, 1))  # the same noise on top of y - x: y + noise
    assert torch.allclose(added["w"] - noise["w"], Y["w"] - X["w"])


def test_alie_is_mean_minus_z_std_of_four_hand_vectors() -> None:
    honest = [{"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([2.0, 2.0])}, {"w": torch.tensor([3.0, 2.0])},
              {"w": torch.tensor([4.0, 2.0])}]
    # coordinate 0: mean 2.5, population std sqrt(1.25); coordinate 1: mean 2, std 0
    lie = alie_update(honest, 2.0)["w"]
    assert torch.allclose(lie, torch.tensor([2.5 - 2 * math.sqrt(1.25), 2.0]))


def test_alie_z_is_the_papers_z_max() -> None:
    # n = 10, f = 2: s = floor(10/2 + 1) - 2 = 4, z = Phi^-1(6/10) = 0.2533 (normal table)
    assert paper_z(10, 2) == pytest.approx(0.2533, abs=1e-4)
    # n = 60, f = 12 (20% of the reference's 60 a round): s = 19, z = Phi^-1(41/60) = 0.4770
    assert paper_z(60, 12) == pytest.approx(0.4770, abs=1e-4)


def test_ipm_is_minus_epsilon_times_the_honest_mean() -> None:
    honest = [{"w": torch.tensor([1.0, -2.0])}, {"w": torch.tensor([3.0, 0.0])}]
    assert torch.allclose(ipm_update(honest, 0.5)["w"], torch.tensor([-1.0, 0.5]))


@pytest.mark.parametrize("cls, attack", [(ALittleIsEnough, "alie"), (InnerProductManipulation, "ipm")])
def test_colluders_replace_only_the_attackers_uploads(small_cfg, cls, attack: str) -> None:
    plugin = cls(small_cfg(attack__type=attack, attack__client_ids=[4], attack__alie_z=1.0, attack__ipm_epsilon=2.0))
    plugin.setup(12)
    zero = {"w": torch.zeros(1)}
    uploads = [Upload(c, {"w": torch.tensor([v])}, {"train_total": 1.0}) for c, v in [(1, 1.0), (4, 9.0), (7, 3.0)]]
    out = plugin.transform_uploads(uploads, RoundFacts(1, 12, (1, 4, 7), zero))
    assert [u.client for u in out] == [1, 4, 7] and out[0] is uploads[0] and out[2] is uploads[2]
    expected = 2.0 - 1.0 if attack == "alie" else -2.0 * 2.0  # honest 1 and 3: mean 2, std 1
    assert torch.allclose(out[1].params["w"], torch.tensor([expected]))


def test_attackers_are_seeded_fixed_and_of_the_right_size() -> None:
    chosen = choose_attackers(0, 300, 0.1)
    assert chosen == choose_attackers(0, 300, 0.1) and len(chosen) == 30 and chosen <= set(range(300))
    assert chosen != choose_attackers(1, 300, 0.1)
    assert len(choose_attackers(0, 12, 0.25)) == 3 and len(choose_attackers(0, 300, 0.3)) == 90
    assert choose_attackers(0, 300, 0.1) <= choose_attackers(0, 300, 0.2)  # one permutation: the sets nest


def test_the_attack_plugin_picks_the_seeded_set(small_cfg) -> None:
    (plugin,) = build_plan(small_cfg(attack__type="signflip", attack__fraction=0.25, seed=3)).plugins
    assert plugin.attackers == choose_attackers(3, 12, 0.25)
    (plugin,) = build_plan(small_cfg(attack__type="signflip", attack__client_ids=[2, 11])).plugins
    assert plugin.attackers == {2, 11}


class LabelRecorder(Plugin):
    """Records, per client, the labels of every training batch and the true labels of those rows."""

    name = "label_recorder"
    seen: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    def hooks(self) -> list[HookSpec]:
        return [HookSpec("on_batch_forward", self._record, "_record_labels", before=("_hook_on_batch_forward",))]

    def _record(self, ctx) -> None:
        true = self.truth.client(ctx.client_id)[1][ctx.batch_index]
        LabelRecorder.seen.append((ctx.client_id, ctx.y_batch.clone(), true))


def test_label_flipping_flips_the_attackers_labels_only(small_cfg, register) -> None:
    register(LabelRecorder)
    cfg = small_cfg(attack__type="labelflip", attack__client_ids=[0, 1, 2, 3, 4, 5], label_recorder__use=True,
                    federate__total_round_num=2)
    LabelRecorder.truth = build_data(cfg).splits["train"]
    LabelRecorder.seen = []
    run(cfg)
    attackers = {c for c, _, _ in LabelRecorder.seen if c < 6}
    honest = {c for c, _, _ in LabelRecorder.seen if c >= 6}
    assert attackers and honest
    for client, labels, true in LabelRecorder.seen:
        assert torch.equal(labels, flipped_labels(true, 2) if client < 6 else true)
    assert any(not torch.equal(labels, true) for c, labels, true in LabelRecorder.seen if c < 6)


def test_an_attacked_fedavg_is_measurably_worse(small_cfg) -> None:
    clean = run(small_cfg())
    attacked = run(small_cfg(attack__type="signflip", attack__fraction=0.25, attack__scale=10.0))
    assert attacked["method"] == "SignFlipAttack"
    assert attacked["test_acc"] < clean["test_acc"] - 0.05 and attacked["val_loss"] > clean["val_loss"]


@pytest.mark.parametrize("attack", ["gaussian", "alie"])
def test_resume_with_an_attack_repeats_the_end_exactly(small_cfg, attack: str, rewind) -> None:
    cfg = small_cfg(attack__type=attack, attack__fraction=0.25, **{"checkpoint.every": 2, "eval.freq": 1})
    first = run(cfg)
    run_dir = Path(first["run_dir"])
    before = (run_dir / "metrics.jsonl").read_text()
    rewind(run_dir, 4)  # as if killed after round 4's checkpoint
    assert run(cfg, run_dir, resume=True) == first and (run_dir / "metrics.jsonl").read_text() == before


def test_same_seed_same_attacked_run(small_cfg) -> None:
    cfg = small_cfg(attack__type="gaussian", attack__fraction=0.25, federate__total_round_num=2)
    assert without_run_dir(run(cfg)) == without_run_dir(run(cfg))


@pytest.mark.parametrize("words, message", [
    (["attack.type", "signflip", "attack.fraction", "1.0"], "config key 'attack.fraction' must be in [0, 1); got 1.0"),
    (["attack.type", "signflp", "attack.fraction", "0.1"], "Did you mean 'signflip'?"),
    (["attack.type", "signflip", "attack.client_ids", "[3, 12]"],
     "attack.client_ids: client 12 is not one of the federation's 12 clients (0..11)"),
    (["attack.type", "ipm"], "attack.type ipm has no attackers: set attack.fraction (in (0, 1)) or attack.client_ids"),
    (["attack.type", "alie", "attack.fraction", "0.01"], "attack.fraction 0.01 of 12 clients is no attacker"),
    (["attack.type", "gaussian", "attack.fraction", "0.1", "attack.client_ids", "[1]"], "give one of them"),
])
def test_bad_attack_input_is_refused_in_one_line_before_any_work(tmp_path: Path, capsys, words: list[str],
                                                                 message: str) -> None:
    small = ["data.synthetic.num_clients", "12", "data.root", str(tmp_path / "never"), "outdir", str(tmp_path / "out")]
    assert main([*small, *words]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "never").exists() and not (tmp_path / "out").exists()  # no data made, no run folder


def test_attacks_are_detachable() -> None:
    code = """
        import json, sys
        from fedplug.config import load_config
        from fedplug.run.plan import build_plan
        build_plan(load_config(None, {WORDS}))
        print(json.dumps(sorted(m for m in sys.modules if m.startswith("fedplug.attacks."))))
    """

    def loaded(words: dict) -> list[str]:
        out = subprocess.run([sys.executable, "-c", textwrap.dedent(code.replace("{WORDS}", repr(words)))],
                             capture_output=True, text=True, cwd=ROOT, check=True).stdout
        return json.loads(out)

    assert loaded({}) == ["fedplug.attacks.schemas"]
    assert loaded({"attack.type": "ipm", "attack.fraction": 0.1}) == ["fedplug.attacks.base", "fedplug.attacks.ipm",
                                                                      "fedplug.attacks.schemas"]


@pytest.mark.parametrize("words", [{"fedprox.use": True, "scaffold.use": True}, {"ditto.use": True},
                                   {"fedopt.use": True, "fednova.use": True}, {"pfedme.use": True}])
def test_attacks_combine_with_the_algorithms(small_cfg, words: dict) -> None:
    for attack in ("labelflip", "ipm"):
        plan = build_plan(small_cfg(attack__type=attack, attack__fraction=0.25, **words))
        assert plan.names[-1] == "attack"
    result = run(small_cfg(attack__type="replacement", attack__fraction=0.25, federate__total_round_num=2, **words))
    assert math.isfinite(result["val_loss"])


def test_vectorized_backend_gives_the_sequential_numbers_with_an_attack(small_cfg) -> None:
    words = dict(attack__type="gaussian", attack__fraction=0.25, attack__noise_mode="add", federate__total_round_num=2)
    sequential = run(small_cfg(**words))
    vectorized = run(small_cfg(federate__backend="vectorized", **words))
    assert vectorized["test_acc"] == pytest.approx(sequential["test_acc"], abs=1e-4)
    assert vectorized["val_loss"] == pytest.approx(sequential["val_loss"], rel=1e-5)


def test_colluding_attacks_are_refused_in_distributed_mode(tmp_path: Path, capsys) -> None:
    assert main(["launch", "--cfg", str(CONFIG), "outdir", str(tmp_path), "attack.type", "alie",
                 "attack.fraction", "0.25"]) == 2
    err = capsys.readouterr().err
    assert "ALIEAttack reads every client's upload of a round before the aggregation" in err
    assert err.count("\n") == 1 and not any(tmp_path.iterdir())


def test_launch_with_an_attack_equals_standalone(tmp_path: Path, data_root: Path) -> None:
    """Replacement: the label-flipping hook and the boosted upload run in the client processes."""
    words = ["attack.type", "replacement", "attack.fraction", "0.25", "attack.scale", "2.0"]
    expected = standalone(tmp_path, data_root, words)
    assert expected["method"] == "ReplacementAttack"
    launch = Proc(fedplug_cmd("launch", "--cfg", CONFIG, *launch_words(tmp_path, data_root), *words), tmp_path)
    code, result = launch.finish()
    assert code == 0, launch.log[-3000:]
    assert without_run_dir(result) == without_run_dir(expected)
    clean = standalone(tmp_path / "clean", data_root, [])
    assert clean["test_acc"] != expected["test_acc"]  # the attack did something


def test_attacks_combine_with_the_robust_rules(small_cfg) -> None:
    attacked = dict(attack__type="signflip", attack__fraction=0.25, attack__scale=10.0, aggregator__byzantine_node_num=1)
    for rule in ("krum", "multikrum", "trimmedmean", "centeredclip"):
        assert build_plan(small_cfg(aggregator__rule=rule, **attacked)).names == [rule, "attack"]
    mean = run(small_cfg(**attacked))
    median = run(small_cfg(aggregator__rule="median", **attacked))
    assert median["method"] == "Median+SignFlipAttack"
    assert median["test_acc"] > mean["test_acc"] + 0.05  # the median holds where the mean does not
