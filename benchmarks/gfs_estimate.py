"""How good is the cost estimate GFS prints before it starts?  Estimated against measured selection time.

``netsift.prune(..., method="gfs")`` prints "GFS: about N suffix passes, ~T on this machine" before the selection
(:mod:`netsift.selection.estimate`: the MACs of every suffix pass, timed by one forward pass at the selection's
batch size) and records ``selection_estimate_s`` next to the measured ``selection_s`` in ``result.json``. This
runs GFS to 50% of the MACs on three networks (random weights: the selection's cost does not depend on them; the
minibatches are Fashion-MNIST's) and records both, one network at a time, 1 thread:

    PYTHONPATH=src OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/gfs_estimate.py

Results: ``benchmarks/results/gfs_estimate.json`` (one record per network, resumable; ``--redo`` reruns) and
``gfs_estimate.md``. The target: the estimate within 2x of the measured time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
NETWORKS = {  # name: (model, width, image size, candidates)
    "resnet20 x0.5": ("resnet20", 0.5, None, 50),
    "vgg11 x0.25": ("vgg11", 0.25, None, 50),
    "timm resnet18 (32 px)": ("timm:resnet18", 1.0, 32, 4),
}


def run(label: str, data: str, train_subset: int, repeat: int = 1) -> dict:
    import torch

    import netsift
    from netsift.config import DataConfig

    torch.set_num_threads(1)
    model, width, size, candidates = NETWORKS[label]
    t0 = time.perf_counter()
    r = netsift.prune(model, DataConfig(data=data, train_subset=train_subset), method="gfs", macs=0.5, width=width,
                      image_size=size, candidates=candidates, finetune_epochs=0, latency_threads=None)
    return {"network": label, "repeat": repeat, "model": model, "width": width, "data": data, "image_size": r.image_size,
            "candidates": candidates, "select_batch": 128, "groups": len(r.groups or []),
            "passes": r.selection_passes, "estimate_s": r.selection_estimate_s, "selection_s": r.selection_s,
            "ratio": r.selection_s / r.selection_estimate_s, "macs": r.source_macs, "macs_fraction": r.macs_fraction,
            "threads": torch.get_num_threads(), "load_1min": os.getloadavg()[0],
            "wall_s": time.perf_counter() - t0}


def write_table(records: list[dict], path: Path) -> None:
    ok = sum(1 for r in records if 0.5 <= r["ratio"] <= 2.0)
    lines = ["# GFS cost estimate against the measured selection time", "",
             f"{ok}/{len(records)} runs within 2x (measured / estimated between 0.5 and 2). GFS to 50% of the "
             "MACs, random weights, Fashion-MNIST minibatches of 128 images, 1 thread; the machine was shared "
             "(1-minute load average in the table), so both figures are noisy.", "",
             "| network | repeat | px | candidates | groups | suffix passes | estimated s | measured s | measured / "
             "estimated | load |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(records, key=lambda r: (list(NETWORKS).index(r["network"]), r.get("repeat", 1))):
        lines.append(f"| {r['network']} | {r.get('repeat', 1)} | {r['image_size']} | {r['candidates']} | {r['groups']} | {r['passes']:,} | "
                     f"{r['estimate_s']:.1f} | {r['selection_s']:.1f} | {r['ratio']:.2f} | {r['load_1min']:.1f} |")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    sys.path.insert(0, str(ROOT / "src"))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--train-subset", type=int, default=6000)
    ap.add_argument("--networks", default=",".join(NETWORKS), help="comma-separated: " + ", ".join(NETWORKS))
    ap.add_argument("--redo", action="store_true")
    ap.add_argument("--repeat", type=int, default=1, help="record this run as repeat N of each network")
    ap.add_argument("--out", default=str(RESULTS / "gfs_estimate.json"))
    args = ap.parse_args()
    out = Path(args.out)
    records = json.loads(out.read_text()) if out.exists() else []
    for label in args.networks.split(","):
        key = (label, args.repeat)
        if any((r["network"], r.get("repeat", 1)) == key for r in records) and not args.redo:
            continue
        r = run(label, args.data, args.train_subset, args.repeat)
        records = [x for x in records if (x["network"], x.get("repeat", 1)) != key] + [r]
        out.write_text(json.dumps(records, indent=1))
        write_table(records, out.with_suffix(".md"))
        print(f"{label}: estimated {r['estimate_s']:.1f} s, measured {r['selection_s']:.1f} s "
              f"(x{r['ratio']:.2f})", flush=True)


if __name__ == "__main__":
    main()
