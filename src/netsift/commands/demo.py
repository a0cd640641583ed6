"""``netsift demo``: netsift's main job end to end on the built-in digits data (no download)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from . import format_table


def compact_bytes(run_dir: Path) -> int | None:
    """Write the run's compact export (``model.nsc``) and return its size in bytes."""
    from ..masks.compact import write_compact

    from ..rundir import artifact

    path = artifact(run_dir, "compact")
    write_compact(run_dir, path)
    return path.stat().st_size


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="run the main pipeline on the built-in digits data",
                       description="Train, then find subnetworks, on scikit-learn's digits; prints a table.")
    p.add_argument("--out", default="runs/demo", metavar="DIR", help="folder for the demo's runs (default: runs/demo)")
    p.add_argument("--seed", type=int, default=0, help="seed of every step (default: 0)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import netsift
    from ..config import TrainConfig
    from ..errors import NetsiftError
    from ..rundir import check_out, check_output_file
    from ..selection import finetune_defaults

    t0 = time.perf_counter()
    check_output_file(args.out, "train")  # --out '' is refused
    out = Path(args.out)
    check_out(out)
    ours = ("dense", "gfs", "gumbel", "edge-popup")
    for sub in ours:
        check_out(out / sub)
    if out.is_dir() and any(e.name not in ours and not (e.name.startswith(".") and ".netsift-" in e.name)
                            for e in out.iterdir()):
        raise NetsiftError(f"--out {out} holds other files than the demo's runs; give an empty or new folder")
    dense = netsift.train("lenet300", "digits", epochs=15, batch_size=64, lr=0.05, seed=args.seed, out=out / "dense",
                          overwrite=True)
    rows = [{"step": "dense lenet300", **dense.to_dict()}]
    # Greedy Forward Selection of neurons: keep 30% of the MACs, remove the rest, fine-tune briefly.
    ft = TrainConfig(epochs=5, **{**finetune_defaults(), "batch_size": 64})
    pruned = netsift.prune(out / "dense", method="gfs", macs=0.3, finetune_epochs=5, finetune=ft, seed=args.seed,
                           out=out / "gfs", overwrite=True)
    rows.append({"step": "gfs selected (no fine-tune)", **pruned.to_dict(), "test_acc": pruned.test_acc_selected})
    rows.append({"step": "gfs + 5 epochs fine-tune", **pruned.to_dict()})
    print(format_table(rows, ["step", "test_acc", "density", "params", "macs", "wall_s"]))
    print(f"GFS kept {pruned.macs_fraction:.0%} of the MACs and {pruned.params / dense.params:.0%} of the "
          f"parameters; the pruned network is a plain nn.Module in {out / 'gfs'} (netsift.load_model)")
    # Weight subnetworks of one frozen random lenet300 (same init, same seed): only masks are learned.
    subnets = []
    for method in ("gumbel", "edge-popup"):
        r = netsift.extract("lenet300", "digits", method, epochs=20, batch_size=64, seed=args.seed, out=out / method,
                            overwrite=True)
        subnets.append({"method": method, "density": r.density, "test_acc": r.test_acc, "params": r.params,
                        "compact_bytes": compact_bytes(out / method), "wall_s": r.wall_s,
                        "weights": r.weights_sha256[:12]})
    columns = ["method", "density", "test_acc", "params", "compact_bytes", "wall_s", "weights"]
    print("\nsubnetworks of the same frozen random lenet300 (weights never trained; 'weights' = their SHA-256):")
    print(format_table(subnets, columns))
    print(f"demo finished in {time.perf_counter() - t0:.1f} s; runs in {out}/")
    return 0
