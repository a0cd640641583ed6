"""kill -9 at random instants (inside checkpoint writes included), then ``--resume``: the same weights as an
uninterrupted run, and never a checkpoint whose tensors and JSON disagree. Also: two writers on one folder.

A few instants per command keep ``make test`` fast; ``benchmarks/kill9.py`` runs 20+ per command (results in
``benchmarks/results/kill9.json``). Processes are forked from the test process (torch is imported once) and
killed with SIGKILL, exactly as a kill -9 of the command line would.
"""

from __future__ import annotations

import os
import random
import time

import pytest

from killharness import chain, check_consistent, fork_run, reference, tensors_of, warm_up

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")]

DIGITS = ["--data", "digits", "--batch-size", "64", "--max-steps", "6", "--seed", "3"]
TRAIN = ["train", "--model", "lenet300", *DIGITS, "--epochs", "4"]
EXTRACT = ["extract", "--model", "lenet300", *DIGITS, "--epochs", "3"]
PRUNE = ["prune", "--checkpoint", "source", "--method", "gfs", "--macs", "0.5", "--candidates", "8",
         "--select-batch", "64", "--holdout", "200", "--finetune-epochs", "2", "--max-steps", "4", "--seed", "3",
         "--latency-threads", "1"]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A trained network for ``prune`` to start from."""
    root = tmp_path_factory.mktemp("kill9")
    warm_up(root)
    outcome, code = fork_run([*TRAIN, "--out", "source"], root)
    assert outcome == "done", (outcome, code)
    return root


def _chains(cmd, argv, cwd, kills, seed, **kw):
    want, steps, wall = reference(argv, cwd, "ref")
    assert steps > 10
    return chain(cmd, argv, cwd, "cut", want, steps, wall, kills, random.Random(seed), **kw)


@pytest.mark.parametrize("cmd, argv, seed", [("train", TRAIN, 1), ("extract", EXTRACT, 2), ("prune", PRUNE, 3)])
@pytest.mark.slow
def test_kill9_then_resume_gives_the_same_weights(cmd, argv, seed, source, tmp_path):
    cwd = source if cmd == "prune" else tmp_path
    result = _chains(cmd, argv, cwd, kills=3, seed=seed)
    assert result.final == "done", result
    assert not result.problems, result.problems
    assert result.kills, "no instant hit the run"
    assert result.identical, result


@pytest.mark.slow
def test_kill9_inside_every_write_step_of_a_checkpoint(source, tmp_path):
    """Deterministic instants: each write step of one epoch's checkpoint pair (and of best.*) in turn."""
    want, steps, wall = reference(TRAIN, tmp_path, "ref")
    for at in range(3, 12):  # config.json takes the first two steps; then best.* and checkpoint.* of epoch 1
        out = f"cut{at}"
        outcome, _ = fork_run([*TRAIN, "--out", out], tmp_path, fault=f"kill:{at}")
        assert outcome == "killed"
        assert not check_consistent(tmp_path / out)
        outcome, code = fork_run([*TRAIN, "--out", out, "--resume"], tmp_path, log=tmp_path / f"{out}.log")
        assert outcome == "done", (at, (tmp_path / f"{out}.log").read_text()[-500:])
        assert tensors_of(tmp_path / out) == want, at


def test_kill9_during_overwrite_keeps_the_earlier_run_until_the_new_one_is_complete(source, tmp_path):
    old_argv = [a if a != "3" else "4" for a in TRAIN]  # another seed: another run
    assert fork_run([*old_argv, "--out", "cut"], tmp_path)[0] == "done"
    old = tensors_of(tmp_path / "cut")
    result = _chains("train --overwrite", TRAIN, tmp_path, kills=3, seed=5, old=old)
    assert result.final == "done" and not result.problems and result.identical, result
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".cut")) == []  # nothing left beside


@pytest.mark.slow
def test_second_writer_is_refused_while_the_first_runs(source, tmp_path):
    """Two processes on one --out: the second gets one line, the first finishes and its result survives."""
    pid = os.fork()
    if pid == 0:  # the first writer, slowed down at every write step
        code = 70
        try:
            fd = os.open(os.devnull, os.O_WRONLY)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.chdir(tmp_path)
            os.environ["NETSIFT_FAULT"] = "sleep:0.1"
            from netsift.cli import main

            code = main([*TRAIN, "--out", "run"])
        finally:
            os._exit(code)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "run" / "config.json").is_file():
            assert time.monotonic() < deadline, "the first writer did not start"
            time.sleep(0.05)
        log = tmp_path / "second.log"
        for flags in ([], ["--overwrite"], ["--resume"]):
            outcome, code = fork_run([*TRAIN, "--out", "run", *flags], tmp_path, log=log)
            assert (outcome, code) == ("error", 2)
        lines = log.read_text().splitlines()
        assert len(lines) == 3 and all(line.startswith("netsift: error: ") for line in lines), lines
        assert sum("another netsift process" in line for line in lines) >= 2, lines
    finally:
        _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert (tmp_path / "run" / "result.json").is_file() and not check_consistent(tmp_path / "run")


@pytest.mark.slow
def test_two_overwriters_race_one_wins(source, tmp_path):
    """Two ``--overwrite`` runs started together on an existing run: exactly one replaces it."""
    assert fork_run([*TRAIN, "--out", "run"], tmp_path)[0] == "done"
    pids = []
    for i in range(2):
        pid = os.fork()
        if pid == 0:
            code = 70
            try:
                fd = os.open(tmp_path / f"w{i}.log", os.O_WRONLY | os.O_CREAT, 0o644)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                os.chdir(tmp_path)
                os.environ["NETSIFT_FAULT"] = "sleep:0.05"
                from netsift.cli import main

                code = main([*TRAIN, "--seed", str(10 + i), "--out", "run", "--overwrite"])
            finally:
                os._exit(code)
        pids.append(pid)
    codes = sorted(os.WEXITSTATUS(os.waitpid(p, 0)[1]) for p in pids)
    assert codes == [0, 2], codes
    assert not check_consistent(tmp_path / "run")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".run")) == []

