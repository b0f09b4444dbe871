"""Every ```python block in docs/ runs as written (each file's blocks in order, one namespace)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = sorted((Path(__file__).resolve().parents[1] / "docs").glob("*.md"))


@pytest.fixture(autouse=True)
def forget_the_docs_plugins():
    """The docs register plug-ins of their own (server_lr, my_fedprox, my_scaffold) in this process: take them back,
    or every config a later test writes for a subprocess holds sections the subprocess does not know."""
    from fedplug.algorithms import registry
    from fedplug.config import sections  # noqa: F401  (every built-in section, before the snapshot)
    from fedplug.config.schema import ROOT

    before = set(ROOT.entries)
    yield
    for name in set(ROOT.entries) - before:
        del ROOT.entries[name]
        registry._registered.pop(name, None)


@pytest.mark.parametrize("doc", [d for d in DOCS if "```python" in d.read_text()], ids=lambda d: d.name)
def test_python_examples_run(doc: Path) -> None:
    namespace: dict = {}
    for block in re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S):
        exec(compile(block, str(doc), "exec"), namespace)
