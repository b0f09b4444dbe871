"""Mutation testing with mutmut 3, one module at a time against the tests that judge it (`make mutation`).

mutmut reads its settings from `[tool.mutmut]` in the pyproject.toml of the folder it runs in, copies
the code into `mutants/` there and runs pytest from that copy. To give each module its own test files
(and keep a 200-test suite from running per mutant), every module below gets a workspace
`.mutation/<module>/`: links to fedplug/, tests/ and configs/, and a pyproject.toml whose
`[tool.mutmut]` names that one module (`only_mutate`) and its test files
(`pytest_add_cli_args_test_selection`). Inside a run, mutmut narrows further: each mutant runs only
the selected tests that executed the mutated function. Results persist in the workspace, so a rerun
only tests what changed.

    python tools/mutation.py                              # the whole campaign (see docs/testing.md)
    python tools/mutation.py fedplug/run/early_stop.py    # one module (or several)
    python tools/mutation.py --list                       # the modules and their tests

Prints per module: killed, survived, timeouts, no tests, and the score (killed + timeout) / tested;
the survivors are listed with `cd .mutation/<slug> && mutmut results` and shown with `mutmut show NAME`.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".mutation"

# The modules where a wrong line is a wrong result, each with the tests that check its numbers.
COMBINATIONS = "tests/test_combinations.py::test_combination_round_one_equals_the_plugins_steps_by_hand"
VECTORIZED = "tests/test_vectorized.py::test_vectorized_equals_sequential_after_each_round"
CAMPAIGN: dict[str, list[str]] = {
    "fedplug/run/early_stop.py": ["tests/test_early_stop.py", "tests/test_resume_early_stop.py"],
    "fedplug/run/evaluation.py": ["tests/test_pooling_exact.py", "tests/test_round_schedule.py"],
    "fedplug/run/rounds.py": ["tests/test_resume_early_stop.py", "tests/test_round_schedule.py",
                              "tests/test_distributed_min_received.py",
                              "tests/test_checkpoint.py::test_resuming_from_the_last_checkpoint_repeats_the_end_exactly",
                              *(f"tests/test_checkpoint.py::test_{name}" for name in (
                                  "resume_refuses_another_config", "resume_refuses_a_checkpoint_that_lacks_a_parameter",
                                  "resume_puts_back_the_process_wide_generators",
                                  "a_run_stopped_at_round_end_resumes_from_the_checkpoint_before_it")),
                              "tests/test_graph.py::test_resume_brings_back_each_clients_own_batchnorm",
                              # the checkpoint's checks, per-client state and clients.jsonl on resume
                              *(f"tests/test_integrity.py::test_{name}" for name in (
                                  "resume_refuses_a_changed_checkpoint", "resume_refuses_an_edited_config_yaml",
                                  "resume_of_a_finished_run_says_so_and_changes_nothing",
                                  "checkpoint_at_the_end_of_every_checkpointed_run",
                                  "a_diverged_run_stops_naming_the_round_and_keeps_what_was_measured",
                                  "a_global_model_gone_infinite_stops_the_run_naming_its_tensors",
                                  "a_run_closes_its_jsonl_files")),
                              "tests/test_scaffold.py::test_resume_restores_c_and_every_c_i",
                              "tests/test_plots.py::test_resume_cuts_clients_jsonl_back_to_the_checkpoint",
                              "tests/test_attacks.py::test_same_seed_same_attacked_run",  # setup(N) from the data
                              # the round's facts reach the server's plug-ins; the trackers resumed
                              *(f"tests/test_contract_server.py::test_{name}" for name in (
                                  "the_server_runs_weights_aggregate_receive_transform_update",
                                  "a_plugins_report_reads_the_rounds_facts_into_every_record_and_the_summary")),
                              *(f"tests/test_tracking.py::test_{name}" for name in (
                                  "tensorboard_holds_every_metric_and_the_client_histogram",
                                  "tensorboard_of_a_resumed_run_is_one_history_in_the_same_folder",
                                  "mlflow_run_holds_config_metrics_and_artifacts",
                                  "mlflow_resumed_run_is_a_new_run_with_the_whole_history"))],
    "fedplug/server/aggregation.py": ["tests/test_aggregation.py", "tests/test_pooling_exact.py",
                                      "tests/test_round_schedule.py", "tests/test_contract_travel.py"],
    "fedplug/server/round.py": ["tests/test_pooling_exact.py", "tests/test_round_schedule.py",
                                "tests/test_contract_weights.py", "tests/test_contract_travel.py",
                                "tests/test_contract_refusals.py", "tests/test_distributed_min_received.py",
                                "tests/test_robust_aggregators.py::test_extras_are_reduced_over_the_selected_clients"],
    "fedplug/server/sampling.py": ["tests/test_round_schedule.py", "tests/test_sampling_counts.py"],
    "fedplug/core/fused.py": ["tests/test_fused.py"],
    "fedplug/core/module_calls.py": ["tests/test_module_calls.py", "tests/test_fused.py"],
    "fedplug/core/compose.py": ["tests/test_composition.py", "tests/test_plan.py", "tests/test_contract_weights.py",
                                "tests/test_contract_server.py", "tests/test_contract_refusals.py", COMBINATIONS,
                                "tests/test_contract_travel.py::test_extras_travel_and_reduce_as_computed_by_hand_in_both_backends"],
    "fedplug/algorithms/fedprox.py": ["tests/test_distributed_optimization.py", COMBINATIONS, "tests/test_builtin_hooks.py",
                                      VECTORIZED],
    "fedplug/algorithms/fedopt.py": ["tests/test_distributed_optimization.py", COMBINATIONS, "tests/test_plan.py"],
    "fedplug/algorithms/fedbn.py": ["tests/test_distributed_optimization.py", COMBINATIONS],
    "fedplug/algorithms/regularizers.py": ["tests/test_regularizers.py", "tests/test_distributed_optimization.py",
                                           "tests/test_ditto.py"],
    "fedplug/algorithms/ditto.py": ["tests/test_ditto.py", COMBINATIONS, "tests/test_builtin_hooks.py", VECTORIZED,
                                     "tests/test_fscompat.py", "tests/test_plan.py"],
    "fedplug/algorithms/pfedme.py": ["tests/test_pfedme.py", COMBINATIONS, "tests/test_builtin_hooks.py", VECTORIZED,
                                     "tests/test_fscompat.py", "tests/test_plan.py"],
    "fedplug/algorithms/fedem.py": ["tests/test_fedem.py", COMBINATIONS, "tests/test_builtin_hooks.py", VECTORIZED],
    "fedplug/algorithms/scaffold.py": ["tests/test_scaffold.py", "tests/test_plan.py"],
    "fedplug/algorithms/fednova.py": ["tests/test_fednova.py", "tests/test_plan.py"],
    "fedplug/algorithms/feddyn.py": ["tests/test_feddyn.py", "tests/test_plan.py"],
    "fedplug/algorithms/fedem_cohort.py": [VECTORIZED, *(f"tests/test_vectorized.py::test_{name}" for name in (
        "whole_run_metrics_agree", "chunks_change_nothing", "convnet2_with_batchnorm_and_short_batches"))],
    "fedplug/algorithms/ditto_federatedscope.py": ["tests/test_fscompat.py", "tests/test_builtin_hooks.py"],
    "fedplug/algorithms/dp.py": ["tests/test_dp.py", "tests/test_plan.py"],
    "fedplug/algorithms/adaptive_clip.py": ["tests/test_dp.py"],
    "fedplug/algorithms/dp_accountant.py": ["tests/test_dp.py"],
    **{f"fedplug/aggregators/{rule}.py": ["tests/test_robust_aggregators.py", "tests/test_aggregator_helpers.py",
                                          "tests/test_plan.py"]
       for rule in ("base", "krum", "median", "trimmed_mean", "bulyan", "norm_bounding", "centered_clipping")},
}
LINKED = ("fedplug", "tests", "configs")
SURVIVED, NO_TESTS = 0, 33  # mutmut's exit codes of a mutant's test run, as its .meta files keep them


def toml_list(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def workspace(module: str, tests: list[str]) -> Path:
    """The module's mutmut folder: links to the code and tests, and its own [tool.mutmut]."""
    slug = module.removeprefix("fedplug/").removesuffix(".py").replace("/", ".")
    folder = WORK / slug
    folder.mkdir(parents=True, exist_ok=True)
    for name in LINKED:
        link = folder / name
        if not link.exists():
            link.symlink_to(ROOT / name)
    settings = f"""[tool.mutmut]
source_paths = ["fedplug/"]
only_mutate = [{json.dumps(module)}]
pytest_add_cli_args_test_selection = {toml_list(tests)}
pytest_add_cli_args = ["-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning"]
# log lines and error messages: their wording is not a result
do_not_mutate_patterns = ['^\\s*(logger\\.\\w+|raise \\w+)\\(']
also_copy = ["configs/"]
use_git_change_detection = false
timeout_multiplier = 5.0
timeout_constant = 10.0
debug = false

[tool.pytest.ini_options]
testpaths = ["tests"]
"""
    path = folder / "pyproject.toml"
    if not path.exists() or path.read_text() != settings:
        path.write_text(settings)
        shutil.rmtree(folder / "mutants", ignore_errors=True)  # other settings: start over
    return folder


