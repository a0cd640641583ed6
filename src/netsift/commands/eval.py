"""``netsift eval RUN_DIR|FILE``: rebuild a saved network (run folder or compact file) and measure it on its data."""

from __future__ import annotations

import argparse

from ..data import DATA_ENV, DATASETS
from . import format_table


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="re-evaluate a saved run", description="Rebuild a saved network and measure it.")
    p.add_argument("path", metavar="RUN_DIR|FILE", help="a run folder written by train, extract or prune, or a compact "
                                                    "file written by `netsift export`")
    p.add_argument("--data", metavar="{" + ",".join(DATASETS) + "}", help="data set to evaluate on (default: the run's)")
    p.add_argument("--data-dir", metavar="DIR", help=f"where data files live (default: the run's, else ${DATA_ENV} or "
                                                     "~/.cache/netsift/data)")
    p.add_argument("--image-size", type=int, metavar="N", help="resize the images to N x N px (default: the run's)")
    p.add_argument("--latency", action="store_true", help="also measure CPU latency at batch 1 and 64 (1 thread)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..pipelines import evaluate

    result = evaluate(args.path, args.data, args.data_dir, latency_threads=1 if args.latency else None,
                      image_size=args.image_size)
    columns = ["arch", "data", "test_acc", "saved_test_acc", "val_acc", "density", "params", "macs"]
    if args.latency:
        columns += ["latency_b1_ms", "latency_b64_ms"]
    print(format_table([result], columns))
    return 0
