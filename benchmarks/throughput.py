"""Training throughput of the shared loop: images per second and peak memory, per model, on real data.

    python benchmarks/throughput.py --data fashion-mnist --models lenet300 conv4 --steps 60

Times ``--steps`` optimizer steps of ``netsift.training.fit`` (after one warm-up epoch slice) for each model
and writes ``benchmarks/results/throughput.json`` and ``.csv``. It states the thread count and batch size.
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import time
from pathlib import Path

import torch

from netsift.config import TrainConfig
from netsift.data import load_data
from netsift.models import build_model
from netsift.training import fit


def measure(model_name: str, data: str, steps: int, batch_size: int, width: float) -> dict:
    bundle = load_data(data)
    torch.manual_seed(0)
    model = build_model(model_name, bundle.in_channels, bundle.image_size, bundle.num_classes, width)
    fit(model, bundle, TrainConfig(epochs=1, max_steps=3, batch_size=batch_size))  # warm-up
    t0 = time.perf_counter()
    result = fit(model, bundle, TrainConfig(epochs=1, max_steps=steps, batch_size=batch_size))
    wall = time.perf_counter() - t0
    return {"model": model_name, "width": width, "data": data, "batch_size": batch_size, "steps": steps,
            "threads": torch.get_num_threads(), "train_images_per_s": round(result.images_per_s, 1),
            "epoch_s_incl_val": round(wall, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--models", nargs="+", default=["lenet300", "conv4"])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = p.parse_args()
    rows = [measure(m, args.data, args.steps, args.batch_size, args.width) for m in args.models]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "throughput.json").write_text(json.dumps(rows, indent=2) + "\n")
    with open(out / "throughput.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    for r in rows:
        print(f"{r['model']:<10} {r['train_images_per_s']:>10,.1f} img/s  batch {r['batch_size']}, "
              f"{r['threads']} threads, peak RSS {r['peak_rss_mb']} MB")


if __name__ == "__main__":
    main()
