"""``netsift datasets``: list the data sets and where netsift looks for them."""

from __future__ import annotations

from ..data import DATA_ENV, DATASETS, data_root


def add_parser(sub) -> None:
    p = sub.add_parser("datasets", help="list the data sets")
    p.set_defaults(run=run)


def run(args) -> int:
    for info in DATASETS.values():
        print(f"{info.name:<14} {info.description}")
    print(f"\ndata root: {data_root()} (set ${DATA_ENV} or pass --data-dir to change it)")
    return 0
