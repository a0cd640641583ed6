"""The Gumbel paper's claim at the largest budget this CPU allows: long runs with early stopping, 3 seeds.

LeNet-300-100 on the full Fashion-MNIST training split (10% held out for validation, as published) and Conv-2 at a
CPU-sized width; gumbel + Smart Rescale at the published mask lr 50 and at the lr tuned by
``masks_lr_sweep.py`` (both with the published constant schedule), gumbel without rescale at the tuned lr,
edge-popup at its best densities (published recipe: lr 0.1 cosine, weight decay 1e-4), and the dense network.

    export PYTHONPATH=src OMP_NUM_THREADS=1
    .venv/bin/python benchmarks/masks_long.py --quick            # smoke test (a minute or two, writes under tmp/)
    nohup .venv/bin/python benchmarks/masks_long.py > runs/masks_long/worker0.log 2>&1 &      # the grid
    nohup .venv/bin/python benchmarks/masks_long.py --shard 1/2 > runs/masks_long/worker1.log 2>&1 &
    .venv/bin/python benchmarks/masks_long.py --report           # tables and plots from what has finished

``--shard I/N`` runs only the cells i with i % N == I. Each cell is locked while it runs (a ``seed<s>.lock``
file beside its run folder), so workers never run the same cell: a second worker with ``--shard 1/2`` may join
a first one started without ``--shard`` (which then skips the cells the second one holds or finished).

Resumable at two levels: every finished cell is one JSON line of ``<out>.jsonl`` (a rerun skips it) holding
its result and its per-epoch series; a cell cut short resumes from its last epoch checkpoint in
``runs/masks_long/<arch>/<variant>/seed<s>/`` (bit for bit, on the same machine and thread count). Every
process uses 1 thread. Cells run seed-major: a run cut short has every variant of the first seeds.

``--report`` writes ``<out>.md`` / ``.csv`` / ``.json`` (test accuracy at the best validation epoch, mean ± std
over seeds; emergent density; when σ(m̂) settles; epochs to the best validation) and ``<out>_curves.png``
(validation and test accuracy, density and undecided share σ(m̂) ∈ (0.1, 0.9) against epochs).
"""

from __future__ import annotations

import argparse
import fcntl
import inspect
import json
import math
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

from netsift.config import DataConfig, TrainConfig
from netsift.data import load_bundle, make_loader
from netsift.errors import NetsiftError
from netsift.masks import apply_masks, extract, fit_masks
from netsift.masks.frozen import frozen_network
from netsift.masks.stats import MaskStats
from netsift.measure import evaluate
from netsift.measure import measure as measure_model
from netsift.models import model_manifest
from netsift.training import Callback, fit

PUBLISHED_LR = 50.0
TUNED_LR = 1000.0
"""Mask lr chosen by ``masks_lr_sweep.py`` (constant schedule; see ``benchmarks/results/masks_lr_sweep.json``)."""

ARCHS = {
    # lenet300: the full training split (54,000 train / 6,000 val), cap 100 epochs, patience 100 as published
    # (inert within the cap: every cell runs its 100 epochs and keeps its best-validation epoch).
    "lenet300": {"width": 1.0, "train_subset": None, "epochs": 100, "patience": 100},
    # Conv-2 at width 0.25 (16-16 channels, FC 64-64) on a 16,000-image subset of the training split (the
    # validation split is still 10% of the full one), cap 40 epochs, patience 20: an epoch costs ~10 CPU-s
    # here (the full split would cost ~34 CPU-s, ~6x a lenet300 epoch).
    "conv2": {"width": 0.25, "train_subset": 16000, "epochs": 40, "patience": 20},
}
"""Budget (1 thread, CPU-s per epoch measured with the per-epoch test evaluation): lenet300 gumbel ~5.5,
edge-popup ~4.4, dense ~2.5 -> 2,780 CPU-s per seed; Conv-2 ~10 per epoch -> 2,000 CPU-s per seed;
3 seeds ~14,300 CPU-s, about 4 CPU-hours (wall time is longer on a shared, loaded machine)."""


