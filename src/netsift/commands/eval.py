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
    p.add_argument("--images", metavar="DIR", help="measure on the images in DIR/<class>/* instead (class folders in "
                                                  "sorted order are labels 0, 1, ...; converted to the network's "
                                                  "channels and size, pixels in [0, 1]): for a network made on your "
                                                  "own data")
    p.add_argument("--mean", metavar="M[,M,M]", help="with --images: per-channel mean to normalise with")
    p.add_argument("--std", metavar="S[,S,S]", help="with --images: per-channel standard deviation")
    p.add_argument("--module", metavar="FILE.py:NAME", help="your own nn.Module class (or a function returning one, "
                                                           "called without arguments; package.module:NAME works "
                                                           "too), for a run or compact file made from it")
    p.add_argument("--latency", action="store_true", help="also measure CPU latency at batch 1 and 64 (1 thread)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..pipelines import evaluate

    from ..saved import import_module_class

    model = import_module_class(args.module) if args.module else None
    result = evaluate(args.path, args.data, args.data_dir, latency_threads=1 if args.latency else None,
                      image_size=args.image_size, model=model, images=args.images, mean=_floats(args.mean, "--mean"),
                      std=_floats(args.std, "--std"))
    columns = ["arch", "data", "test_acc", "saved_test_acc", "val_acc", "density", "params", "macs"]
    if args.latency:
        columns += ["latency_b1_ms", "latency_b64_ms"]
    print(format_table([result], columns))
    return 0


def _floats(text: str | None, flag: str) -> tuple[float, ...] | None:
    """``"0.5,0.25"`` as a tuple of floats (``None`` passes), or a one-line error."""
    if text is None:
        return None
    from ..errors import NetsiftError

    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise NetsiftError(f"{flag} takes comma-separated numbers, got {text!r}") from None
