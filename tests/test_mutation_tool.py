"""tools/mutation.py (`make mutation`): its campaign names modules and tests that exist, and survivors can be
marked for another test run. mutmut itself is not run here (docs/testing.md)."""
from __future__ import annotations

import ast
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("mutation_tool", ROOT / "tools" / "mutation.py")
mutation = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mutation)


def test_every_module_and_selected_test_of_the_campaign_exists() -> None:
    """A test renamed or moved breaks its module's campaign (pytest cannot collect the id), but only when the
    campaign next runs, long after the rename: caught here at once."""
    for module, tests in mutation.CAMPAIGN.items():
        assert (ROOT / module).is_file(), module
        for test in tests:
            path, _, name = test.partition("::")
            assert (ROOT / path).is_file(), test
            if name:
                defined = {node.name for node in ast.walk(ast.parse((ROOT / path).read_text()))
                           if isinstance(node, ast.FunctionDef)}
                assert name in defined, test


def test_forget_survivors_marks_only_survivors_and_unreached_mutants_untested(tmp_path: Path) -> None:
    meta = tmp_path / "mutants" / "fedplug" / "x.py.meta"
    meta.parent.mkdir(parents=True)
    meta.write_text(json.dumps({"exit_code_by_key": {"a": 0, "b": 1, "c": 33, "d": None, "e": 36}, "other": 5}))
    assert mutation.forget_survivors(tmp_path) == 2
    assert json.loads(meta.read_text()) == {"exit_code_by_key": {"a": None, "b": 1, "c": None, "d": None, "e": 36},
                                            "other": 5}
