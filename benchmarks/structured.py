"""Structured pruning benchmark: GFS against its rivals on networks trained on Fashion-MNIST, by fine-tune budget.

For each network (ResNet-20 x0.5 and VGG11 x0.25 by default) one dense network is trained once. Then every
method prunes it to each MACs fraction with each seed (the seed drives the greedy minibatches, the candidate
subsets, the random ranking and the fine-tune) through ``netsift.prune`` with no fine-tuning: that cell's
``test_acc_selected`` is the accuracy before any fine-tuning (BN statistics re-estimated, as netsift does by
default for every method on batch-norm networks). The same selected network is then fine-tuned for each
budget in ``--finetune-epochs`` (published recipe: SGD Nesterov, cosine from lr 0.01, label smoothing 0.1,
weight decay 4e-5) with ``netsift.train`` — what ``netsift prune --finetune-epochs K`` does after selection —
so a selection is paid once per cell. Every run folder is kept and skipped when its result.json exists, so an
interrupted run continues where it stopped.

    PYTHONPATH=src .venv/bin/python benchmarks/structured.py                # resumable; see --help for the grid
    PYTHONPATH=src .venv/bin/python benchmarks/structured.py --quick        # smoke test: a few minutes, *_quick.*
    PYTHONPATH=src .venv/bin/python benchmarks/structured.py --report       # tables and plot from finished cells

Outputs in ``benchmarks/results/``: ``structured.csv`` (one row per cell and budget), ``structured.json``
(setup, dense networks, cells, per-method summary) and ``structured.md`` (mean ± std tables).
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

NETWORKS = {
    # name: architecture, width, training subset, dense epochs (CPU budget; the VGG11 setting)
    "resnet20": {"arch": "resnet20", "width": 0.5, "train_subset": 6000, "epochs": 8},
    "vgg11": {"arch": "vgg11", "width": 0.25, "train_subset": 20000, "epochs": 6},
}
VARIANTS = {
    # the paper's settings: eval-mode BN scoring, no BN re-estimation, 0.1-epoch fine-tune after each layer
    "gfs-published": {"method": "gfs", "published": True},
    # ablation: the pruned architecture re-initialised at random before fine-tuning (the paper: worse)
    "same-arch-reinit": {"method": "random", "reinit": True},
}
"""Benchmark rows that are a method with non-default settings."""

COLUMNS = ["network", "method", "macs_target", "seed", "finetune_epochs", "test_acc", "test_acc_selected", "macs",
           "macs_fraction", "params", "selection_s", "finetune_s"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--val-fraction", type=float, default=0.05)
    p.add_argument("--finetune-epochs", type=int, nargs="+", default=[0, 1, 5], help="fine-tune budgets")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--fractions", type=float, nargs="+", default=[0.5, 0.25])
    p.add_argument("--methods", nargs="+", default=list(METHODS) + list(VARIANTS),
                   help=f"methods ({', '.join(METHODS)}) and variants ({', '.join(VARIANTS)})")
    p.add_argument("--candidates", type=int, default=50, help="GFS / backward candidates per step (published 50)")
    p.add_argument("--select-batch", type=int, default=128, help="greedy minibatch (published 128)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--shard", default="0/1", help="I/N: run every N-th cell starting at I (a second worker)")
    p.add_argument("--report", action="store_true", help="only tabulate the finished cells")
    p.add_argument("--work", default=str(ROOT / "runs" / "bench-structured"), help="run folders of the cells")
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--quick", action="store_true", help="smoke test: resnet20 on 1,000 images, 2 dense epochs, "
                                                        "seed 0, 50%% MACs, 4 candidates, budgets 0/1")
    args = p.parse_args(argv)
    args.name = "structured"
    if args.quick:
        args.networks, args.seeds, args.fractions, args.finetune_epochs = ["resnet20"], [0], [0.5], [0, 1]
        args.candidates, args.methods = 4, ["gfs", "gfs-published", "l1", "taylor"]
        args.work += "-quick"
        args.name = "structured_quick"
    return args


def network_setup(name: str, args) -> dict:
    net = dict(NETWORKS[name])
    if args.quick:
        net.update(train_subset=1000, epochs=2)
    return net


def dense_run(name: str, args) -> tuple[Path, DataConfig]:
    """Train (once) the dense network of ``name``; its run folder and data settings."""
    net = network_setup(name, args)
    data_cfg = DataConfig(args.data, train_subset=net["train_subset"], val_fraction=args.val_fraction)
    folder = Path(args.work) / name / "dense"
    if not (folder / "result.json").exists():
        netsift.train(net["arch"], data_cfg, epochs=net["epochs"], batch_size=128, lr=0.1, nesterov=True,
                      weight_decay=5e-4, width=net["width"], seed=0, out=folder, overwrite=True)
    return folder, data_cfg


def cells(args) -> list[tuple[str, str, float, int]]:
    """(network, method, fraction, seed), seed-major so a cut-short run has every method for the first seeds."""
    out = [(n, m, f, s) for s in args.seeds for n in args.networks for f in args.fractions for m in args.methods]
    i, n = (int(v) for v in args.shard.split("/"))
    return out[i::n]


def run_cell(network: str, method: str, fraction: float, seed: int, args, before: dict) -> list[dict]:
    """Select once (no fine-tune), then fine-tune the selected network for every budget; one row per budget."""
    dense_dir, data_cfg = dense_run(network, args)
    folder = Path(args.work) / network / f"{method}-{fraction}-s{seed}"
    if not (folder / "result.json").exists():
        settings = dict(VARIANTS.get(method, {"method": method}))
        netsift.prune(dense_dir, method=settings.pop("method"), macs=fraction, finetune_epochs=0, seed=seed,
                      out=folder, overwrite=True, source_measure=before, candidates=args.candidates,
                      select_batch=args.select_batch, latency_threads=args.threads, **settings)
    sel = json.loads((folder / "result.json").read_text())
    rows = []
    for epochs in args.finetune_epochs:
        r = sel
        if epochs:
            ft_dir = folder / f"ft{epochs}"
            if not (ft_dir / "result.json").exists():
                ft = TrainConfig(epochs=epochs, **finetune_defaults())
                netsift.train(load_model(folder)[0], data_cfg, ft, seed=seed, data_seed=sel["data_seed"],
                              out=ft_dir, overwrite=True, latency_threads=None)
            r = json.loads((ft_dir / "result.json").read_text())
        rows.append({"network": network, "method": method, "macs_target": fraction, "seed": seed,
                     "finetune_epochs": epochs, "test_acc": r["test_acc"], "test_acc_selected": sel["test_acc_selected"],
                     "macs": sel["macs"], "macs_fraction": sel["macs_fraction"], "params": sel["params"],
                     "selection_s": sel["selection_s"], "finetune_s": r["wall_s"] if epochs else 0.0})
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and standard deviation over seeds per (network, method, MACs target, fine-tune budget)."""
    out = []
    keys = sorted({(r["network"], r["method"], r["macs_target"], r["finetune_epochs"]) for r in rows},
                  key=lambda k: (k[0], -k[2], k[3], k[1]))
    for key in keys:
        cell = [r for r in rows if (r["network"], r["method"], r["macs_target"], r["finetune_epochs"]) == key]
        s = dict(zip(("network", "method", "macs_target", "finetune_epochs"), key), n=len(cell))
        for k in ("test_acc", "macs_fraction", "selection_s"):
            vals = [float(r[k]) for r in cell]
            s[k] = statistics.mean(vals)
            s[k + "_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        out.append(s)
    return out


def markdown(summary: list[dict], dense: dict) -> str:
    """One table per network: rows = methods, columns = (MACs, fine-tune budget)."""
    lines = []
    for network in sorted({s["network"] for s in summary}):
        part = [s for s in summary if s["network"] == network]
        cols = sorted({(s["macs_target"], s["finetune_epochs"]) for s in part}, key=lambda c: (-c[0], c[1]))
        d = dense[network]
        lines += [f"### {network} (dense test accuracy {d['test_acc']:.4f}, {d['macs']:,} MACs)", "",
                  "| method | " + " | ".join(f"{m:.0%} MACs, {e} ep" for m, e in cols) + " | selection s |",
                  "|---|" + "---|" * (len(cols) + 1)]
        for method in sorted({s["method"] for s in part}):
            cells = {(s["macs_target"], s["finetune_epochs"]): s for s in part if s["method"] == method}
            row = [f"{cells[c]['test_acc']:.4f} ± {cells[c]['test_acc_std']:.4f}" if c in cells else "–" for c in cols]
            sel = statistics.mean(s["selection_s"] for s in cells.values())
            lines.append(f"| {method} | " + " | ".join(row) + f" | {sel:.1f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows, dense, befores = [], {}, {}
    todo = cells(args)
    for i, (network, method, fraction, seed) in enumerate(todo):
        folder = Path(args.work) / network / f"{method}-{fraction}-s{seed}"
        done = all((folder / (f"ft{e}" if e else "") / "result.json").exists() for e in args.finetune_epochs)
        if args.report and not done:
            continue
        if network not in befores and not done:
            dense_dir, data_cfg = dense_run(network, args)
            befores[network] = measure(load_model(dense_dir)[0], load_bundle(data_cfg, 0))
        tc = time.perf_counter()
        rows += run_cell(network, method, fraction, seed, args, befores.get(network))
        if not done:
            print(f"[{i + 1}/{len(todo)}] {network} {method} {fraction} seed {seed}: {time.perf_counter() - tc:.0f} s "
                  f"(total {time.perf_counter() - t0:.0f} s)", flush=True)
    for network in args.networks:
        folder = Path(args.work) / network / "dense" / "result.json"
        if folder.exists():
            dense[network] = json.loads(folder.read_text())
    with open(results / f"{args.name}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    summary = summarize(rows)
    setup = {k: v for k, v in vars(args).items() if k not in ("work", "results", "report", "shard")}
    setup["networks"] = {n: network_setup(n, args) for n in args.networks}
    (results / f"{args.name}.json").write_text(json.dumps(
        {"setup": setup, "dense": {n: {k: d[k] for k in ("model", "width", "data", "test_acc", "val_acc", "macs",
                                                          "params")} for n, d in dense.items()},
         "summary": summary, "cells": rows}, indent=1) + "\n")
    table = markdown(summary, dense)
    (results / f"{args.name}.md").write_text(table + "\n")
    print(table)
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
