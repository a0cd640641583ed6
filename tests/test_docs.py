"""The README's and docs/api.md's Python examples run as written, and docs/results.md matches the schema."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


@pytest.mark.parametrize("doc", ["README.md", "docs/api.md"])
def test_examples_run(doc, tmp_path, monkeypatch, capsys):
    blocks = python_blocks(ROOT / doc)
    assert blocks, f"{doc} has no python examples"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{doc}[python block {i}]", "exec"), namespace)  # noqa: S102
    assert capsys.readouterr().out.strip()  # the examples print their results


def test_own_model_examples_are_short():
    """The README promises: prune or learn a mask on your own model in a few lines of netsift code."""
    readme = (ROOT / "README.md").read_text()
    for block in python_blocks(ROOT / "README.md"):
        lines = [line for line in block.splitlines() if "netsift." in line]
        assert len(lines) <= 6, lines
    assert "**Prune your own model**" in readme and "**Masks on your own model**" in readme


def test_results_doc_matches_the_schema():
    from netsift.results import schema_markdown

    assert schema_markdown() in (ROOT / "docs" / "results.md").read_text()
