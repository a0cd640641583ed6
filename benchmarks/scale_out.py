"""Scale-out: GFS selection and dense training with 1 and 2 processes (1 thread each), same network and seed.

For each process count the script starts ``torchrun --standalone --nproc_per_node N`` on itself (worker mode)
with ``OMP_NUM_THREADS=1``:

1. **train**: ``netsift.train`` of the network for ``--epochs`` on the data; the training throughput
   (``train_images_per_s``: images of all processes per second of training, validation excluded) and the
   optimizer steps per second. Each process takes a minibatch of ``--batch-size`` per step (data parallel).
   The 1-process run is also the source network of step 2.
2. **gfs**: ``netsift.prune(method="gfs", macs=...)`` of that trained network, no fine-tuning; the selection's
   wall time (``selection_s``, the greedy loop only) and the kept channels (``selection.json``), which must be
   identical for 1 and 2 processes (each greedy step's candidates are split across the processes).

Runs alternate 1, 2, 1, 2, ... (``--repeats``) so that a change of load hits both; the medians, the ratios and
the machine's load average around every run go to ``benchmarks/results/scale_out.json``, one entry per
configuration (``<model>_x<width>``).

What bounds the GFS speed-up: a step's K candidates split into shares of ceil(K/N), and the step's *prefix*
(the network up to the pruned group's first consumers, on the step's minibatch) is computed by one process per
step and sent to the others (``NETSIFT_SHARE_PREFIX``, docs/distributed.md). What every process still does
itself: the product over the channels all candidates share at the first consumers, and the wait for the
slowest process at every step's all-gather (484 steps here). ``benchmarks/cpu_ceiling.py`` gives the ratio
two independent compute-only processes reach on the same machine.

    PYTHONPATH=src .venv/bin/python benchmarks/scale_out.py                            # vgg11 x0.25, Fashion-MNIST
    PYTHONPATH=src .venv/bin/python benchmarks/scale_out.py --model resnet20 --width 0.5
    PYTHONPATH=src .venv/bin/python benchmarks/scale_out.py --quick                    # smoke test (digits, lenet300)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def worker(args: argparse.Namespace) -> None:
    """One process of a job started by torchrun: run the step, rank 0 writes the figures."""
    import torch

    import netsift
    from netsift import distributed
    from netsift.config import DataConfig

    torch.set_num_threads(1)
    data = DataConfig(args.data, train_subset=args.train_subset)
    if args.worker == "train":
        r = netsift.train(args.model, data, seed=args.seed, width=args.width, epochs=args.epochs,
                          batch_size=args.batch_size, lr=0.05, schedule="cosine", out=args.run, overwrite=True,
                          latency_threads=None)
        steps = json.loads((Path(args.run) / "checkpoint.json").read_text())["step"] if distributed.is_main() else 0
        epoch_s = [row["epoch_s"] for row in _metrics(args.run)] if distributed.is_main() else []
        out = {"train_images_per_s": r.train_images_per_s, "steps": steps, "train_s": sum(epoch_s),
               "steps_per_s": steps / sum(epoch_s) if epoch_s else None, "test_acc": r.test_acc,
               "test_samples": r.test_samples, "processes": r.processes}
    else:
        r = netsift.prune(args.source, None, method="gfs", macs=args.macs, seed=args.seed, finetune_epochs=0,
                          candidates=args.candidates, latency_threads=None, out=args.run, overwrite=True,
                          progress=False)
        state = json.loads((Path(args.run) / "selection.json").read_text()) if distributed.is_main() else {}
        kept = {g["group"]: g["kept"] for g in state.get("groups", [])}
        out = {"selection_s": r.selection_s, "steps": sum(g.get("steps") or 0 for g in r.groups or []),
               "kept": kept, "channels": sum(map(len, kept.values())), "macs_fraction": r.macs_fraction,
               "test_acc_selected": r.test_acc_selected, "test_samples": r.test_samples, "processes": r.processes}
    if distributed.is_main():
        Path(args.json).write_text(json.dumps(out))


def _metrics(run: str) -> list[dict]:
    return [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]


def _load() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def launch(step: str, n: int, args: argparse.Namespace, run: Path, source: Path | None = None,
           share: str = "auto") -> dict:
    """Run one step with ``n`` processes (``share``: ``NETSIFT_SHARE_PREFIX``); returns rank 0's figures plus the
    wall time and the load."""
    out = run.with_suffix(".json")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
           str(Path(__file__).resolve()), "--worker", step, "--json", str(out), "--run-dir", str(run),
           "--model", args.model, "--width", str(args.width), "--data", args.data, "--seed", str(args.seed),
           "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--macs", str(args.macs),
           "--candidates", str(args.candidates)]
    if args.train_subset:
        cmd += ["--train-subset", str(args.train_subset)]
    if source is not None:
        cmd += ["--source", str(source)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1",
           "NETSIFT_SHARE_PREFIX": share,
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    load_before, t0 = _load(), time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{step} with {n} processes failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    row = json.loads(out.read_text())
    row.update({"step": step, "processes": n, "share_prefix": share, "job_wall_s": round(wall, 2),
                "load_before": load_before, "load_after": _load()})
    print(f"  {step} x{n}{'' if share == 'auto' else ' (prefix ' + share + ')'}: " + ", ".join(f"{k}={row[k]:.4g}" if isinstance(row[k], float) else f"{k}={row[k]}"
                                         for k in ("selection_s", "train_images_per_s", "steps", "job_wall_s")
                                         if k in row), flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vgg11")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--train-subset", type=int, default=10000)
    p.add_argument("--epochs", type=int, default=1, help="training epochs (train step and GFS source)")
    p.add_argument("--batch-size", type=int, default=128, help="minibatch per process and step")
    p.add_argument("--macs", type=float, default=0.5, help="GFS: keep this fraction of the MACs")
    p.add_argument("--candidates", type=int, default=50, help="GFS: candidates per greedy step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=1, help="runs per process count (interleaved)")
    p.add_argument("--processes", type=int, default=2, help="the process count compared with 1")
    p.add_argument("--quick", action="store_true", help="smoke test: lenet300 x0.5 on digits, 1 repeat")
    p.add_argument("--unshared", action="store_true",
                   help="also time GFS with N processes that do not share the steps' prefixes (the previous split)")
    p.add_argument("--note", default="", help="free text stored with the results (the machine's state)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scale_out.json"))
    p.add_argument("--worker", choices=("train", "gfs"), help=argparse.SUPPRESS)
    p.add_argument("--json", help=argparse.SUPPRESS)
    p.add_argument("--run-dir", dest="run", help=argparse.SUPPRESS)
    p.add_argument("--source", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    if args.quick:
        args.model, args.width, args.data, args.train_subset, args.repeats = "lenet300", 0.5, "digits", None, 1
    counts = (1, args.processes)
    tmp = Path(tempfile.mkdtemp(prefix="scale_out-"))
    runs: list[dict] = []
    try:
        print(f"train {args.model} x{args.width} on {args.data}, {args.epochs} epoch(s), 1 thread per process")
        for rep in range(args.repeats):
            for n in counts:
                runs.append({"repeat": rep, **launch("train", n, args, tmp / f"train{n}-{rep}")})
        source = tmp / "train1-0"
        print(f"gfs to {args.macs} of the MACs, {args.candidates} candidates per step")
        for rep in range(args.repeats):
            for n in counts:
                runs.append({"repeat": rep, **launch("gfs", n, args, tmp / f"gfs{n}-{rep}", source)})
            if args.unshared:  # the same split without sharing the prefixes (every process computes them all)
                runs.append({"repeat": rep, **launch("gfs", args.processes, args, tmp / f"gfs-never-{rep}", source,
                                                     share="never")})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def med(step: str, n: int, key: str, share: str = "auto") -> float:
        return statistics.median(r[key] for r in runs if r["step"] == step and r["processes"] == n
                                 and r["share_prefix"] == share)

    gfs = [r for r in runs if r["step"] == "gfs"]
    identical = all(r["kept"] == gfs[0]["kept"] for r in gfs)
    summary = {
        "gfs_selection_s": {str(n): med("gfs", n, "selection_s") for n in counts},
        "gfs_speedup": med("gfs", 1, "selection_s") / med("gfs", args.processes, "selection_s"),
        # each repeat's 1-process run against the N-process run that followed it (a drift of the machine's speed
        # between repeats cancels out)
        "gfs_speedup_per_repeat": [
            next(r["selection_s"] for r in gfs if r["repeat"] == rep and r["processes"] == 1)
            / next(r["selection_s"] for r in gfs if r["repeat"] == rep and r["processes"] == args.processes
                   and r["share_prefix"] == "auto") for rep in range(args.repeats)],
        **({"gfs_selection_s_unshared_prefix": med("gfs", args.processes, "selection_s", "never"),
            "gfs_speedup_unshared_prefix": med("gfs", 1, "selection_s") / med("gfs", args.processes, "selection_s",
                                                                               "never")}
           if args.unshared else {}),
        "gfs_channels_identical": identical,
        "gfs_steps": gfs[0]["steps"], "gfs_channels_kept": gfs[0]["channels"],
        "train_images_per_s": {str(n): med("train", n, "train_images_per_s") for n in counts},
        "train_steps_per_s": {str(n): med("train", n, "steps_per_s") for n in counts},
        "train_throughput_ratio": med("train", args.processes, "train_images_per_s") / med("train", 1,
                                                                                           "train_images_per_s"),
        "test_samples": sorted({r["test_samples"] for r in runs}),
    }
    for r in gfs:
        r["kept"] = {k: len(v) for k, v in r["kept"].items()}  # the channels themselves are compared above
    record = {"benchmark": "scale_out", "config": {k: v for k, v in vars(args).items()
                                                    if k not in ("worker", "json", "run", "source", "out")},
              "machine": {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
                          "load_at_end": _load()},
              "summary": summary, "runs": runs}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    saved = json.loads(out.read_text()) if out.is_file() else {}
    saved[f"{args.model}_x{args.width:g}" + ("_quick" if args.quick else "")] = record
    out.write_text(json.dumps(saved, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
