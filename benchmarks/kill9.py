"""kill -9 at 20+ random instants per command, then ``--resume``: do all runs end with the same weights?

For each command (``train``, ``extract``, ``prune`` with GFS over several channel groups, ``prune`` with a
per-layer fine-tune, ``train --overwrite`` over an earlier run), chains of runs are killed with SIGKILL at random
instants (alternately a random write step, inside checkpoint/selection/model/result writes and the overwrite
swap, through the test-only ``NETSIFT_FAULT=kill:N`` hook, and a random time) and resumed, until at least
``--kills`` instants have hit each command. After every kill each checkpoint in the folder must load (its JSON
and tensors agree); every chain must end with bit-for-bit the weights of an uninterrupted run. A few instants
also kill a real ``python -m netsift`` process (``--subprocess``).

    PYTHONPATH=src .venv/bin/python benchmarks/kill9.py --kills 24      # writes benchmarks/results/kill9.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from killharness import chain, check_consistent, fork_run, reference, tensors_of, warm_up  # noqa: E402

DIGITS = ["--data", "digits", "--batch-size", "64", "--max-steps", "6", "--seed", "3"]
COMMANDS = {
    "train": ["train", "--model", "lenet300", *DIGITS, "--epochs", "4"],
    "extract": ["extract", "--model", "lenet300", *DIGITS, "--epochs", "3"],
    "prune": ["prune", "--checkpoint", "source", "--method", "gfs", "--macs", "0.5", "--candidates", "6",
              "--select-batch", "64", "--holdout", "200", "--finetune-epochs", "2", "--max-steps", "4", "--seed", "3",
              "--latency-threads", "1"],
    "prune --layer-finetune": ["prune", "--checkpoint", "source", "--method", "backward", "--macs", "0.6",
                               "--candidates", "4", "--select-batch", "64", "--holdout", "200",
                               "--layer-finetune", "0.05", "--finetune-epochs", "1", "--max-steps", "4",
                               "--seed", "3", "--latency-threads", "1"],
    "train --overwrite": ["train", "--model", "lenet300", *DIGITS, "--epochs", "4"],
}
SOURCE = ["train", "--model", "conv2", "--width", "0.25", "--data", "digits", "--batch-size", "64", "--epochs", "2",
          "--max-steps", "8", "--seed", "1"]


def run_command(name: str, argv: list[str], root: Path, kills: int, seed: int) -> dict:
    cwd = root / name.replace(" ", "_").replace("--", "")
    cwd.mkdir()
    if name.startswith("prune"):
        os.symlink(root / "source", cwd / "source")
    want, steps, wall = reference(argv, cwd, "ref")
    rng = random.Random(seed)
    chains, n = [], 0
    while n < kills:
        out = f"cut{len(chains)}"
        old = None
        if name.endswith("--overwrite"):
            earlier = [a if a != "3" else str(100 + len(chains)) for a in argv]  # another seed: another run
            assert fork_run([*earlier, "--out", out], cwd)[0] == "done"
            old = tensors_of(cwd / out)
        t0 = time.perf_counter()
        c = chain(name, argv, cwd, out, want, steps, wall, min(4, kills - n), rng, old=old)
        d = c.as_dict()
        d["wall_s"] = round(time.perf_counter() - t0, 2)
        chains.append(d)
        n += len(c.kills)
        print(f"  {name}: chain {len(chains)}: {len(c.kills)} kills "
              f"({', '.join(k['mode'] + ' ' + str(k['at']) for k in c.kills)}) -> {c.final}, "
              f"identical={c.identical}, problems={len(c.problems)}", flush=True)
    return {"command": " ".join(argv), "reference_write_steps": steps, "reference_wall_s": round(wall, 2),
            "instants": n, "chains": chains,
            "all_identical": all(c["identical"] and c["final"] == "done" for c in chains),
            "problems": sum(len(c["problems"]) for c in chains)}


def run_subprocess(root: Path, kills: int, seed: int) -> dict:
    """Real ``python -m netsift train`` processes killed with SIGKILL at random times (slow: a fresh interpreter
    each time)."""
    cwd = root / "subprocess"
    cwd.mkdir()
    argv = COMMANDS["train"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    py = [sys.executable, "-m", "netsift"]
    subprocess.run([*py, *argv, "--out", "ref"], cwd=cwd, env=env, check=True, capture_output=True)
    want = tensors_of(cwd / "ref")
    t0 = time.perf_counter()
    subprocess.run([*py, *argv, "--out", "timing"], cwd=cwd, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    rng = random.Random(seed)
    hits, problems = [], []
    flags: list[str] = []
    while len(hits) < kills:
        delay = rng.uniform(0.3 * wall, wall)
        p = subprocess.Popen([*py, *argv, "--out", "cut", *flags], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        try:
            p.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            hits.append(round(delay, 2))
            problems += check_consistent(cwd / "cut")
        flags = ["--resume"] if (cwd / "cut" / "config.json").is_file() else []
        if p.returncode == 0:
            break
    done = subprocess.run([*py, *argv, "--out", "cut", "--resume"], cwd=cwd, env=env, capture_output=True, text=True)
    return {"command": "python -m netsift " + " ".join(argv), "instants": len(hits), "kill_after_s": hits,
            "final_exit": done.returncode, "identical": done.returncode == 0 and tensors_of(cwd / "cut") == want,
            "problems": problems}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=24, help="instants per command (default: 24)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--subprocess", type=int, default=4, help="instants killing a real python process")
    parser.add_argument("--only", nargs="*", choices=list(COMMANDS), help="commands to run (default: all)")
    parser.add_argument("--out", default=str(HERE / "results" / "kill9.json"))
    args = parser.parse_args()
    t0 = time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory(prefix="kill9-") as tmp:
        root = Path(tmp)
        warm_up(root)
        assert fork_run([*SOURCE, "--out", "source"], root)[0] == "done"
        for i, name in enumerate(args.only or COMMANDS):
            print(f"{name} ...", flush=True)
            results[name] = run_command(name, COMMANDS[name], root, args.kills, args.seed * 1000 + i)
        if args.subprocess:
            print("python -m netsift train (real processes) ...", flush=True)
            results["subprocess train"] = run_subprocess(root, args.subprocess, args.seed)
    summary = {name: {"instants": r["instants"],
                      "identical": r.get("all_identical", r.get("identical")), "problems": r["problems"]
                      if isinstance(r["problems"], int) else len(r["problems"])} for name, r in results.items()}
    report = {"summary": summary, "kills_per_command": args.kills, "seed": args.seed,
              "wall_s": round(time.perf_counter() - t0, 1), "machine": platform.machine(),
              "python": platform.python_version(), "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out} in {report['wall_s']} s")
    ok = all(s["identical"] and not s["problems"] for s in summary.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
