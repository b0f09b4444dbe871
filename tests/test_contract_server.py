"""The contract (issue 10): the server's order, the pinned plan, float keys in scientific notation, and the
fingerprint of a user plug-in's source."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from fedplug.algorithms import registry
from fedplug.cli import main
from fedplug.config import load_config
from fedplug.config.schema import ROOT
from fedplug.core.messages import RoundFacts, Upload
from fedplug.core.plugin import Params, Plugin
from fedplug.errors import ConfigError
from fedplug.run.fingerprint import fingerprint
from fedplug.run.plan import build_plan
from fedplug.run.simulation import run

from contract_helpers import REC, FAST
from test_contract_weights import plan_text


# -- 6. The server order --------------------------------------------------------------------------------------

class OrderA(Plugin):
    name = "ct_order_a"
    roles = ("weighting", "aggregator", "server_update")

    def client_weight(self, upload: Upload) -> float:
        REC["order"].append(f"weights {self.name}")
        return 1.0

    def aggregate(self, uploads: list[Upload], facts: RoundFacts) -> Params:
        REC["order"].append(f"aggregate {self.name}")
        return {n: torch.stack([u.params[n] for u in uploads]).mean(0) for n in uploads[0].params}

    def receive(self, facts: RoundFacts) -> None:
        REC["order"].append(f"receive {self.name} (round {facts.round_num})")

    def transform_aggregate(self, old, aggregate, facts):
        REC["order"].append(f"transform {self.name} (round {facts.round_num})")
        return aggregate

    def server_update(self, old, aggregate, facts):
        REC["order"].append(f"update {self.name} (round {facts.round_num})")
        return aggregate


class OrderB(Plugin):
    name = "ct_order_b"

    def receive(self, facts: RoundFacts) -> None:
        REC["order"].append(f"receive {self.name}")

    def transform_aggregate(self, old, aggregate, facts):
        REC["order"].append(f"transform {self.name}")
        return aggregate


def test_the_server_runs_weights_aggregate_receive_transform_update(register, small_cfg) -> None:
    register(OrderB, OrderA)
    run(small_cfg(**{**FAST, "ct_order_a.use": True, "ct_order_b.use": True}))
    def one_round(r: int) -> list[str]:  # each server step gets the round's facts
        return ["weights ct_order_a"] * 6 + ["aggregate ct_order_a", f"receive ct_order_a (round {r})",
                                             "receive ct_order_b", f"transform ct_order_a (round {r})",
                                             "transform ct_order_b", f"update ct_order_a (round {r})"]
    assert REC["order"] == one_round(1) + one_round(2)


class Reporter(Plugin):
    """A user's figures for each round's record, computed from the round's facts."""

    name = "ct_reporter"

    def report(self, facts: RoundFacts) -> dict[str, float]:
        return {"ct_round_x10": 10.0 * facts.round_num, "ct_sampled": float(len(facts.sampled)),
                "ct_of": float(facts.num_clients), "ct_tensors": float(len(facts.previous_global))}


