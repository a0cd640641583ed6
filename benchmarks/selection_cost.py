"""What learned widths cost: GFS selection time with uniform against learned widths on the same network.

Each network's dense run of ``benchmarks/structured.py`` (``runs/bench-structured/<network>/dense``) is pruned by
GFS to 25% of its MACs (50 candidates, 128-image minibatches, no fine-tuning, 1 thread), with uniform widths and
with learned widths (the loss curves, then the selection at the learned widths), in turn, ``--repeats`` times.
The ratio of the fastest runs is the issue's target (learned ≤ 2× uniform). Run it on a quiet machine::

    PYTHONPATH=src OMP_NUM_THREADS=1 .venv/bin/python benchmarks/selection_cost.py --networks resnet20

Results: ``benchmarks/results/selection_cost.json``; a run replaces the networks it times and keeps the others.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import netsift  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--networks", nargs="+", default=["resnet20"])
    p.add_argument("--macs", type=float, default=0.25)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--work", default=str(ROOT / "runs" / "bench-structured"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "selection_cost.json"))
    p.add_argument("--note", default="")
    args = p.parse_args(argv)
    out = Path(args.out)
    previous = json.loads(out.read_text()) if out.exists() else {}
    if previous and previous.get("macs") != args.macs:
        p.error(f"{out} holds timings at {previous.get('macs')} of the MACs, not {args.macs}: give another --out")
    import torch

    torch.set_num_threads(1)
    runs: dict = {}
    for net in args.networks:
        for _ in range(args.repeats):
            for widths in ("uniform", "learned"):  # interleaved
                print(f"{net} {widths}: selecting", flush=True)  # progress lines (stderr) follow; a run is ~20 min
                r = netsift.prune(str(Path(args.work) / net / "dense"), method="gfs", macs=args.macs, widths=widths,
                                  finetune_epochs=0, latency_threads=None)
                runs.setdefault(net, {}).setdefault(widths, []).append(
                    {"selection_s": r.selection_s, "macs_fraction": r.macs_fraction,
                     "test_acc_selected": r.test_acc_selected})
                print(net, widths, f"{r.selection_s:.1f} s", f"{r.test_acc_selected:.4f}", flush=True)
    ratios = {net: min(x["selection_s"] for x in d["learned"]) / min(x["selection_s"] for x in d["uniform"])
              for net, d in runs.items()}
    for net, ratio in ratios.items():
        print(f"{net}: learned / uniform selection time = {ratio:.2f}")
    # the networks not timed this time keep their figures (a run on one network used to drop the others)
    notes = previous.get("notes") or {n: previous.get("note", "") for n in previous.get("runs", {})}
    out.write_text(json.dumps({"macs": args.macs, "threads": 1, "candidates": 50,
                               "notes": {**notes, **{n: args.note for n in runs}},
                               "runs": {**previous.get("runs", {}), **runs},
                               "ratio": {**previous.get("ratio", {}), **ratios}}, indent=1) + "\n")


if __name__ == "__main__":
    main()
