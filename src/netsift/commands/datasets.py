"""``netsift datasets``: list the data sets, whether each is on this machine, and where netsift looked."""

from __future__ import annotations

from ..data import DATA_ENV, DATASETS, data_root, locate


def add_parser(sub) -> None:
    p = sub.add_parser("datasets", help="list the data sets and whether they are installed",
                       description="List the data sets: found (with its folder), built in, or missing (with the "
                                   "folders searched, in order).")
    p.add_argument("--data-dir", metavar="DIR", help=f"data root to check (default: ${DATA_ENV} or "
                                                     "~/.cache/netsift/data)")
    p.set_defaults(run=run)


def run(args) -> int:
    width = max(len(n) for n in DATASETS)
    for name, info in DATASETS.items():
        where = locate(name, args.data_dir)
        print(f"{name:<{width}}  {where.status:<8}  {info.description}")
        if where.found is not None:
            print(f"{'':<{width}}  {'':<8}  in {where.found}")
        elif where.looked:
            print(f"{'':<{width}}  {'':<8}  looked in: {', '.join(str(d) for d in where.looked)}")
        elif where.status == "missing" and name == "digits":
            print(f"{'':<{width}}  {'':<8}  needs scikit-learn (pip install scikit-learn)")
    print(f"\ndata root: {data_root(args.data_dir)} (set ${DATA_ENV} or pass --data-dir to change it; "
          "--download fetches the missing public ones where the network allows)")
    return 0
