"""Weight masks on frozen random networks, Fashion-MNIST: gumbel (and ablations) vs edge-popup, supermask,
random masks and the dense-trained network, on lenet300 and a CPU-sized Conv-2.

    PYTHONPATH=src .venv/bin/python benchmarks/masks.py            # full run (incremental: reruns skip done cells)
    PYTHONPATH=src .venv/bin/python benchmarks/masks.py --quick    # smoke test: 1 seed, 1 epoch, small subsets
    PYTHONPATH=src .venv/bin/python benchmarks/masks.py --determinism  # benchmark path vs CLI, threads, CPU ISA

Every cell (architecture, variant, density, seed) is appended to ``<out>.jsonl`` when it finishes; a rerun
skips the cells already there. Each cell also keeps its run folder in ``--work`` (``runs/bench-masks[-quick]/
<arch>-<variant>-<density>-s<seed>``), which ``netsift report`` tabulates and plots. At the end (and with ``--report``) it writes ``<out>.csv`` / ``<out>.json``
(mean ± std over seeds), ``<out>.png`` (test accuracy against density) and ``<out>_steptime.json`` (the time
of one training step of each method relative to a dense step at the same batch size).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import netsift
from netsift.config import DataConfig
from netsift.data import load_bundle
from netsift.masks import apply_masks
from netsift.masks.frozen import frozen_network
from netsift.models import model_manifest

DENSITIES = (0.05, 0.1, 0.3, 0.5, 0.7)
ARCHS = {  # CPU budget: Conv-2 at width 0.25 (16-16 channels, FC 64-64) on an 8,000-image training subset
    "lenet300": {"width": 1.0, "train_subset": 20000},
    "conv2": {"width": 0.25, "train_subset": 8000},
}
VARIANTS = {  # name: (netsift.extract options, takes a density)
    "gumbel": ({"method": "gumbel"}, False),
    "gumbel-lr50": ({"method": "gumbel", "lr": 50.0}, False),
    "gumbel-norescale": ({"method": "gumbel", "rescale": "none"}, False),
    "gumbel-naive": ({"method": "gumbel", "parametrization": "naive"}, False),
    "edge-popup": ({"method": "edge-popup"}, True),
    "supermask": ({"method": "supermask"}, False),
    "random": ({"method": "random"}, True),
    "random-trained": ({"method": "random", "train_weights": True, "init": "kaiming-normal"}, True),
    "dense": (None, False),
    "gumbel-density": ({"method": "gumbel"}, True),
}
ORDER = ["gumbel", "edge-popup", "dense", "supermask", "gumbel-lr50", "gumbel-norescale", "random",
         "random-trained", "gumbel-naive"]


def cells(args) -> list[tuple[str, str, float | None, int]]:
    """All cells, seed-major so that a cut-short run still has every variant for the first seeds."""
    out = []
    for seed in range(args.seeds):
        for arch in args.archs:
            for variant in ORDER + (["gumbel-density"] if args.density_target else []):
                if args.variants and variant not in args.variants:
                    continue
                densities = (args.gumbel_densities if variant == "gumbel-density" else args.densities)
                for d in (densities if VARIANTS[variant][1] else [None]):
                    out.append((arch, variant, d, seed))
    return out


def environment() -> dict:
    """What decides the floating-point bits besides the seed: thread count, ATen's CPU kernel ISA, versions.

    Same seed gives the same bits only with the same ``threads`` (gumbel: full reductions and small GEMMs split
    across threads) and the same ``cpu_capability`` (ATen's vectorised kernels, e.g. AVX2 vs AVX512 log-softmax;
    ``ATEN_CPU_CAPABILITY=avx2`` on an AVX512 machine reproduces an AVX2 machine). See ``--determinism``.
    """
    return {"threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch": torch.__version__}


def key(arch: str, variant: str, density: float | None, seed: int) -> str:
    return f"{arch}|{variant}|{density}|{seed}"


_BUNDLES: dict = {}


def bundle_for(arch: str, seed: int, args):
    k = (arch, seed)
    if k not in _BUNDLES:
        _BUNDLES.clear()
        _BUNDLES[k] = load_bundle(data_config(arch, args), seed)
    return _BUNDLES[k]


def data_config(arch: str, args) -> DataConfig:
    return DataConfig("fashion-mnist", data_dir=args.data_dir,
                      train_subset=args.train_subset or ARCHS[arch]["train_subset"])


def run_cell(arch: str, variant: str, density: float | None, seed: int, args) -> dict:
    """Train one cell through the public API (netsift.extract / netsift.train) and read its result."""
    t0 = time.perf_counter()
    options, _ = VARIANTS[variant]
    width = ARCHS[arch]["width"]
    work = getattr(args, "work", None)  # None: no run folder (the determinism study's subprocess cells)
    out = Path(work) / f"{arch}-{variant}-{density if density is not None else 'emergent'}-s{seed}" if work else None
    if options is None:  # dense training from a Kaiming-normal init: the ceiling
        bundle = bundle_for(arch, seed, args)
        manifest = model_manifest(arch, width, bundle.input_shape, bundle.num_classes)
        model = frozen_network(manifest, "kaiming-normal", seed).requires_grad_(True)
        r = netsift.train(model, bundle, epochs=args.epochs, batch_size=args.batch_size, seed=seed,
                          latency_threads=None, out=out, overwrite=True)
    else:
        options = dict(options)
        r = netsift.extract(arch, bundle_for(arch, seed, args), options.pop("method"), density, width=width,
                            epochs=args.epochs, batch_size=args.batch_size, seed=seed, out=out, overwrite=True,
                            **options)
    return {"arch": arch, "variant": variant, "density_target": density, "seed": seed, "test_acc": r.test_acc,
            "val_acc": r.val_acc, "density": r.density, "layers": [row["density"] for row in r.layers],
            "best_epoch": r.best_epoch, "epochs": args.epochs, "train_subset": bundle_for(arch, seed, args).size("train"),
            "wall_s": round(time.perf_counter() - t0, 2), **environment()}


# ---------------------------------------------------------------------------------------------- step time


def step_times(arch: str, batch_size: int, rounds: int = 5, steps: int = 10) -> dict:
    """Time of one training step (forward, backward, SGD step) per variant, relative to dense; min over rounds."""
    manifest = {"model": arch, "width": ARCHS[arch]["width"], "in_channels": 1, "image_size": 28, "num_classes": 10}
    x, y = torch.randn(batch_size, 1, 28, 28), torch.randint(0, 10, (batch_size,))
    setups = {}
    for name, options in [("dense", None), ("gumbel", {"method": "gumbel"}),
                          ("gumbel-norescale", {"method": "gumbel", "rescale": "none"}),
                          ("gumbel-density", {"method": "gumbel", "density": 0.1}),
                          ("gumbel-naive", {"method": "gumbel", "parametrization": "naive"}),
                          ("edge-popup", {"method": "edge-popup", "density": 0.5}),
                          ("supermask", {"method": "supermask"})]:
        model = frozen_network(manifest, "signed-constant", 0)
        if options is not None:
            model = apply_masks(model, options["method"], **{k: v for k, v in options.items() if k != "method"})
        params = [p for p in model.parameters() if p.requires_grad]
        callbacks = []
        if options and options.get("density") and options["method"] == "gumbel":
            from netsift.masks.gumbel import DensityProjection
            callbacks.append(DensityProjection(model, options["density"]))
        setups[name] = (model.train(), torch.optim.SGD(params, lr=1e-3, momentum=0.9), callbacks)
    times = {name: [] for name in setups}
    for _ in range(rounds):
        for name, (model, opt, callbacks) in setups.items():
            n = steps if name != "gumbel-naive" else max(2, steps // 4)
            for i in range(n + 2):
                if i == 2:
                    t0 = time.perf_counter()
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                for cb in callbacks:
                    cb.on_step_end(i, 0.0)
            times[name].append((time.perf_counter() - t0) / n * 1e3)
    dense = min(times["dense"])
    return {name: {"step_ms": round(min(t), 3), "ratio": round(min(t) / dense, 3)} for name, t in times.items()}


# ---------------------------------------------------------------------------------------------- determinism

DETERMINISM_RUNS = [  # (label, how, environment overrides)
    ("benchmark path (run_cell), 1 thread", "bench", {}),
    ("CLI netsift extract, 1 thread", "cli", {"OMP_NUM_THREADS": "1"}),
    ("CLI netsift extract, 2 threads", "cli", {"OMP_NUM_THREADS": "2"}),
    ("CLI netsift extract, 1 thread, ATEN_CPU_CAPABILITY=avx2", "cli",
     {"OMP_NUM_THREADS": "1", "ATEN_CPU_CAPABILITY": "avx2"}),
    ("benchmark path (run_cell), 1 thread, ATEN_CPU_CAPABILITY=avx2", "bench", {"ATEN_CPU_CAPABILITY": "avx2"}),
]


def _subprocess_cell(how: str, variant: str, seed: int, env: dict, args) -> dict:
    """One lenet300 cell (20k subset, ``args.epochs``) in a fresh process: the CLI or this file's ``run_cell``."""
    env = {**os.environ, **env}
    if how == "cli":
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "netsift", "extract", "--method", variant, "--model", "lenet300",
                   "--data", "fashion-mnist", "--train-subset", "20000", "--epochs", str(args.epochs),
                   "--batch-size", str(args.batch_size), "--seed", str(seed), "--out", f"{tmp}/run"]
            cmd += ["--data-dir", args.data_dir] if args.data_dir else []
            subprocess.run(cmd, env=env, check=True, capture_output=True)
            r = json.loads(Path(f"{tmp}/run/result.json").read_text())
        return {"test_acc": r["test_acc"], "val_acc": r["val_acc"], "density": r["density"],
                "best_epoch": r["best_epoch"], "threads": r["threads"]}
    code = (f"import json, sys, argparse, torch; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); "
            "import masks as B; "
            "torch.set_num_threads(1); "
            f"a = argparse.Namespace(epochs={args.epochs}, batch_size={args.batch_size}, data_dir={args.data_dir!r}, "
            f"train_subset=20000); r = B.run_cell('lenet300', {variant!r}, None, {seed}, a); print(json.dumps(r))")
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return {k: r[k] for k in ("test_acc", "val_acc", "density", "best_epoch", "threads", "cpu_capability")}


