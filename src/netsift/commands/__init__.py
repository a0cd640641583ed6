"""One module per ``netsift`` subcommand, plus the flags they share. Commands parse, call a pipeline, print."""

from __future__ import annotations

import argparse


def add_run_flags(parser: argparse.ArgumentParser, resume: bool = True, data_seed_default: str = "--seed") -> None:
    """``--seed``, ``--data-seed``, ``--out``, ``--overwrite`` (and ``--resume``): the flags of every command
    that makes a run."""
    group = parser.add_argument_group("run options")
    group.add_argument("--seed", type=int, default=0, help="seed of the init, sampling and training (default: 0)")
    group.add_argument("--data-seed", type=int, default=None,
                       help=f"seed of the train/validation split (default: {data_seed_default})")
    group.add_argument("--out", metavar="DIR", help="run folder for result.json and checkpoints "
                                                    "(default: runs/<command>-<hash of the settings>)")
    group.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    if resume:
        group.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")


def out_arg(args: argparse.Namespace):
    """``--out``, or ``True`` (a folder named by the settings) when it is not given."""
    return args.out if args.out else True


def format_table(rows: list[dict], columns: list[str]) -> str:
    """A plain-text table of ``rows`` (floats in [0, 1] shown with 4 decimals)."""
    def cell(v):
        if isinstance(v, bool):
            return str(v).lower()
        if isinstance(v, float):
            return f"{v:.4f}" if abs(v) < 10 else f"{v:,.1f}"
        if isinstance(v, int):
            return f"{v:,}"
        return "" if v is None else str(v)
    body = [[cell(r.get(c) if isinstance(r, dict) else r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) if body else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(b, widths))) for b in body]
    return "\n".join(lines)