def forget_survivors(folder: Path) -> int:
    """Mark the module's survivors and unreached mutants untested, so that mutmut tests them again: it keeps a
    result until the mutated function changes, so a test added to an already selected file would not count."""
    count = 0
    for meta in (folder / "mutants").rglob("*.meta"):
        data = json.loads(meta.read_text())
        results = data["exit_code_by_key"]
        again = [key for key, code in results.items() if code in (SURVIVED, NO_TESTS)]
        results.update(dict.fromkeys(again))
        meta.write_text(json.dumps(data))
        count += len(again)
    return count


def run_module(module: str, tests: list[str], children: int, seconds: float,
               retest: bool = False) -> dict[str, int] | None:
    """mutmut on one module for at most `seconds` (stopped there; a rerun continues); None: nothing tested."""
    folder = workspace(module, tests)
    if retest:
        print(f"{module}: {forget_survivors(folder)} survivors to test again", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    mutmut = [sys.executable, "-m", "mutmut"]
    started = time.perf_counter()
    proc = subprocess.Popen([*mutmut, "run", "--max-children", str(children)], cwd=folder, env=env,
                            start_new_session=True)
    try:
        code = proc.wait(timeout=max(seconds, 1))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)  # mutmut and the test processes it forked
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        code = None
    if code not in (0, None):
        print(f"mutmut failed on {module} (exit {code}); see the output above", file=sys.stderr)
        return None
    subprocess.run([*mutmut, "export-cicd-stats"], cwd=folder, env=env, capture_output=True)
    path = folder / "mutants" / "mutmut-cicd-stats.json"
    if not path.exists():
        return None
    stats = json.loads(path.read_text())
    stats["seconds"] = round(time.perf_counter() - started)
    stats["complete"] = code == 0
    return stats


