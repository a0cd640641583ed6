"""One module per ``netsift`` subcommand, plus the flags they share. Commands parse, call a pipeline, print."""

from __future__ import annotations

import argparse

from ..tables import format_table  # noqa: F401  (the commands' table printer)
from ..tracking import TRACKERS


def add_run_flags(parser: argparse.ArgumentParser, resume: bool = True, data_seed_default: str = "--seed") -> None:
    """``--seed``, ``--data-seed``, ``--out``, ``--overwrite`` (and ``--resume``): the flags of every command
    that makes a run."""
    group = parser.add_argument_group("run options")
    group.add_argument("--seed", type=int, default=0, help="seed of the init, sampling and training (default: 0)")
    group.add_argument("--data-seed", type=int, default=None,
                       help=f"seed of the train/validation split (default: {data_seed_default})")
    group.add_argument("--out", metavar="DIR", help="run folder for result.json and checkpoints "
                                                    "(default: runs/<command>-<hash of the settings>)")
    group.add_argument("--overwrite", action="store_true",
                       help="replace the run in --out (the new run is built beside it and replaces it when it finishes)")
    group.add_argument("--force", action="store_true",
                       help="with --overwrite: replace --out even if it holds files that are not a netsift run")
    if resume:
        group.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    group.add_argument("--log-with", nargs="+", choices=TRACKERS, metavar="TRACKER",
                       help="experiment trackers (Accelerate's tracker API), one or more of {" + ",".join(TRACKERS)
                            + "}: they get the settings and every epoch's metrics, in DIR/logs; csv needs no extra "
                              "package, the others their own (default: none)")


def out_arg(args: argparse.Namespace):
    """``--out``, or ``True`` (a folder named by the settings) when it is not given (``--out ''`` is refused)."""
    return args.out if args.out is not None else True


def print_weights(result) -> None:
    """Say which ``--weights`` file the network started from and how it was adapted (nothing without one)."""
    record = getattr(result, "weights", None)
    if not record:
        return
    print(f"weights: {record['file']} (sha256 {record['sha256'][:16]}...)")
    for note in record.get("adapted") or []:
        print(f"  adapted: {note}")