def variants(tuned_lr: float) -> dict[str, dict | None]:
    """Variant name -> MaskConfig options (``None``: the dense network). Names carry the mask lr."""
    t = f"{tuned_lr:g}"
    return {
        f"gumbel-lr{t}": {"method": "gumbel", "rescale": "smart", "mask_lr": tuned_lr},
        f"edge-popup-0.5": {"method": "edge-popup", "density": 0.5},
        "dense": None,
        "gumbel-lr50": {"method": "gumbel", "rescale": "smart", "mask_lr": PUBLISHED_LR},
        f"gumbel-norescale-lr{t}": {"method": "gumbel", "rescale": "none", "mask_lr": tuned_lr},
        f"edge-popup-0.7": {"method": "edge-popup", "density": 0.7},
    }


ARCH_VARIANTS = {  # which variants each architecture runs (cut for Conv-2: one edge-popup density)
    "lenet300": None,  # all
    "conv2": ("gumbel-lr{t}", "edge-popup-0.7", "dense", "gumbel-lr50", "gumbel-norescale-lr{t}"),
}


def schedule_for(options: dict | None) -> str:
    """Published schedules: gumbel constant; edge-popup cosine; the dense network cosine (netsift's train)."""
    return "constant" if options and options["method"] == "gumbel" else "cosine"


def cells(args) -> list[tuple[str, str, int]]:
    """(arch, variant, seed), seed-major."""
    out = []
    vs = variants(args.tuned_lr)
    for seed in args.seeds:
        for arch in args.archs:
            allowed = ARCH_VARIANTS.get(arch)
            for v in vs:
                if allowed is not None and v not in {a.format(t=f"{args.tuned_lr:g}") for a in allowed}:
                    continue
                if args.variants and v not in args.variants:
                    continue
                out.append((arch, v, seed))
    return out


def key(arch: str, variant: str, seed: int) -> str:
    return f"{arch}|{variant}|{seed}"


# ---------------------------------------------------------------------------------------------- running


class TestAccuracy(Callback):
    """Adds ``test_acc`` (the network as it validates: the extracted mask) to every epoch's row."""

    def __init__(self, model, bundle, batch_size: int = 512):
        self.model, self.loader = model, make_loader(bundle, "test", batch_size)

    def on_epoch_end(self, epoch: int, metrics: dict) -> None:
        metrics["test_acc"] = evaluate(self.model, self.loader)["acc"]


class EpochLog(Callback):
    """One line per epoch on stdout (the worker's log)."""

    def __init__(self, label: str):
        self.label = label

    def on_epoch_end(self, epoch: int, metrics: dict) -> None:
        extra = "".join(f" {k} {metrics[k]:.4f}" for k in ("mask_density", "undecided") if metrics.get(k) is not None)
        print(f"  {self.label} epoch {epoch + 1}: val {metrics['val_acc']:.4f} test {metrics.get('test_acc', 0):.4f}"
              f"{extra} ({metrics['epoch_s']:.1f}s)", flush=True)


def fit_masks_with(model, bundle, train_cfg: TrainConfig, run_dir, seed: int, resume: bool, callbacks):
    """``fit_masks`` with the benchmark's callbacks (the same optimizer groups as ``netsift extract``)."""
    return fit_masks(model, bundle, train_cfg, run_dir, seed=seed, resume=resume, callbacks=callbacks)


_BUNDLES: dict = {}


def bundle_for(arch: str, seed: int, args):
    k = (args.data, arch, seed, args.arch_settings[arch]["train_subset"])
    if k not in _BUNDLES:
        _BUNDLES.clear()
        _BUNDLES[k] = load_bundle(DataConfig(args.data, data_dir=args.data_dir,
                                             train_subset=args.arch_settings[arch]["train_subset"]), seed)
    return _BUNDLES[k]


def cell_settings(arch: str, variant: str, seed: int, args) -> dict:
    s = args.arch_settings[arch]
    options = variants(args.tuned_lr)[variant]
    return {"arch": arch, "variant": variant, "seed": seed, "width": s["width"], "train_subset": s["train_subset"],
            "epochs_cap": s["epochs"], "patience": s["patience"], "batch_size": args.batch_size,
            "schedule": schedule_for(options), "mask": options, "data": args.data, "val_fraction": 0.1}


