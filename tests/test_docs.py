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
@pytest.mark.slow
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


def _fields(text: str, start: str, end: str) -> set[str]:
    import re

    part = text[text.index(start):]
    part = part[:part.index(end)]
    return set(re.findall(r"`([a-z][a-z0-9_]*)`", part))


def test_documented_result_fields_exist():
    """Every result.json field the docs list by name is a field of the schema (docs/results.md)."""
    from netsift.results import RESULT_KEYS

    prune = _fields((ROOT / "docs" / "prune.md").read_text(), "`--out DIR` gets `result.json`", "the fine-tune's")
    masks = _fields((ROOT / "docs" / "masks.md").read_text(), "`result.json` (DESIGN §4 fields plus", "extracted network")
    readme = _fields((ROOT / "README.md").read_text(), "writes `DIR/result.json` (", "...)")
    assert prune and masks and readme
    for where, names in (("docs/prune.md", prune), ("docs/masks.md", masks), ("README.md", readme)):
        unknown = sorted(names - set(RESULT_KEYS))
        assert not unknown, f"{where} documents result.json fields that do not exist: {unknown}"
