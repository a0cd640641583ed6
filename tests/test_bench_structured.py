"""The structured benchmark's bookkeeping: fine-tune folders by learning rate, the rate chosen on validation."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_structured", ROOT / "benchmarks" / "structured.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(method, lr, seed, val, test, epochs=5):
    return {"network": "n", "method": method, "widths": "uniform", "macs_target": 0.25, "seed": seed,
            "finetune_epochs": epochs, "finetune_lr": lr, "test_acc": test, "val_acc": val, "macs_fraction": 0.25,
            "selection_s": 1.0, "speedup_b1": None, "speedup_b64": None}


def test_fine_tune_folders_name_their_learning_rate(bench, tmp_path):
    assert bench.ft_folder(tmp_path, 0) == tmp_path
    assert bench.ft_folder(tmp_path, 5) == tmp_path / "ft5"  # the published rate keeps the old name
    assert bench.ft_folder(tmp_path, 5, 0.1) == tmp_path / "ft5-lr0.1"
    assert bench._ft_of("ft5") == (5, bench.DEFAULT_LR)
    assert bench._ft_of("ft1-lr0.003") == (1, 0.003)


def test_the_learning_rate_is_chosen_on_validation_never_on_test(bench):
    # lr 0.1 has the better test accuracy, lr 0.01 the better validation accuracy: 0.01 must win
    rows = [_row("l1", lr, s, val, test) for s in (0, 1)
            for lr, val, test in ((bench.DEFAULT_LR, 0.90, 0.80), (0.1, 0.85, 0.95))]
    rows += [_row("l1", None, s, None, 0.5, epochs=0) for s in (0, 1)]
    chosen = bench.chosen_lr(bench.summarize(rows))
    assert len(chosen) == 1
    assert chosen[0]["finetune_lr"] == bench.DEFAULT_LR and chosen[0]["test_acc"] == pytest.approx(0.80)
    assert chosen[0]["lrs"] == {bench.DEFAULT_LR: pytest.approx(0.90), 0.1: pytest.approx(0.85)}
    # the published-recipe table keeps only the published rate (and the unfine-tuned row)
    assert {s["finetune_lr"] for s in bench.published_lr(bench.summarize(rows))} == {None, bench.DEFAULT_LR}
    assert "l1 | uniform | 0.8000 ± 0.0000 (2) (0.01)" in bench.markdown_lr(bench.summarize(rows))


def test_a_rate_with_fewer_seeds_is_not_compared(bench):
    rows = [_row("gfs", bench.DEFAULT_LR, s, 0.80, 0.80) for s in (0, 1, 2)]
    rows += [_row("gfs", 0.1, 0, 0.99, 0.99)]  # one lucky seed must not win against three
    assert bench.chosen_lr(bench.summarize(rows)) == []  # and one full rate is no choice
    rows += [_row("gfs", 0.03, s, 0.79, 0.90) for s in (0, 1, 2)]
    chosen = bench.chosen_lr(bench.summarize(rows))
    assert [c["finetune_lr"] for c in chosen] == [bench.DEFAULT_LR] and set(chosen[0]["lrs"]) == {0.01, 0.03}


def test_a_cell_reports_every_finished_fine_tune(bench, tmp_path):
    args = bench.parse_args(["--work", str(tmp_path), "--finetune-epochs", "0", "5", "--finetune-lrs", "0.01", "0.1"])
    folder = bench.cell_folder(args, "resnet20", "l1", "uniform", 0.25, 0)
    sel = {"test_acc": 0.3, "val_acc": 0.3, "test_acc_selected": 0.3, "macs": 10, "macs_fraction": 0.25,
           "params": 5, "selection_s": 0.1, "data_seed": 0}
    for sub, acc in (("", None), ("ft5", 0.8), ("ft5-lr0.1", 0.85), ("ft1-lr0.3", 0.7)):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        (folder / sub / "result.json").write_text(json.dumps(sel | ({"test_acc": acc, "val_acc": acc, "wall_s": 1}
                                                                    if acc else {})))
    assert bench.cell_done(args, folder, "l1")
    rows = bench.run_cell("resnet20", "l1", "uniform", 0.25, 0, args, None)
    assert [(r["finetune_epochs"], r["finetune_lr"], r["test_acc"]) for r in rows] == [
        (0, None, 0.3), (1, 0.3, 0.7), (5, bench.DEFAULT_LR, 0.8), (5, 0.1, 0.85)]
    (folder / "ft5-lr0.1" / "result.json").unlink()
    assert not bench.cell_done(args, folder, "l1")


@pytest.mark.parametrize("lr", ["0", "-0.1"])
def test_a_learning_rate_out_of_range_stops_before_any_work(bench, tmp_path, capsys, lr):
    with pytest.raises(SystemExit) as e:
        bench.main(["--finetune-lrs", "0.03", lr, "--work", str(tmp_path / "w"), "--results", str(tmp_path / "r")])
    assert e.value.code == 2
    assert "--finetune-lrs must be in (0, 10]" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not any(tmp_path.iterdir())  # no dense run, no result files


def test_a_report_without_run_folders_keeps_the_recorded_cells(bench, tmp_path):
    """A fresh clone has no runs/: rewriting the tables must keep every recorded cell, not write empty ones."""
    recorded = json.loads((ROOT / "benchmarks" / "results" / "structured_widths.json").read_text())
    kept = [c for c in recorded["cells"] if c["network"] == "resnet20" and c["seed"] == 0][:4]
    gone = dict(kept[0], method="no-such-method")  # outside the grid: dropped
    results = tmp_path / "r"
    results.mkdir()
    (results / "structured_widths.json").write_text(json.dumps(
        {"dense": {"resnet20": recorded["dense"]["resnet20"]}, "cells": [gone] + kept[::-1]}))
    assert bench.main(["--report", "--work", str(tmp_path / "w"), "--results", str(results)]) == 0
    out = json.loads((results / "structured_widths.json").read_text())
    assert out["cells"] == kept  # in the grid's order, as the recorded file had them
    assert out["dense"]["resnet20"] == recorded["dense"]["resnet20"]
    assert len((results / "structured_widths.csv").read_text().splitlines()) == 1 + len(kept)
    assert not (tmp_path / "w").exists()  # nothing trained or pruned by a report


def test_a_run_folder_replaces_its_recorded_row(bench):
    grid = [("n", "l1", "uniform", 0.25, 0)]
    old, new = _row("l1", 0.01, 0, 0.5, 0.5), _row("l1", 0.01, 0, 0.9, 0.9)
    other = _row("l1", 0.1, 0, 0.6, 0.6)
    assert bench.recorded_rows([old, other], [new], grid) == [other]
    assert bench.recorded_rows([old], [], []) == []


def test_a_retrained_dense_network_that_differs_stops_the_grid(bench, tmp_path):
    (tmp_path / "result.json").write_text(json.dumps({"test_acc": 0.8, "macs": 10, "params": 5}))
    bench.same_dense("n", tmp_path, {"n": {"test_acc": 0.8, "macs": 10, "params": 5}})  # the same: goes on
    bench.same_dense("n", tmp_path, {})  # nothing recorded: goes on
    with pytest.raises(SystemExit, match="is not the one the recorded cells pruned"):
        bench.same_dense("n", tmp_path, {"n": {"test_acc": 0.81, "macs": 10, "params": 5}})


def test_a_corrupt_record_is_one_line_and_left_alone(bench, tmp_path):
    (tmp_path / "structured_widths.json").write_text('{"cells": [')
    with pytest.raises(SystemExit, match="is not valid JSON"):
        bench.main(["--report", "--work", str(tmp_path / "w"), "--results", str(tmp_path)])
    assert (tmp_path / "structured_widths.json").read_text() == '{"cells": ['
    assert sorted(p.name for p in tmp_path.iterdir()) == ["structured_widths.json"]


def test_the_readme_table_marks_cells_with_fewer_seeds(bench):
    def row(network, method, seed, test, epochs):
        return _row(method, None if epochs == 0 else bench.DEFAULT_LR, seed, 0.9, test, epochs) | {
            "network": network, "macs_target": 0.5}

    rows = [row("resnet20", "gfs", s, t, e) for s in (0, 1, 2) for e, t in ((0, 0.70 + s / 100), (5, 0.85))]
    rows += [row("mobilenetv2", "gfs", 0, 0.75, e) for e in (0, 5)]  # one seed so far
    rows += [row("mobilenetv2", "l1", s, 0.5, 0) for s in (0, 1)]  # no 5-epoch fine-tune yet
    table = bench.markdown_budget(bench.summarize(rows), 0.5, seeds=3)
    lines = table.splitlines()
    assert lines[2] == "| method | widths | ResNet-20 0 ep | 5 ep | MobileNetV2 0 ep | 5 ep |"
    assert lines[4] == "| gfs | uniform | 0.710 ± 0.010 | 0.850 ± 0.000 | 0.750 (1) | 0.750 (1) |"
    assert lines[5] == "| l1 | uniform | – | – | 0.500 ± 0.000 (2) | – |"
    assert bench.markdown_budget(bench.summarize(rows), 0.25, seeds=3) == ""  # no cell at that budget


@pytest.mark.parametrize("shards", [2, 3])
def test_a_from_scratch_cell_runs_in_the_shard_of_its_gfs_cell_right_after_it(bench, shards):
    base = ["--networks", "resnet20", "vgg11", "--seeds", "0", "1", "--fractions", "0.5", "0.25"]
    whole = bench.cells(bench.parse_args(base))
    parts = [bench.cells(bench.parse_args(base + ["--shard", f"{i}/{shards}"])) for i in range(shards)]
    assert sorted(c for part in parts for c in part) == sorted(whole)  # every cell once
    scratch = [c for c in whole if c[1] == "gfs-scratch"]
    assert len(scratch) == 2 * 2 * 2
    for part in parts:
        for i, c in enumerate(part):
            if c[1] == "gfs-scratch":
                assert i > 0 and part[i - 1] == (c[0], "gfs", "learned", *c[3:])


def test_a_from_scratch_cell_whose_gfs_cell_is_unfinished_waits_instead_of_failing(bench, tmp_path, monkeypatch,
                                                                                  capsys):
    cell = ("resnet20", "gfs-scratch", "learned", 0.5, 1)
    monkeypatch.setattr(bench, "cells", lambda args: [cell] if args.shard == "1/2" else [])  # this worker's cells
    folder = bench.cell_folder(bench.parse_args(["--work", str(tmp_path / "work")]), "resnet20", "gfs", "learned",
                               0.5, 1)
    folder.mkdir(parents=True)  # a selection still running elsewhere: no result.json yet
    assert bench.main(["--networks", "resnet20", "--work", str(tmp_path / "work"), "--results",
                       str(tmp_path / "results"), "--shard", "1/2"]) == 0
    assert "gfs-scratch learned 0.5 seed 1: not run, its GFS cell has not finished" in capsys.readouterr().out
    assert not bench.cell_folder(bench.parse_args(["--work", str(tmp_path / "work")]), *cell).exists()


@pytest.mark.parametrize("shard", ["1", "2/2", "a/2", "-1/2"])
def test_a_malformed_shard_stops_before_any_work(bench, shard, capsys):
    with pytest.raises(SystemExit) as e:
        bench.parse_args([f"--shard={shard}"])
    assert e.value.code == 2 and "--shard must be I/N" in capsys.readouterr().err
