"""Benchmark result files are records: a rerun of part of a grid, or a run on a fresh clone with no run folders,
never drops the figures it did not measure again."""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_latency_budget_with_no_dense_run_leaves_the_record_alone(tmp_path, capsys):
    bench = _script("latency_budget")
    for suffix in (".json", ".md"):
        shutil.copy(ROOT / "benchmarks" / "results" / f"latency_budget{suffix}", tmp_path / f"lb{suffix}")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(SystemExit, match="nothing measured"):
        bench.main(["--work", str(tmp_path / "no-runs"), "--out", str(tmp_path / "lb")])
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_latency_budget_keeps_the_rows_it_did_not_measure_again():
    bench = _script("latency_budget")
    row = {"network": "resnet20", "target": 0.5, "widths": "uniform", "batch": 64, "error": 0.01}
    previous = {"setup": {"note": "quiet"}, "rows": [row, {**row, "network": "vgg11"}]}
    merged = bench.merged_rows(previous, [{**row, "error": 0.2}], "loaded")
    assert [(r["network"], r["error"], r["note"]) for r in merged] == [("vgg11", 0.01, "quiet"),
                                                                        ("resnet20", 0.2, "loaded")]


def test_selection_cost_refuses_to_mix_budgets_before_any_work(tmp_path, capsys):
    bench = _script("selection_cost")
    out = tmp_path / "sc.json"
    out.write_text(json.dumps({"macs": 0.25, "runs": {"resnet20": {}}, "ratio": {"resnet20": 1.6}}))
    with pytest.raises(SystemExit) as e:
        bench.main(["--macs", "0.5", "--out", str(out), "--work", str(tmp_path / "no-runs")])
    assert e.value.code == 2
    assert "holds timings at 0.25 of the MACs, not 0.5" in capsys.readouterr().err
    assert json.loads(out.read_text())["ratio"] == {"resnet20": 1.6}
