"""kill -9 harness: run a ``netsift`` command in a forked process, SIGKILL it at chosen instants, resume it.

Used by ``tests/test_kill9.py`` (a few instants per command, in ``make test``) and ``benchmarks/kill9.py`` (20+
random instants per command, results in ``benchmarks/results/kill9.json``).

An instant is either a write step (the process kills itself at its N-th step of a multi-step write, through the
test-only ``NETSIFT_FAULT=kill:N`` hook: inside checkpoint, model, selection-state and result writes and inside
the swap of an ``--overwrite``) or a time (the parent sends SIGKILL after a random delay: anywhere, mid-epoch
included). After every kill the run folder must hold only complete checkpoints (each ``NAME.json`` loads with
its tensors), and the chain of ``--resume`` runs must end with exactly the weights of an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

STEMS = ("checkpoint", "best", "model", "subnet", "selection")


def fork_run(argv: list[str], cwd: Path, fault: str | None = None, kill_after: float | None = None,
             log: Path | None = None, steps_file: Path | None = None) -> tuple[str, int]:
    """Run ``netsift argv`` in a forked child; returns ("done"|"killed"|"error", exit code or signal)."""
    pid = os.fork()
    if pid == 0:  # the child: run the command line in-process, never return to the caller's code
        code = 70
        try:
            os.chdir(cwd)
            fd = os.open(log or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115  (the test runner may have replaced them)
            sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
            torch.set_num_threads(1)
            from netsift import checkpoint
            from netsift.cli import main

            if fault:
                os.environ[checkpoint.FAULT_ENV] = fault
            else:
                os.environ.pop(checkpoint.FAULT_ENV, None)
            checkpoint.reset_fault_steps()
            code = main(list(argv))
            if steps_file is not None:
                steps_file.write_text(str(checkpoint.fault_steps()))
        except BaseException:  # noqa: BLE001  (report anything as a failed run)
            import traceback

            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    if kill_after is not None:
        deadline = time.monotonic() + kill_after
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return _outcome(status)
            time.sleep(0.005)
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    return _outcome(status)


def warm_up(cwd: Path) -> None:
    """One small run in this process, so that forked children start with every module imported (fast)."""
    import contextlib
    import io

    from netsift.cli import main

    torch.set_num_threads(1)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = main(["train", "--model", "lenet300", "--data", "digits", "--epochs", "1", "--max-steps", "2",
                     "--batch-size", "64", "--out", str(cwd / "warm-up"), "--overwrite"])
        code2 = main(["prune", "--checkpoint", str(cwd / "warm-up"), "--method", "gfs", "--macs", "0.5",
                      "--candidates", "2", "--finetune-epochs", "1", "--max-steps", "1", "--latency-threads", "1",
                      "--out", str(cwd / "warm-up-prune"), "--overwrite"])
    if code or code2:
        raise RuntimeError("the warm-up run failed")


def _outcome(status: int) -> tuple[str, int]:
    if os.WIFSIGNALED(status):
        return ("killed" if os.WTERMSIG(status) == signal.SIGKILL else "signal"), os.WTERMSIG(status)
    code = os.WEXITSTATUS(status)
    return ("done" if code == 0 else "error"), code


def tensors_of(run: Path) -> dict[str, str]:
    """SHA-256 of every tensor of the run's final network (and of its mask file, for extract)."""
    from netsift.checkpoint import load_checkpoint

    out = {}
    for stem in ("model", "subnet"):
        if (run / f"{stem}.json").is_file():
            tensors, _ = load_checkpoint(run / stem)
            for k, t in tensors.items():
                out[f"{stem}:{k}"] = hashlib.sha256(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                                                    ).hexdigest()
    return out


def check_consistent(run: Path) -> list[str]:
    """Problems with the checkpoints in ``run`` (empty when every ``NAME.json`` loads with matching tensors)."""
    from netsift.checkpoint import load_checkpoint
    from netsift.errors import NetsiftError

    problems = []
    for folder in (run, run.parent / f".{run.name}.netsift-new"):
        for stem in STEMS:
            if (folder / f"{stem}.json").is_file():
                try:
                    load_checkpoint(folder / stem)
                except NetsiftError as e:
                    problems.append(f"{folder.name}/{stem}: {e}")
    return problems