def score(stats: dict[str, int]) -> float:
    tested = stats["total"] - stats["skipped"] - stats["no_tests"]
    return 100.0 * (stats["killed"] + stats["timeout"]) / tested if tested else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help="modules to mutate (default: the whole campaign)")
    parser.add_argument("--list", action="store_true", help="print the modules and their tests")
    parser.add_argument("--children", type=int, default=2, help="mutants tested at once (default 2)")
    parser.add_argument("--budget", type=float, default=3300.0,
                        help="stop after this many seconds (default 3300); results are kept, a rerun continues")
    parser.add_argument("--retest-survivors", action="store_true",
                        help="test the survivors again (after adding tests to files a module already selects)")
    args = parser.parse_args()
    if args.list:
        for module, tests in CAMPAIGN.items():
            print(module, " ".join(tests))
        return
    unknown = [m for m in args.modules if m not in CAMPAIGN]
    if unknown:
        raise SystemExit(f"not in the campaign: {unknown}; `python tools/mutation.py --list` shows it")
    total = {"killed": 0, "survived": 0, "timeout": 0, "no_tests": 0, "skipped": 0, "total": 0}
    lines, deadline, unfinished = [], time.monotonic() + args.budget, []
    for module in args.modules or list(CAMPAIGN):
        left = deadline - time.monotonic()
        stats = run_module(module, CAMPAIGN[module], args.children, left, args.retest_survivors) if left > 60 else None
        if stats is None or not stats["complete"]:
            unfinished.append(module)
        if stats is None:
            why = "the budget is spent" if left <= 60 else "mutmut failed or tested nothing (see its output)"
            lines.append(f"{module:<38} not measured: {why}")
            continue
        for key in total:
            total[key] += stats[key]
        lines.append(f"{module:<38} {stats['killed']:>4} killed {stats['survived']:>4} survived "
                     f"{stats['timeout']:>3} timeout {stats['no_tests']:>3} no tests  {score(stats):5.1f}%  "
                     f"({stats['seconds']} s{'' if stats['complete'] else ', stopped by the budget'})")
    print("\n".join(lines))
    if unfinished:
        print(f"unfinished (run `make mutation` again to continue): {' '.join(unfinished)}")
    print(f"{'all':<38} {total['killed']:>4} killed {total['survived']:>4} survived {total['timeout']:>3} timeout "
          f"{total['no_tests']:>3} no tests  {score(total):5.1f}%  (target: 90%)")


if __name__ == "__main__":
    main()