def run_cell(arch: str, variant: str, seed: int, args) -> dict:
    """Train one cell (resuming its run folder if it was cut short) and measure the final network.

    A checkpoint whose tensor file does not match its JSON (a kill between the two ``os.replace`` calls of
    ``netsift.checkpoint.save_checkpoint``) cannot be resumed: the cell then restarts from scratch.
    """
    try:
        return _run_cell(arch, variant, seed, args)
    except NetsiftError as e:
        if "corrupt" not in str(e) and "not found" not in str(e):
            raise
        print(f"  cannot resume {arch}/{variant}/seed{seed} ({e}); restarting the cell", flush=True)
        (Path(args.runs) / arch / variant / f"seed{seed}" / "checkpoint.json").unlink(missing_ok=True)
        return _run_cell(arch, variant, seed, args)


def _run_cell(arch: str, variant: str, seed: int, args) -> dict:
    t0 = time.perf_counter()
    settings = cell_settings(arch, variant, seed, args)
    run_dir = Path(args.runs) / arch / variant / f"seed{seed}"
    saved = run_dir / "cell.json"
    resume = (run_dir / "checkpoint.json").exists()
    if resume and json.loads(saved.read_text()) != settings:
        raise SystemExit(f"{run_dir} holds a run with other settings ({saved}); delete the folder to restart it")
    if not resume and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(settings, indent=1) + "\n")

    bundle = bundle_for(arch, seed, args)
    manifest = model_manifest(arch, settings["width"], bundle.input_shape, bundle.num_classes)
    s = args.arch_settings[arch]
    options = dict(settings["mask"] or {})
    mask_lr = options.pop("mask_lr", None)  # the mask optimizer's lr is the loop's lr (None: the method's)
    train_cfg = TrainConfig(epochs=s["epochs"], batch_size=args.batch_size, schedule=settings["schedule"],
                            patience=s["patience"], lr=mask_lr)
    label = f"{arch}/{variant}/seed{seed}"
    if not options:  # the dense network from a Kaiming-normal init (netsift train's defaults): the ceiling
        model = frozen_network(manifest, "kaiming-normal", seed).requires_grad_(True)
        callbacks = [TestAccuracy(model, bundle), EpochLog(label)]
        fitted = fit(model, bundle, train_cfg, run_dir, callbacks=callbacks, seed=seed, resume=resume,
                     desc=f"{arch} dense")
        final = model
    else:
        model = apply_masks(frozen_network(manifest, "signed-constant", seed), options.pop("method"), seed=seed,
                            **options)
        callbacks = [MaskStats(model), TestAccuracy(model, bundle), EpochLog(label)]
        fitted = fit_masks_with(model, bundle, train_cfg, run_dir, seed, resume, callbacks)
        final = extract(model)
    m = measure_model(final, bundle)
    history = fitted.history
    series = {k: [r.get(k) for r in history] for k in
              ("val_acc", "test_acc", "train_loss", "train_acc", "mask_density", "undecided", "mask_changed",
               "scales", "layer_density", "epoch_s")}
    row = {**settings, "test_acc": m["test_acc"], "val_acc": m["val_acc"], "density": m["density"],
           "layers": [r["density"] for r in m["layers"]], "best_epoch": fitted.best_epoch,
           "epochs_run": len(history), "stopped_early": fitted.stopped_early,
           "train_images": len(bundle.train), "val_images": len(bundle.val),
           "cell_wall_s": round(time.perf_counter() - t0, 1), "train_s": round(sum(r["epoch_s"] for r in history), 1),
           "resumed": resume, "threads": torch.get_num_threads(),
           "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
           "run_dir": str(run_dir), "series": series}
    for stem in ("checkpoint",):  # the finished cell keeps metrics.jsonl, cell.json and best.* (its best masks)
        for suffix in (".json", ".safetensors"):
            (run_dir / f"{stem}{suffix}").unlink(missing_ok=True)
    return row


