"""``netsift demo``: netsift's main job end to end on the built-in digits data (no download)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..config import DataConfig, ModelConfig, TrainConfig
from . import format_table
from .train import train


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="run the main pipeline on the built-in digits data",
                       description="Train, then find subnetworks, on scikit-learn's digits; prints a table.")
    p.add_argument("--out", default="runs/demo", metavar="DIR", help="folder for the demo's runs (default: runs/demo)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    out = Path(args.out)
    rows = []
    dense = train(ModelConfig("lenet300"), DataConfig("digits"), TrainConfig(epochs=15, batch_size=64, lr=0.05),
                  seed=args.seed, out=out / "dense", overwrite=True)
    rows.append({"step": "dense lenet300", **dense})
    print(format_table(rows, ["step", "test_acc", "density", "params", "macs", "wall_s"]))
    print(f"demo finished in {time.perf_counter() - t0:.1f} s; runs in {out}/")
    return 0