def determinism(args, out: Path, rows: list[dict]) -> None:
    """Same seed, same settings, different code paths / thread counts / CPU kernel ISA: which bits change?

    Incremental: each run is a line of ``<out>_determinism.jsonl`` (a rerun skips it); the summary goes to
    ``<out>_determinism.json``.
    """
    log = out.parent / f"{out.name}_determinism.jsonl"
    done = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []
    for variant in ("gumbel", "edge-popup"):
        for seed in args.determinism_seeds:
            for label, how, env in DETERMINISM_RUNS:
                if any((d["variant"], d["seed"], d["run"]) == (variant, seed, label) for d in done):
                    continue
                t0 = time.perf_counter()
                # passive OpenMP waits: same numbers, but a 2-thread run on a loaded 2-core machine is not
                # slowed down 10-30x by spinning threads
                r = _subprocess_cell(how, variant, seed, {"OMP_WAIT_POLICY": "PASSIVE", **env}, args)
                done.append({"variant": variant, "seed": seed, "run": label, **r,
                             "wall_s": round(time.perf_counter() - t0, 1)})
                with open(log, "a") as f:
                    f.write(json.dumps(done[-1]) + "\n")
                print(json.dumps(done[-1]), flush=True)
    report = {"question": "why did `netsift extract` not reproduce the seed-0 rows of masks.jsonl (issue 13)?",
              "machine": environment(),
              "setting": f"lenet300, fashion-mnist 20k subset, {args.epochs} epochs, batch {args.batch_size}",
              "stored": [], "runs": done}
    for variant in ("gumbel", "edge-popup"):
        for seed in args.determinism_seeds:
            stored = next((r for r in rows if (r["arch"], r["variant"], r["seed"]) == ("lenet300", variant, seed)
                           and r["density_target"] in (None, 0.5) and r["epochs"] == args.epochs), None)
            if stored:
                report["stored"].append({"variant": variant, "seed": seed, "run": "stored row of masks.jsonl",
                                         "test_acc": stored["test_acc"], "val_acc": stored["val_acc"]})
    path = out.parent / f"{out.name}_determinism.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {path}")