def append_row(path: Path, row: dict) -> None:
    """Append one JSON line with one write under an exclusive lock (two workers may share the file)."""
    data = (json.dumps(row) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, data)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def cell_lock(cell: tuple[str, str, int], args) -> int | None:
    """An exclusive lock on the cell (a file beside its run folder), or ``None`` if another worker holds it."""
    arch, variant, seed = cell
    path = Path(args.runs) / arch / variant / f"seed{seed}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a crash mid-write: that cell reruns
                pass
    return rows


# ---------------------------------------------------------------------------------------------- report


def _mean_std(xs: list) -> tuple[float | None, float | None]:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not xs:
        return None, None
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def first_epoch(series: list, test) -> int | None:
    """1-based first epoch whose value passes ``test`` (``None`` if none does)."""
    return next((i + 1 for i, v in enumerate(series) if v is not None and test(v)), None)


def cell_summary(r: dict) -> dict:
    s = r["series"]
    val = s["val_acc"]
    best = max(val)
    und = s.get("undecided") or []
    best_i = r["best_epoch"] - 1 if r["best_epoch"] and r["best_epoch"] > 0 else len(val) - 1
    return {"test_acc": r["test_acc"], "val_acc": r["val_acc"], "density": r["density"],
            "max_test_acc": max(x for x in s["test_acc"] if x is not None),
            "best_epoch": r["best_epoch"],
            "epochs_to_99_5pct_best_val": first_epoch(val, lambda v: v >= best - 0.005),  # within 0.5 point
            "undecided_at_best": und[best_i] if und and und[best_i] is not None else None,
            "undecided_final": und[-1] if und and und[-1] is not None else None,
            "settle50_epoch": first_epoch(und, lambda v: v < 0.5) if any(x is not None for x in und) else None,
            "settle10_epoch": first_epoch(und, lambda v: v < 0.1) if any(x is not None for x in und) else None,
            "epochs_run": r["epochs_run"], "train_s": r["train_s"]}


def summarize(rows: list[dict]) -> list[dict]:
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["arch"], r["variant"]), []).append(r)
    out = []
    for (arch, variant), rs in groups.items():
        cs = [cell_summary(r) for r in sorted(rs, key=lambda r: r["seed"])]
        row = {"arch": arch, "variant": variant, "seeds": [r["seed"] for r in sorted(rs, key=lambda r: r["seed"])],
               "n": len(rs), "epochs_cap": rs[0]["epochs_cap"], "patience": rs[0]["patience"],
               "train_images": rs[0]["train_images"], "schedule": rs[0]["schedule"]}
        for k in ("test_acc", "max_test_acc", "density", "best_epoch", "epochs_to_99_5pct_best_val",
                  "undecided_at_best", "undecided_final", "settle50_epoch", "settle10_epoch", "epochs_run",
                  "train_s"):
            vals = [c[k] for c in cs]
            row[f"{k}_mean"], row[f"{k}_std"] = _mean_std(vals)
            row[f"{k}_n"] = sum(v is not None for v in vals)
        out.append(row)
    order = {"lenet300": 0, "conv2": 1}
    return sorted(out, key=lambda s: (order.get(s["arch"], 9), s["variant"]))


def _fmt(s: dict, k: str, scale: float = 1.0, digits: int = 2) -> str:
    m, sd = s[f"{k}_mean"], s[f"{k}_std"]
    if m is None:
        return "–"
    text = f"{scale * m:.{digits}f} ± {scale * sd:.{digits}f}"
    if s[f"{k}_n"] < s["n"]:
        text += f" ({s[f'{k}_n']}/{s['n']})"
    return text


