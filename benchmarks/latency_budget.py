"""Does ``--latency F`` deliver? Prune trained networks to a fraction of their measured CPU latency and time the
result independently.

For each network (the dense runs of ``benchmarks/structured.py``: ResNet-20 x0.5 and VGG11 x0.25 on
Fashion-MNIST, MobileNetV2 x0.25 at 16 px when its dense run exists), each latency target and each widths mode,
``netsift.prune`` (L1 ranking: the selection is not what is measured here; no fine-tuning) builds the per-group
latency table, allocates the widths, corrects them against the timed pruned network, and records its own
measured fraction (``latency_budget.measured``). The pruned network is then timed again, independently, by the
measurement every run reports (``speedup_b64`` / ``speedup_b1``: dense and pruned interleaved, 1 thread): the
kept fraction is ``1 / speedup``. The issue's target: within 10% of F.

Run it on a quiet machine (pause the long benchmarks: ``kill -STOP``), 1 thread::

    PYTHONPATH=src OMP_NUM_THREADS=1 .venv/bin/python benchmarks/latency_budget.py

Results: ``benchmarks/results/latency_budget.{json,md}``. A run replaces the rows it measures again and keeps the
others, each with the note of the run that measured it; a run that measures nothing writes nothing.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import netsift  # noqa: E402

NETWORKS = ("resnet20", "vgg11", "mobilenetv2")


def one(dense: Path, target: float, widths: str, batch: int) -> dict:
    """Prune ``dense`` to ``target`` of its latency at ``batch``; what the budget and the independent timing say."""
    t0 = time.perf_counter()
    r = netsift.prune(str(dense), method="l1", latency=target, latency_batch=batch, widths=widths,
                      finetune_epochs=0, latency_threads=1, progress=False)
    speedup = r.speedup_b64 if batch == 64 else r.speedup_b1
    kept = 1 / speedup if speedup else None
    budget = r.latency_budget or {}
    return {"network": dense.parent.name, "target": target, "widths": widths, "batch": batch,
            "budget_measured": budget.get("measured"), "tries": len(budget.get("tries", [])),
            "independent_kept": kept, "error": kept / target - 1 if kept else None,
            "within_10pct": kept is not None and abs(kept / target - 1) <= 0.10,
            "macs_fraction": r.macs_fraction, "test_acc_selected": r.test_acc_selected,
            "wall_s": time.perf_counter() - t0}


def markdown(rows: list[dict]) -> str:
    lines = ["| network | batch | widths | target | budget's own timing | independent timing | error | within 10% | "
             "MACs kept |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['network']} | {r['batch']} | {r['widths']} | {r['target']:.2f} | "
                     f"{r['budget_measured']:.3f} ({r['tries']} tries) | {r['independent_kept']:.3f} | "
                     f"{r['error']:+.1%} | {'yes' if r['within_10pct'] else 'no'} | {r['macs_fraction']:.3f} |")
    ok = sum(r["within_10pct"] for r in rows)
    return "\n".join(lines) + f"\n\n{ok}/{len(rows)} within 10% of the target.\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=NETWORKS)
    p.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.7])
    p.add_argument("--widths", nargs="+", default=["uniform", "learned"], choices=["uniform", "learned"])
    p.add_argument("--batches", type=int, nargs="+", default=[64], choices=[1, 64])
    p.add_argument("--work", default=str(ROOT / "runs" / "bench-structured"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "latency_budget"))
    p.add_argument("--note", default="", help="what the machine was doing")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    rows = []
    for name in args.networks:
        dense = Path(args.work) / name / "dense"
        if not (dense / "result.json").is_file():
            print(f"skipped {name}: no dense run in {dense} (benchmarks/structured.py trains it)")
            continue
        for batch in args.batches:
            for target in args.targets:
                for widths in args.widths:
                    row = one(dense, target, widths, batch)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    out = Path(args.out)
    if not rows:
        sys.exit(f"latency_budget: nothing measured (no dense run in {args.work}); {out.with_suffix('.json')} "
                 "left as it was")
    previous = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else {}
    rows = merged_rows(previous, rows, args.note)
    setup = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__, "threads": 1,
             "method": "l1", "finetune_epochs": 0}
    notes = "\n".join(f"- {n}" for n in dict.fromkeys(r["note"] for r in rows))
    out.with_suffix(".json").write_text(json.dumps({"setup": setup, "rows": rows}, indent=1))
    out.with_suffix(".md").write_text("# --latency F: the pruned network's measured latency against F\n\n"
                                      f"{notes}\n\n" + markdown(rows))
    print(markdown(rows))


def merged_rows(previous: dict, rows: list[dict], note: str) -> list[dict]:
    """This run's rows (each with ``note``) and the previous file's rows it did not measure again, so a run on some
    networks or targets never drops the others' figures (a fresh clone has no dense run at all)."""
    key = ("network", "target", "widths", "batch")
    new = {tuple(r[k] for k in key) for r in rows}
    old_note = previous.get("setup", {}).get("note", "")
    kept = [{"note": old_note, **r} for r in previous.get("rows", []) if tuple(r[k] for k in key) not in new]
    return kept + [{**r, "note": note} for r in rows]


if __name__ == "__main__":
    main()