# ---------------------------------------------------------------------------------------------- report


def summarize(rows: list[dict]) -> list[dict]:
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["arch"], r["variant"], r["density_target"]), []).append(r)
    out = []
    for (arch, variant, d), rs in groups.items():
        acc = [r["test_acc"] for r in rs]
        dens = [r["density"] for r in rs]
        std = (lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0)
        out.append({"arch": arch, "variant": variant, "density_target": d, "seeds": len(rs),
                    "test_acc_mean": statistics.mean(acc), "test_acc_std": std(acc),
                    "density_mean": statistics.mean(dens), "density_std": std(dens),
                    "epochs": rs[0]["epochs"], "train_subset": rs[0]["train_subset"],
                    "wall_s_mean": statistics.mean(r["wall_s"] for r in rs)})
    order = {v: i for i, v in enumerate(list(VARIANTS))}
    return sorted(out, key=lambda s: (s["arch"], order[s["variant"]], s["density_target"] or 0))


def plot(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    archs = sorted({s["arch"] for s in summary})
    fig, axes = plt.subplots(1, len(archs), figsize=(6 * len(archs), 4.5), squeeze=False)
    styles = {"edge-popup": "o-", "random-trained": "s:", "gumbel-density": "d-"}
    for ax, arch in zip(axes[0], archs):
        rows = [s for s in summary if s["arch"] == arch]
        for variant, style in styles.items():
            pts = sorted((s for s in rows if s["variant"] == variant), key=lambda s: s["density_mean"])
            if pts:
                ax.errorbar([p["density_mean"] for p in pts], [p["test_acc_mean"] for p in pts],
                            yerr=[p["test_acc_std"] for p in pts], fmt=style, capsize=3, label=variant)
        for variant, marker in [("gumbel", "*"), ("gumbel-lr50", "v"), ("gumbel-norescale", "^"),
                                ("gumbel-naive", "P"), ("supermask", "D")]:
            for p in (s for s in rows if s["variant"] == variant):
                ax.errorbar(p["density_mean"], p["test_acc_mean"], xerr=p["density_std"], yerr=p["test_acc_std"],
                            fmt=marker, markersize=10 if marker == "*" else 7, capsize=3, label=variant)
        for p in (s for s in rows if s["variant"] == "dense"):
            ax.axhline(p["test_acc_mean"], color="k", linestyle="--", linewidth=1, label="dense trained")
        ax.set_xscale("log")
        ax.set_xticks([0.05, 0.1, 0.3, 0.5, 0.7, 1.0], ["0.05", "0.1", "0.3", "0.5", "0.7", "1"])
        ax.set_ylim(0.45, 0.9)
        ax.text(0.05, 0.46, "random masks on frozen weights: ~10% (chance), below the chart", fontsize=7)
        ax.set_xlabel("density (fraction of weights kept)")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"{arch}, Fashion-MNIST, frozen random weights")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def markdown(summary: list[dict]) -> str:
    """The summary as a Markdown table (test accuracy and density, mean ± std over seeds, in %)."""
    lines = ["| model | variant | density target | density (mean ± std) | test acc % (mean ± std) | seeds |",
             "|---|---|---|---|---|---|"]
    for s in summary:
        target = "-" if s["density_target"] is None else f"{s['density_target']:g}"
        lines.append(f"| {s['arch']} | {s['variant']} | {target} | {s['density_mean']:.3f} ± {s['density_std']:.3f} | "
                     f"{100 * s['test_acc_mean']:.2f} ± {100 * s['test_acc_std']:.2f} | {s['seeds']} |")
    return "\n".join(lines) + "\n"