def markdown(summary: list[dict]) -> str:
    lines = ["| model | variant | seeds | test acc % at best val | max test acc % | density | best val epoch | "
             "epochs to within 0.5 pt of best val | undecided at best | epoch undecided < 50% | "
             "epoch undecided < 10% | epochs run / cap |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(f"| {s['arch']} | {s['variant']} | {s['n']} | {_fmt(s, 'test_acc', 100)} | "
                     f"{_fmt(s, 'max_test_acc', 100)} | {_fmt(s, 'density', 1, 3)} | {_fmt(s, 'best_epoch', 1, 1)} | "
                     f"{_fmt(s, 'epochs_to_99_5pct_best_val', 1, 1)} | {_fmt(s, 'undecided_at_best', 100, 1)}"
                     f"{'%' if s['undecided_at_best_mean'] is not None else ''} | {_fmt(s, 'settle50_epoch', 1, 1)} | "
                     f"{_fmt(s, 'settle10_epoch', 1, 1)} | {_fmt(s, 'epochs_run', 1, 0)} / {s['epochs_cap']} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    archs = [a for a in ("lenet300", "conv2") if any(r["arch"] == a for r in rows)]
    panels = [("val_acc", "validation accuracy"), ("test_acc", "test accuracy"),
              ("mask_density", "density (m̂ ≥ 0)"), ("undecided", "undecided share: σ(m̂) ∈ (0.1, 0.9)")]
    fig, axes = plt.subplots(len(archs), len(panels), figsize=(5.2 * len(panels), 4 * len(archs)), squeeze=False)
    names = sorted({r["variant"] for r in rows})
    colors = {v: plt.cm.tab10(i % 10) for i, v in enumerate(names)}
    for ai, arch in enumerate(archs):
        for pi, (k, title) in enumerate(panels):
            ax = axes[ai][pi]
            for v in names:
                curves = [r["series"][k] for r in rows if r["arch"] == arch and r["variant"] == v]
                curves = [c for c in curves if c and any(x is not None for x in c)]
                if not curves:
                    continue
                n = max(len(c) for c in curves)
                mean, lo, hi = [], [], []
                for e in range(n):
                    xs = [c[e] for c in curves if e < len(c) and c[e] is not None]
                    m = statistics.mean(xs)
                    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
                    mean.append(m), lo.append(m - sd), hi.append(m + sd)
                ep = list(range(1, n + 1))
                ax.plot(ep, mean, color=colors[v], label=f"{v} (n={len(curves)})", linewidth=1.2)
                ax.fill_between(ep, lo, hi, color=colors[v], alpha=0.2, linewidth=0)
            ax.set_title(f"{arch}: {title}", fontsize=10)
            ax.set_xlabel("epoch")
            if k in ("val_acc", "test_acc"):
                ys = [x for r in rows if r["arch"] == arch for x in r["series"][k][2:] if x is not None]
                if ys:
                    ax.set_ylim(max(0.0, min(ys) - 0.01), max(ys) + 0.005)
            ax.grid(alpha=0.3)
            if pi == 0:
                ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("Fashion-MNIST, frozen random weights (dense: trained); mean ± std over seeds", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(out: Path, rows: list[dict]) -> list[dict]:
    summary = summarize(rows)
    out.with_suffix(".json").write_text(json.dumps(
        {"summary": summary, "cells": [{k: v for k, v in r.items() if k != "series"} for r in rows]},
        indent=1) + "\n")
    columns = list(summary[0]) if summary else []
    fmt = lambda v: "" if v is None else (";".join(map(str, v)) if isinstance(v, list) else str(v))
    out.with_suffix(".csv").write_text("\n".join([",".join(columns)] +
                                                 [",".join(fmt(s[c]) for c in columns) for s in summary]) + "\n")
    out.with_suffix(".md").write_text(markdown(summary))
    if rows:
        plot(rows, out.parent / f"{out.name}_curves.png")
    print(markdown(summary))
    return summary


# ---------------------------------------------------------------------------------------------- quick check


def check_fit_helper(args) -> None:
    """``fit_masks_with`` (the benchmark's path, with callbacks) learns the same masks as ``fit_masks``."""
    from netsift.masks import masks_and_scales

    bundle = load_bundle(DataConfig("digits"), 0)
    manifest = model_manifest("lenet300", 0.2, bundle.input_shape, bundle.num_classes)
    cfg = TrainConfig(epochs=2, batch_size=64, schedule="constant", lr=200.0)
    results = []
    for use_helper in (False, True):
        model = apply_masks(frozen_network(manifest, "signed-constant", 0), "gumbel")
        if use_helper:
            fit_masks_with(model, bundle, cfg, None, 0, False, [MaskStats(model), TestAccuracy(model, bundle)])
        else:
            fit_masks(model, bundle, cfg, seed=0)
        results.append(masks_and_scales(model))
    a, b = results
    same = all(torch.equal(a[k][0], b[k][0]) and torch.equal(a[k][1], b[k][1]) for k in a)
    print(f"fit_masks_with == fit_masks (digits, 2 epochs, bit for bit): {same}", flush=True)
    if not same:
        raise SystemExit("fit_masks_with no longer matches fit_masks: update its optimizer groups")


# ---------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with ``args.arch_settings`` (each architecture's budget, cut down by ``--quick``)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke test: 1 seed, 2-3 epochs, small subsets, tmp outputs")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    p.add_argument("--variants", nargs="+", help="run only these variants (names as in the table)")
    p.add_argument("--tuned-lr", type=float, default=TUNED_LR, help="the tuned gumbel mask lr")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--shard", default="0/1", help="I/N: run only cells i with i %% N == I (a second worker)")
    p.add_argument("--data", default="fashion-mnist", help="data set (tests use digits)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default="benchmarks/results/masks_long")
    p.add_argument("--runs", default="runs/masks_long", help="per-cell run folders (metrics.jsonl, checkpoints)")
    p.add_argument("--report", action="store_true", help="only write the tables and plots")
    p.add_argument("--list", action="store_true", help="only list the cells and whether they are done")
    args = p.parse_args(argv)
    args.arch_settings = {k: dict(v) for k, v in ARCHS.items()}
    if args.quick:
        args.seeds = args.seeds[:1]
        args.arch_settings["lenet300"].update(train_subset=2000, epochs=3, patience=2)
        args.arch_settings["conv2"].update(train_subset=1000, epochs=2, patience=2)
        args.out = "benchmarks/results/tmp/masks_long_quick"
        args.runs = "runs/masks_long_quick"
    shard, nshards = (int(x) for x in args.shard.split("/"))
    if not 0 <= shard < nshards:
        p.error(f"--shard {args.shard}: need 0 <= I < N")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    shard, nshards = (int(x) for x in args.shard.split("/"))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    log = out.with_suffix(".jsonl")
    rows = read_rows(log)
    if args.report:
        report(out, rows)
        return 0
    if args.quick:
        check_fit_helper(args)
    all_cells = cells(args)
    mine = [c for i, c in enumerate(all_cells) if i % nshards == shard]
    done = {key(r["arch"], r["variant"], r["seed"]) for r in rows}
    if args.list:
        for i, c in enumerate(all_cells):
            print(f"{i:3d} shard {i % nshards} {'done' if key(*c) in done else 'todo'} {key(*c)}")
        return 0
    print(f"{len(all_cells)} cells, shard {shard}/{nshards}: {len(mine)}, "
          f"{sum(key(*c) in done for c in mine)} done; threads {torch.get_num_threads()}, "
          f"{torch.backends.cpu.get_cpu_capability()}", flush=True)
    for i, cell in enumerate(mine):
        rows = read_rows(log)  # another worker may have finished cells meanwhile
        if key(*cell) in {key(r["arch"], r["variant"], r["seed"]) for r in rows}:
            continue
        lock = cell_lock(cell, args)
        if lock is None:
            print(f"[{i + 1}/{len(mine)}] {key(*cell)} is running in another worker: skipped", flush=True)
            continue
        try:
            print(f"[{i + 1}/{len(mine)}] {key(*cell)} start {time.strftime('%H:%M:%S')}", flush=True)
            row = run_cell(*cell, args)
            append_row(log, row)
        finally:
            os.close(lock)
        print(f"[{i + 1}/{len(mine)}] {key(*cell)} test {row['test_acc']:.4f} density {row['density']:.3f} "
              f"best epoch {row['best_epoch']}/{row['epochs_run']} {row['cell_wall_s']:.0f}s", flush=True)
    report(out, read_rows(log))
    return 0


if __name__ == "__main__":
    sys.exit(main())