def test_a_plugins_report_reads_the_rounds_facts_into_every_record_and_the_summary(register, small_cfg) -> None:
    import json

    register(Reporter)
    result = run(small_cfg(**{**FAST, "eval.freq": 1, "ct_reporter.use": True}))  # a record per round
    records = [json.loads(line) for line in (Path(result["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert [(r["round"], r["ct_round_x10"], r["ct_sampled"], r["ct_of"], r["ct_tensors"]) for r in records] == \
        [(r["round"], 10.0 * r["round"], 6.0, 12.0, 2.0) for r in records] and len(records) == 2  # LR: weight, bias
    summary = [result[name] for name in ("ct_round_x10", "ct_sampled", "ct_of", "ct_tensors")]
    assert summary == [20.0, 6.0, 12.0, 2.0]  # the last round's facts also reach the summary


PLAN_TAIL = """\
client gradient point (after backward, before clipping and the optimizer step):
  transform_gradients [scaffold]
  transform_gradients [feddyn]
travels besides the model:
  down scaffold/: <parameter>
  up   scaffold/: <parameter> (sum)
  up   fednova/: norm (max), norm_min (min), samples_x_norm (sum), samples_over_norm (sum), samples (sum)
server (in this order):
  weights            n_i * a_ref / ||a_i||_1 (normalized updates; momentum 0.0, mu 0.0) [fednova]
  aggregate          streaming weighted mean of uploaded parameters [core]
  receive            c <- c + (1/N) * sum of the clients' delta c_i (sent: c down, delta c_i up) [scaffold]
  transform          new = old + s * (aggregate - old), s = tau_eff * sum(n_i / ||a_i||_1) / sum(n_i) [fednova]
  transform          h <- h - alpha * |received|/N * (aggregate - old); new = aggregate - h / alpha, alpha = 0.01 [feddyn]
  update             global <- SGD(lr 1.0, momentum 0.0) step on delta = aggregate - global [fedopt]
"""


def test_plan_of_scaffold_fednova_feddyn_fedopt_is_pinned(capsys) -> None:
    text = plan_text(capsys, "scaffold.use", "True", "fednova.use", "True", "feddyn.use", "True", "fedopt.use", "True")
    assert text.startswith("plan: SCAFFOLD+FedNova+FedDyn+FedOpt (plug-ins: scaffold, fednova, feddyn, fedopt)\n")
    assert text[text.index("client gradient point"):] == PLAN_TAIL


# -- 7. Float keys in scientific notation --------------------------------------------------------------------

SCIENTIFIC = {"train.optimizer.lr": ("1e-2", 0.01), "distribute.round_timeout": ("1E9", 1e9),
              "grad.grad_clip": ("-2.5e-3", -0.0025)}


def test_float_keys_accept_scientific_notation_in_yaml(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("train:\n  optimizer:\n    lr: 1e-2\ndistribute:\n  round_timeout: 1E9\n"
                    "grad:\n  grad_clip: -2.5e-3\nfedopt:\n  optimizer:\n    betas: [5e-1, 9.9e-1]\n")
    cfg = load_config(path)
    for key, (_, value) in SCIENTIFIC.items():
        assert cfg.get(key) == value and type(cfg.get(key)) is float, key
    assert cfg.fedopt.optimizer.betas == [0.5, 0.99]


@pytest.mark.parametrize("form", ["KEY VALUE", "KEY=VALUE"])
def test_float_keys_accept_scientific_notation_in_overrides(form: str) -> None:
    words = [w for key, (raw, _) in SCIENTIFIC.items()
             for w in ([key, raw] if form == "KEY VALUE" else [f"{key}={raw}"])]
    cfg = load_config(None, words)
    for key, (_, value) in SCIENTIFIC.items():
        assert cfg.get(key) == value and type(cfg.get(key)) is float, key


@pytest.mark.parametrize("raw, shown", [("1e-2", "0.01"), ("1E9", "1000000000.0"), ("grad.grad_clip=-2.5e-3", "-0.0025")])
def test_the_command_line_accepts_scientific_floats(capsys, raw: str, shown: str) -> None:
    words = [raw] if "=" in raw else ["grad.grad_clip", raw]
    assert main(["config", "show", "grad", *words]) == 0
    assert capsys.readouterr().out.split()[:3] == ["grad.grad_clip", "float", shown]


def test_the_command_line_accepts_a_negative_scientific_float_as_a_separate_word(capsys) -> None:
    assert main(["config", "show", "grad", "grad.grad_clip", "-2.5e-3"]) == 0
    assert capsys.readouterr().out.split()[:3] == ["grad.grad_clip", "float", "-0.0025"]


@pytest.mark.parametrize("where", ["yaml", "overrides", "command line"])
def test_a_malformed_exponent_is_the_usual_type_error(tmp_path: Path, capsys, where: str) -> None:
    message = "config key 'train.optimizer.lr' expects float, got '1e-x' (str)"
    if where == "command line":
        assert main(["config", "show", "train", "train.optimizer.lr", "1e-x"]) == 2
        assert capsys.readouterr().err == f"fedplug: error: {message}\n"
        return
    path = tmp_path / "cfg.yaml"
    path.write_text("train:\n  optimizer:\n    lr: 1e-x\n")
    with pytest.raises(ConfigError) as err:
        load_config(path) if where == "yaml" else load_config(None, ["train.optimizer.lr", "1e-x"])
    assert str(err.value) == message


# -- 8. The fingerprint covers a user plug-in file's source -------------------------------------------------

PLUGIN_FILE = '''\
"""A user plug-in file."""
from fedplug.algorithms.registry import register_algorithm
from fedplug.config import Key, Section, register_section
from fedplug.core.plugin import Plugin

register_section("ct_file", Section("a user plug-in", {"use": Key(False, "switch ct_file on")}))


@register_algorithm
class FilePlugin(Plugin):
    name = "ct_file"

    def transform_aggregate(self, old, aggregate, facts):
        # COMMENT
        return aggregate
'''


@pytest.fixture
def plugin_file(tmp_path: Path):
    """A user plug-in file loaded the way `plugins: [file.py]` loads it; unloaded afterwards."""
    path = (tmp_path / "ct_contract_user_plugin.py").resolve()
    path.write_text(PLUGIN_FILE.replace("COMMENT", "version one"))
    yield path
    ROOT.entries.pop("ct_file", None)
    registry._registered.pop("ct_file", None)
    registry._loaded_files.discard(path)
    sys.modules.pop(path.stem, None)


def test_changing_a_comment_in_a_user_plugin_file_changes_the_fingerprint(plugin_file: Path, small_cfg) -> None:
    cfg = small_cfg(**{"plugins": [str(plugin_file)], "ct_file.use": True})
    plan = build_plan(cfg)
    assert plan.names == ["ct_file"]
    first = fingerprint(cfg, plan)
    assert fingerprint(cfg, build_plan(cfg)) == first  # repeatable
    plugin_file.write_text(PLUGIN_FILE.replace("COMMENT", "version two"))  # same class, one comment changed
    second = fingerprint(cfg, build_plan(cfg))
    assert second != first
    plugin_file.write_text(PLUGIN_FILE.replace("COMMENT", "version one"))
    assert fingerprint(cfg, build_plan(cfg)) == first