def phase(run: Path) -> str:
    """What an interrupted run left behind: selection groups done, checkpoint epoch, final files."""
    import json

    where = run.parent / f".{run.name}.netsift-new"
    folder = where if (where / ".netsift-replacing").is_file() else run
    parts = []
    try:
        if (folder / "selection.json").is_file():
            parts.append(f"groups {len(json.loads((folder / 'selection.json').read_text())['groups'])}")
        if (folder / "checkpoint.json").is_file():
            parts.append(f"epoch {json.loads((folder / 'checkpoint.json').read_text())['epoch']}")
    except (OSError, ValueError, KeyError):
        parts.append("unreadable")
    parts += [name for name in ("model.json", "result.json") if (folder / name).is_file()]
    if folder is where:
        parts.append("(replacement)")
    return ", ".join(parts) or ("config only" if (folder / "config.json").is_file() else "nothing")


@dataclass
class Chain:
    """One run interrupted again and again, then resumed to the end."""

    command: str
    kills: list[dict] = field(default_factory=list)  # {"mode": "step"|"time", "at": N or seconds, "outcome": ...}
    final: str = ""
    identical: bool = False
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def reference(argv: list[str], cwd: Path, out: str) -> tuple[dict[str, str], int, float]:
    """An uninterrupted run: (tensor hashes, write steps, wall seconds)."""
    steps_file = cwd / f".{out}.steps"
    t0 = time.perf_counter()
    outcome, code = fork_run([*argv, "--out", out], cwd, fault="count", steps_file=steps_file,
                             log=cwd / f"{out}.log")
    wall = time.perf_counter() - t0
    if outcome != "done":
        raise RuntimeError(f"reference run failed ({outcome} {code}): {(cwd / f'{out}.log').read_text()[-2000:]}")
    return tensors_of(cwd / out), int(steps_file.read_text()), wall


def chain(command: str, argv: list[str], cwd: Path, out: str, want: dict[str, str], steps: int, wall: float,
          kills: int, rng: random.Random, old: dict[str, str] | None = None, max_attempts: int = 60) -> Chain:
    """Kill ``netsift argv --out out`` ``kills`` times at random instants, resuming after each, then finish it.

    The instants alternate between write steps (uniform over the steps an uninterrupted run has left) and times
    (uniform over 80% of the wall time it has left). With ``old`` (the tensor hashes of an earlier run in ``out``) the command
    replaces that run with ``--overwrite``: after every kill the folder must hold the earlier run or the new one.
    """
    result = Chain(command)
    log = cwd / f"{out}.log"
    folder, staged = cwd / out, cwd / f".{out}.netsift-new"
    left_steps, left_wall = steps, wall
    for _ in range(max_attempts):
        if (staged / ".netsift-replacing").is_file():
            flags = ["--resume"]  # an unfinished replacement
        elif old is not None:
            flags = ["--overwrite"] if tensors_of(folder) == old else ["--resume"]
        else:
            flags = ["--resume"] if (folder / "config.json").is_file() else []
        fault, kill_after, mode, at = None, None, None, None
        if len(result.kills) < kills:
            if len(result.kills) % 2 == 0:
                mode, at = "step", rng.randint(1, max(1, left_steps - 1))
                fault = f"kill:{at}"
            else:
                mode, at = "time", round(rng.uniform(0.0, max(0.05, 0.8 * left_wall)), 3)
                kill_after = at
        outcome, code = fork_run([*argv, "--out", out, *flags], cwd, fault=fault, kill_after=kill_after, log=log)
        result.problems += check_consistent(folder)
        if old is not None and outcome == "killed" and tensors_of(folder) not in (old, want):
            result.problems.append(f"after a kill at {mode} {at}, {out} holds neither the earlier run nor the new one")
        if outcome == "killed":
            result.kills.append({"mode": mode, "at": at, "flags": flags, "left": phase(folder)})
            if mode == "step":
                left_steps = max(2, left_steps - at)
            else:
                left_wall = max(0.05, left_wall - at)
            continue
        if outcome == "done":
            result.final = "done"
        else:
            lines = log.read_text().strip().splitlines() if log.is_file() else []
            result.final = f"{outcome} {code}: {lines[-1] if lines else ''}"
        break
    if result.final == "done":
        result.identical = tensors_of(folder) == want
    return result
