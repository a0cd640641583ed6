"""Mask learning rate of gumbel + Smart Rescale under the published constant schedule, on the CPU budget.

lenet300, Fashion-MNIST (a 20,000-image subset of the training split; 10% of the full training set held out for
validation), batch 128, 20 epochs, seeds 0 and 1, mask lr in {50, 100, 200, 500, 1000, 2000}, and one reference
row at netsift's current default (cosine schedule, lr 500). Each run records the test accuracy of the
extracted network at the best validation epoch, its density, and per epoch the validation/test accuracy,
density and undecided share (σ(m̂) in (0.1, 0.9)). The tuned lr is the one with the best mean *validation*
accuracy over seeds (the test split is not used to choose).

    PYTHONPATH=src OMP_NUM_THREADS=1 .venv/bin/python benchmarks/masks_lr_sweep.py          # ~15 min at 1 thread
    PYTHONPATH=src OMP_NUM_THREADS=1 .venv/bin/python benchmarks/masks_lr_sweep.py --report # rebuild the table

Incremental: each run is a line of ``<out>.jsonl``; a rerun skips the runs there. Writes ``<out>.json`` (the
summary table, the chosen lr and every run with its per-epoch series), ``<out>.md`` and ``<out>.png``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from masks_long import TestAccuracy, append_row, fit_masks_with, read_rows  # noqa: E402

from netsift.config import DataConfig, TrainConfig  # noqa: E402
from netsift.masks import apply_masks, extract  # noqa: E402
from netsift.masks.frozen import frozen_network  # noqa: E402
from netsift.masks.stats import MaskStats  # noqa: E402
from netsift.data import load_bundle  # noqa: E402
from netsift.measure import measure as measure_model  # noqa: E402
from netsift.models import model_manifest  # noqa: E402

LRS = (50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0)
REFERENCE = ("cosine", 500.0)  # netsift's default before issue 13


def run(lr: float, schedule: str, seed: int, bundle, args) -> dict:
    t0 = time.perf_counter()
    manifest = model_manifest("lenet300", 1.0, bundle.input_shape, bundle.num_classes)
    model = apply_masks(frozen_network(manifest, "signed-constant", seed), "gumbel", seed=seed)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, schedule=schedule, lr=lr)
    fitted = fit_masks_with(model, bundle, cfg, None, seed, False, [MaskStats(model), TestAccuracy(model, bundle)])
    m = measure_model(extract(model), bundle)
    h = fitted.history
    best = fitted.best_epoch - 1
    return {"mask_lr": lr, "schedule": schedule, "seed": seed, "epochs": args.epochs, "batch_size": args.batch_size,
            "train_images": len(bundle.train), "test_acc": m["test_acc"], "val_acc": m["val_acc"],
            "density": m["density"], "best_epoch": fitted.best_epoch,
            "undecided_at_best": h[best]["undecided"], "undecided_final": h[-1]["undecided"],
            "scales_final": h[-1].get("scales"), "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "wall_s": round(time.perf_counter() - t0, 1),
            "series": {k: [r.get(k) for r in h] for k in ("val_acc", "test_acc", "mask_density", "undecided",
                                                          "mask_changed", "train_loss")}}


def summarize(rows: list[dict]) -> tuple[list[dict], float | None]:
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["schedule"], r["mask_lr"]), []).append(r)
    out = []
    for (schedule, lr), rs in sorted(groups.items(), key=lambda kv: (kv[0][0] != "constant", kv[0][1])):
        s = {"schedule": schedule, "mask_lr": lr, "seeds": sorted(r["seed"] for r in rs)}
        for k in ("test_acc", "val_acc", "density", "undecided_at_best", "undecided_final", "best_epoch"):
            xs = [r[k] for r in rs]
            s[k] = statistics.mean(xs)
            s[f"{k}_std"] = statistics.stdev(xs) if len(xs) > 1 else 0.0
        s["per_seed_test_acc"] = [r["test_acc"] for r in sorted(rs, key=lambda r: r["seed"])]
        out.append(s)
    constant = [s for s in out if s["schedule"] == "constant"]
    chosen = max(constant, key=lambda s: s["val_acc"])["mask_lr"] if constant else None
    return out, chosen


def markdown(summary: list[dict], chosen: float | None) -> str:
    lines = ["| schedule | mask lr | seeds | test acc % (mean ± std) | val acc % | density | "
             "undecided at best epoch | undecided at the end | best epoch |", "|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        mark = " **(chosen)**" if s["schedule"] == "constant" and s["mask_lr"] == chosen else ""
        lines.append(f"| {s['schedule']} | {s['mask_lr']:g}{mark} | {len(s['seeds'])} | "
                     f"{100 * s['test_acc']:.2f} ± {100 * s['test_acc_std']:.2f} | "
                     f"{100 * s['val_acc']:.2f} ± {100 * s['val_acc_std']:.2f} | {s['density']:.3f} | "
                     f"{100 * s['undecided_at_best']:.1f}% | {100 * s['undecided_final']:.1f}% | "
                     f"{s['best_epoch']:.1f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.3))
    keys = [("val_acc", "validation accuracy"), ("mask_density", "density (m̂ ≥ 0)"),
            ("undecided", "undecided share σ(m̂) ∈ (0.1, 0.9)")]
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["schedule"], r["mask_lr"]), []).append(r)
    for i, ((schedule, lr), rs) in enumerate(sorted(groups.items(), key=lambda kv: (kv[0][0] != "constant", kv[0][1]))):
        color = plt.cm.viridis(i / max(1, len(groups) - 1)) if schedule == "constant" else "red"
        for ax, (k, title) in zip(axes, keys):
            curves = [r["series"][k] for r in rs]
            n = min(len(c) for c in curves)
            mean = [statistics.mean(c[e] for c in curves) for e in range(n)]
            ax.plot(range(1, n + 1), mean, color=color, linestyle="-" if schedule == "constant" else "--",
                    label=f"lr {lr:g}" + ("" if schedule == "constant" else f" ({schedule})"))
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
    axes[0].set_ylim(0.75, 0.9)
    axes[0].legend(fontsize=8)
    fig.suptitle("gumbel + Smart Rescale, lenet300, Fashion-MNIST 20k, batch 128 (mean over seeds)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(out: Path, rows: list[dict]) -> None:
    summary, chosen = summarize(rows)
    out.with_suffix(".json").write_text(json.dumps(
        {"setting": "lenet300, fashion-mnist 20k subset (val: 10% of the full training split), batch 128, "
                    "gumbel aslp + smart rescale (scale lr 1e-3), SGD momentum 0.9, no weight decay, 1 thread",
         "choice": "constant-schedule lr with the best mean validation accuracy", "chosen_mask_lr": chosen,
         "summary": summary, "runs": rows}, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(summary, chosen))
    if rows:
        plot(rows, out.with_suffix(".png"))
    print(markdown(summary, chosen))
    print(f"chosen mask lr: {chosen}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lrs", type=float, nargs="+", default=list(LRS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--train-subset", type=int, default=20000)
    p.add_argument("--no-reference", action="store_true", help="skip the cosine lr 500 reference")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default="benchmarks/results/masks_lr_sweep")
    p.add_argument("--report", action="store_true")
    p.add_argument("--quick", action="store_true", help="2 epochs, 2,000 images, lr 50 and 500, seed 0")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.quick:
        args.epochs, args.train_subset, args.lrs, args.seeds = 2, 2000, [50.0, 500.0], [0]
        args.out = "benchmarks/results/tmp/masks_lr_sweep_quick"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    log = out.with_suffix(".jsonl")
    rows = read_rows(log)
    if not args.report:
        done = {(r["schedule"], r["mask_lr"], r["seed"]) for r in rows}
        todo = [("constant", lr, seed) for seed in args.seeds for lr in args.lrs]
        if not args.no_reference:
            todo += [(REFERENCE[0], REFERENCE[1], seed) for seed in args.seeds]
        todo = [t for t in todo if t not in done]
        print(f"{len(done)} runs done, {len(todo)} to run", flush=True)
        bundles: dict = {}
        for schedule, lr, seed in todo:
            if seed not in bundles:
                bundles.clear()
                bundles[seed] = load_bundle(DataConfig("fashion-mnist", data_dir=args.data_dir,
                                                       train_subset=args.train_subset), seed)
            row = run(lr, schedule, seed, bundles[seed], args)
            append_row(log, row)
            rows.append(row)
            print(f"{schedule} lr {lr:g} seed {seed}: test {row['test_acc']:.4f} val {row['val_acc']:.4f} "
                  f"density {row['density']:.3f} undecided {row['undecided_final']:.3f} {row['wall_s']:.0f}s",
                  flush=True)
    report(out, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
