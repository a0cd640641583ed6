"""``netsift report RUN_DIR... [--out DIR]``: tables and plots over any set of run folders."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser(
        "report", help="tabulate and plot a set of runs (a sweep, a benchmark)",
        description="Read run folders of train, extract and prune (a folder holding result.json, or every such "
                    "folder below the given ones, e.g. a benchmark's work folder) and write, in --out: report.csv "
                    "(one row per run: every scalar of result.json and config.json), summary.csv (mean and std "
                    "over seeds), report.md, and PNG plots: accuracy against MACs (prune) or density (extract) "
                    "per method, training curves, per-layer kept widths or densities. Prints the tables as "
                    "markdown.")
    p.add_argument("paths", nargs="+", metavar="RUN_DIR", help="run folders, or folders holding run folders")
    p.add_argument("--out", default="report", metavar="DIR", help="folder for the CSV, markdown and PNG files "
                                                                  "(default: report)")
    p.add_argument("--no-plots", action="store_true", help="tables only")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..report import report

    r = report(args.paths, args.out, plots=not args.no_plots)
    print(r["markdown"].split("\n![")[0].rstrip())
    print(f"\nwrote {', '.join(r['files'])}")
    return 0
