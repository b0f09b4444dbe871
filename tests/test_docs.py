"""Every ```python block in docs/ runs as written (each file's blocks in order, one namespace)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = sorted((Path(__file__).resolve().parents[1] / "docs").glob("*.md"))


@pytest.mark.parametrize("doc", [d for d in DOCS if "```python" in d.read_text()], ids=lambda d: d.name)
def test_python_examples_run(doc: Path) -> None:
    namespace: dict = {}
    for block in re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S):
        exec(compile(block, str(doc), "exec"), namespace)