def report(out: Path, rows: list[dict]) -> list[dict]:
    summary = summarize(rows)
    out.with_suffix(".json").write_text(json.dumps({"summary": summary, "cells": rows}, indent=1) + "\n")
    columns = list(summary[0]) if summary else []
    lines = [",".join(columns)] + [",".join(str(s[c]) if s[c] is not None else "" for c in columns) for s in summary]
    out.with_suffix(".csv").write_text("\n".join(lines) + "\n")
    if summary:
        plot(summary, out.with_suffix(".png"))
        out.with_suffix(".md").write_text(markdown(summary))
    for s in summary:
        d = f"{s['density_target']}" if s["density_target"] is not None else "-"
        print(f"{s['arch']:9s} {s['variant']:17s} {d:>5s}  acc {100 * s['test_acc_mean']:5.2f} ± "
              f"{100 * s['test_acc_std']:4.2f}  density {s['density_mean']:.3f} ± {s['density_std']:.3f}  "
              f"n={s['seeds']}")
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1 seed, 1 epoch, 2,000 images, densities 0.1 and 0.5")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    p.add_argument("--densities", type=float, nargs="+", default=list(DENSITIES))
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), help="run only these variants")
    p.add_argument("--density-target", action="store_true", help="also gumbel with --density (beyond the paper)")
    p.add_argument("--gumbel-densities", type=float, nargs="+", default=[0.1, 0.3])
    p.add_argument("--train-subset", type=int, default=None, help="override the per-architecture subset")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/masks")
    p.add_argument("--work", default="runs/bench-masks", help="run folders of the cells (for netsift report)")
    p.add_argument("--report", action="store_true", help="only rebuild the tables and the plot")
    p.add_argument("--determinism", action="store_true",
                   help="only compare the benchmark path with the CLI (threads, CPU ISA) on lenet300 gumbel and "
                        "edge-popup 0.5 into <out>_determinism.json")
    p.add_argument("--determinism-seeds", type=int, nargs="+", default=[0])
    p.add_argument("--no-steptime", action="store_true")
    p.add_argument("--steptime-rerun", action="store_true",
                   help="only re-measure step times (7 rounds) into <out>_steptime_rerun.json")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs, args.train_subset, args.densities = 1, 1, 2000, [0.1, 0.5]
        args.gumbel_densities = [0.1]
        args.out += "_quick"
        args.work += "-quick"
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    log = out.with_suffix(".jsonl")
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []
    done = {key(r["arch"], r["variant"], r["density_target"], r["seed"]) for r in rows}
    if args.determinism:
        determinism(args, out, rows)
        return 0
    if args.steptime_rerun:
        st = {"threads": args.threads, "torch": torch.__version__, "note": "rerun, min over 7 rounds of 10 steps"}
        for arch in args.archs:
            for bs in (128, 256):
                st[f"{arch}_batch{bs}"] = step_times(arch, bs, rounds=7)
        (out.parent / f"{out.name}_steptime_rerun.json").write_text(json.dumps(st, indent=1) + "\n")
        return 0
    if not args.report:
        steptime_path = out.parent / f"{out.name}_steptime.json"
        if not args.no_steptime and not steptime_path.exists():
            st = {"threads": args.threads, "torch": torch.__version__}
            for arch in args.archs:
                for bs in (128, 256):
                    st[f"{arch}_batch{bs}"] = step_times(arch, bs, rounds=2 if args.quick else 5)
                    print(arch, bs, json.dumps(st[f"{arch}_batch{bs}"]), flush=True)
            steptime_path.write_text(json.dumps(st, indent=1) + "\n")
        todo = [c for c in cells(args) if key(*c) not in done]
        print(f"{len(done)} cells done, {len(todo)} to run", flush=True)
        for i, cell in enumerate(todo):
            row = run_cell(*cell, args)
            rows.append(row)
            with open(log, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"[{i + 1}/{len(todo)}] {cell} acc {row['test_acc']:.4f} density {row['density']:.3f} "
                  f"{row['wall_s']:.1f}s", flush=True)
    report(out, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
