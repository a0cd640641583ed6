"""The masks map's bookkeeping: which cells run (budget checks right after their width's block) and the report
on the recorded rows."""

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("bench_masks_map", ROOT / "benchmarks" / "masks_map.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_budget_checks_run_after_their_width_and_at_twice_the_budget(bench):
    todo = bench.cells(bench.parse_args([]))
    checks = [(i, c) for i, c in enumerate(todo) if c["epochs"] != bench.EPOCHS[c["arch"]]]
    wanted = {(a, bench.CONV_WIDTH if w is None else w, d, m) for a, w, d, methods in bench.BUDGET_CHECKS
              for m in methods}
    assert {(c["arch"], c["width"], c["density"], c["method"]) for _, c in checks} == wanted
    assert len(checks) == len(wanted)
    for i, c in checks:
        assert c["seed"] == 0 and c["epochs"] == 2 * bench.EPOCHS[c["arch"]]
        block = [x for x in todo if x["arch"] == c["arch"] and x["width"] == c["width"]
                 and x["epochs"] == bench.EPOCHS[x["arch"]]]
        later = todo[i + 1:]
        # after every map cell of its width, before any cell of another width's block
        assert todo.index(block[-1]) < i
        assert all((x["arch"], x["width"]) != (c["arch"], c["width"]) for x in later
                   if x["epochs"] == bench.EPOCHS[x["arch"]])
    map_cells = [c for c in todo if c["epochs"] == bench.EPOCHS[c["arch"]]]
    assert len(map_cells) == 2 * 3 * (3 * 5 + 3)  # methods x seeds x (lenet300 widths x densities + conv2)
    only = bench.cells(bench.parse_args(["--budget-check"]))
    assert [bench.key(c) for c in only] == [bench.key(c) for _, c in checks]


def test_the_report_pairs_each_budget_check_with_its_map_cell(bench, tmp_path):
    shutil.copy(ROOT / "benchmarks" / "results" / "masks_map.jsonl", tmp_path / "masks_map.jsonl")
    assert bench.main(["--report", "--out", str(tmp_path / "masks_map")]) == 0
    text = (tmp_path / "masks_map.md").read_text()
    assert "| lenet300 ×1 gumbel d 0.5 | 30 → 60 |" in text and "gumbel undecided at end" in text
    assert "Moonshot" in text
