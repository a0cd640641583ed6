"""Structured pruning benchmark: GFS against its rivals on a network trained on Fashion-MNIST.

One dense network is trained once; then every method prunes it to each MACs fraction with each seed (the seed
drives the greedy minibatches, the candidate subsets, the random ranking and the fine-tune), with the same
fine-tune budget. The ablation fine-tunes the same architecture from a new random init (every method prunes
to the same per-layer widths, so that architecture is GFS's). Each cell writes its own run folder and is
skipped when its result.json exists, so an interrupted run continues where it stopped.

    PYTHONPATH=src .venv/bin/python benchmarks/structured.py            # default: ~65 min on 2 CPU cores (resumable)
    PYTHONPATH=src .venv/bin/python benchmarks/structured.py --quick    # smoke test: ~1 min, results in *_quick.*

Outputs in ``benchmarks/results/``: ``structured.csv`` (one row per cell), ``structured.json`` (cells and the
per-method summary) and ``structured.png`` (test accuracy against MACs).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import netsift  # noqa: E402
from netsift.config import DataConfig, TrainConfig  # noqa: E402
from netsift.data import load_bundle  # noqa: E402
from netsift.measure import measure  # noqa: E402
from netsift.rundir import load_model  # noqa: E402
from netsift.selection import METHODS, finetune_defaults  # noqa: E402

VARIANTS = {
    # GFS scoring each candidate with its own minibatch BN statistics (as fine-tuning sees the network), then
    # re-estimating the BN running statistics of the pruned network: see the analysis in docs/prune.md
    "gfs-bnstats": {"method": "gfs", "bn_batch_stats": True, "recalibrate_bn": 20},
}
"""Benchmark rows that are a method with non-default settings."""

COLUMNS = ["method", "macs_target", "seed", "test_acc_selected", "test_acc", "macs", "macs_fraction", "params",
           "lat_b1_ms", "lat_b64_ms", "speedup_b1", "speedup_b64", "macs_reduction", "selection_s", "finetune_s"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--width", type=float, default=0.5, help="width multiplier (CPU budget)")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--train-subset", type=int, default=6000, help="training images used (CPU budget)")
    p.add_argument("--val-fraction", type=float, default=0.05)
    p.add_argument("--dense-epochs", type=int, default=8)
    p.add_argument("--finetune-epochs", type=int, default=1)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--fractions", type=float, nargs="+", default=[0.5, 0.3])
    p.add_argument("--methods", nargs="+", default=list(METHODS) + list(VARIANTS),
                   help=f"methods ({', '.join(METHODS)}) and variants ({', '.join(VARIANTS)})")
    p.add_argument("--candidates", type=int, default=50, help="GFS / backward candidates per step (published 50)")
    p.add_argument("--select-batch", type=int, default=128, help="greedy minibatch (published 128)")
    p.add_argument("--no-ablation", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", default=str(ROOT / "runs" / "bench-structured"), help="run folders of the cells")
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--quick", action="store_true", help="smoke test: 600 images, 1 dense epoch, seed 0, 50%% MACs, "
                                                        "4 candidates, gfs/l1/taylor/gfs-bnstats; *_quick outputs")
    args = p.parse_args(argv)
    if args.quick:
        args.train_subset, args.dense_epochs, args.seeds, args.fractions = 600, 1, [0], [0.5]
        args.candidates, args.methods, args.no_ablation = 4, ["gfs", "l1", "taylor", "gfs-bnstats"], True
        args.work += "-quick"
    return args


def cell_row(method: str, fraction: float, seed: int, r: dict) -> dict:
    """One CSV row from a cell's result.json."""
    return {"method": method, "macs_target": fraction, "seed": seed, "test_acc_selected": r["test_acc_selected"],
            "test_acc": r["test_acc"], "macs": r["macs"], "macs_fraction": r["macs_fraction"], "params": r["params"],
            "lat_b1_ms": r["latency_b1_ms"], "lat_b64_ms": r["latency_b64_ms"],
            "speedup_b1": r["speedup_b1"], "speedup_b64": r["speedup_b64"], "macs_reduction": 1 / r["macs_fraction"],
            "selection_s": r["selection_s"], "finetune_s": r["finetune_s"]}


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and standard deviation over seeds per (method, MACs target)."""
    out = []
    keys = sorted({(r["method"], r["macs_target"]) for r in rows}, key=lambda k: (-k[1], k[0]))
    for method, frac in keys:
        cell = [r for r in rows if r["method"] == method and r["macs_target"] == frac]
        s = {"method": method, "macs_target": frac, "n": len(cell)}
        for k in ("test_acc_selected", "test_acc", "macs_fraction", "params", "lat_b1_ms", "lat_b64_ms",
                  "speedup_b64", "macs_reduction", "selection_s"):
            vals = [float(r[k]) for r in cell]
            s[k] = statistics.mean(vals)
            s[k + "_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        out.append(s)
    return out


def architecture_latency(dense_dir: Path, cells: dict[float, Path], threads: int, rounds: int = 5) -> list[dict]:
    """Latency of the dense network and of each MACs fraction's pruned architecture, measured after all cells
    with netsift's one protocol (``measure.compare_latency``: interleaved rounds, medians).

    Every method prunes to the same widths at a given fraction, so one pruned network per fraction suffices.
    """
    from netsift.measure import compare_latency, count_macs

    dense, manifest = load_model(dense_dir)
    shape = (manifest["in_channels"], manifest["image_size"], manifest["image_size"])
    rows = []
    for frac, run in sorted(cells.items(), reverse=True):
        pruned = load_model(run)[0]
        lat = compare_latency({"dense": dense, "pruned": pruned}, shape, rounds=rounds, threads=threads)
        macs_red = count_macs(dense, shape) / count_macs(pruned, shape)
        d, p = lat["dense"], lat["pruned"]
        rows.append({"macs_target": frac, "macs_reduction": macs_red, "dense_b1_ms": d["b1_ms"],
                     "pruned_b1_ms": p["b1_ms"], "dense_b64_ms": d["b64_ms"], "pruned_b64_ms": p["b64_ms"],
                     "speedup_b1": d["b1_ms"] / p["b1_ms"], "speedup_b64": d["b64_ms"] / p["b64_ms"],
                     "speedup_b64_over_macs_reduction": d["b64_ms"] / p["b64_ms"] / macs_red,
                     "spread": max(d["spread"], p["spread"])})
    return rows


def plot(summary: list[dict], dense: dict, path: Path) -> None:
    """Test accuracy after fine-tuning against MACs, one line per method (mean ± std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in sorted({s["method"] for s in summary}):
        pts = sorted((s for s in summary if s["method"] == method), key=lambda s: s["macs_target"])
        ax.errorbar([s["macs_fraction"] * dense["macs"] / 1e6 for s in pts], [s["test_acc"] for s in pts],
                    yerr=[s["test_acc_std"] for s in pts], marker="o", capsize=3, label=method)
    ax.axhline(dense["test_acc"], color="k", ls="--", lw=1, label="dense")
    ax.set_xlabel("MACs per image (millions)")
    ax.set_ylabel("test accuracy after fine-tuning")
    ax.set_title(f"{dense['model']} on {dense['data']}: structured pruning")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    work, results = Path(args.work), Path(args.results)
    work.mkdir(parents=True, exist_ok=True)
    results.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data_cfg = DataConfig(args.data, train_subset=args.train_subset, val_fraction=args.val_fraction)
    dense_dir = work / "dense"
    if not (dense_dir / "result.json").exists():
        netsift.train(args.model, data_cfg, epochs=args.dense_epochs, batch_size=128, lr=0.1, nesterov=True,
                      weight_decay=5e-4, width=args.width, seed=0, out=dense_dir, overwrite=True)
    dense = json.loads((dense_dir / "result.json").read_text())
    print(f"dense {args.model} x{args.width}: test acc {dense['test_acc']:.4f}, {dense['macs']:,} MACs", flush=True)

    ft = TrainConfig(epochs=args.finetune_epochs, **finetune_defaults())
    cells = [(m, f, s, False) for f in args.fractions for s in args.seeds for m in args.methods]
    if not args.no_ablation:
        cells += [("random", f, s, True) for f in args.fractions for s in args.seeds]
    before = None
    rows = []
    for i, (method, frac, seed, reinit) in enumerate(cells):
        label = "same-arch-reinit" if reinit else method
        out = work / f"{label}-{frac}-s{seed}"
        if not (out / "result.json").exists():
            settings = dict(VARIANTS.get(method, {"method": method}))
            tc = time.perf_counter()
            if before is None:
                before = measure(load_model(dense_dir)[0].eval(), load_bundle(data_cfg, 0))
            netsift.prune(dense_dir, method=settings.pop("method"), macs=frac, finetune=ft, seed=seed, data_seed=0,
                          out=out, overwrite=True, progress=False, source_measure=before,
                          candidates=args.candidates, select_batch=args.select_batch,
                          finetune_epochs=args.finetune_epochs, reinit=reinit, latency_threads=args.threads,
                          **settings)
            print(f"[{i + 1}/{len(cells)}] {label} {frac} seed {seed}: {time.perf_counter() - tc:.0f} s "
                  f"(total {time.perf_counter() - t0:.0f} s)", flush=True)
        r = json.loads((out / "result.json").read_text())
        rows.append(cell_row(label, frac, seed, r))

    with open(results / ("structured_quick.csv" if args.quick else "structured.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    summary = summarize(rows)
    first = {}
    for method, frac, seed, reinit in cells:
        first.setdefault(frac, work / f"{'same-arch-reinit' if reinit else method}-{frac}-s{seed}")
    arch_latency = architecture_latency(dense_dir, first, args.threads)
    setup = {k: v for k, v in vars(args).items() if k not in ("work", "results")}
    name = "structured_quick" if args.quick else "structured"
    (results / f"{name}.json").write_text(json.dumps(
        {"setup": setup, "dense": {k: dense[k] for k in ("model", "data", "test_acc", "val_acc", "macs", "params")},
         "latency_threads": args.threads, "architecture_latency": arch_latency, "summary": summary,
         "cells": rows},
        indent=2) + "\n")
    plot(summary, dense, results / f"{name}.png")
    print(f"{'method':18} {'MACs':>5} {'acc sel':>8} {'acc ft':>15} {'MACs frac':>9} {'params':>7} "
          f"{'b1 ms':>6} {'b64 ms':>7} {'spd64':>6} {'MACs red':>8} {'sel s':>6}")
    for s in summary:
        print(f"{s['method']:18} {s['macs_target']:5.2f} {s['test_acc_selected']:8.4f} "
              f"{s['test_acc']:8.4f}±{s['test_acc_std']:.4f} {s['macs_fraction']:9.3f} {s['params']:7.0f} "
              f"{s['lat_b1_ms']:6.2f} {s['lat_b64_ms']:7.2f} {s['speedup_b64']:6.2f} {s['macs_reduction']:8.2f} "
              f"{s['selection_s']:6.1f}")
    for r in arch_latency:
        print(f"latency at {r['macs_target']:.0%} MACs (x{r['macs_reduction']:.2f} fewer): batch 1 "
              f"{r['dense_b1_ms']:.2f} -> {r['pruned_b1_ms']:.2f} ms (x{r['speedup_b1']:.2f}), batch 64 "
              f"{r['dense_b64_ms']:.1f} -> {r['pruned_b64_ms']:.1f} ms (x{r['speedup_b64']:.2f}, "
              f"{r['speedup_b64_over_macs_reduction']:.2f} of the MACs reduction)")
    print(f"dense: test acc {dense['test_acc']:.4f}; total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
