"""A/B of the candidate scorer: this tree's ``BatchedScorer`` against the one of an earlier commit, call by call.

Both scorers score the same candidate masks (GFS-like: S ∪ {j}, 50 candidates, S of 4 channels) of the same
groups on the same minibatch, alternating call by call in one process (each going first every other round) so
that both see the same machine load; the time per call is the minimum over ``--repeats`` calls (the least
disturbed one), the median is kept too. The scores must be equal
bit for bit. ``--before`` names a commit whose ``src/netsift/selection/scoring.py`` held the whole scorer (up to
2901c5e; it is loaded from git as a module of its own).

    PYTHONPATH=src .venv/bin/python benchmarks/scorer_ab.py --before 2901c5e
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from gfs_speed import make_batches, make_model  # noqa: E402
from netsift.selection.groups import find_groups  # noqa: E402
from netsift.selection.masking import Masker, candidate_masks  # noqa: E402
from netsift.selection.scoring import BatchedScorer  # noqa: E402


def scorer_at(commit: str):
    """``BatchedScorer`` of ``src/netsift/selection/scoring.py`` at ``commit``."""
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:src/netsift/selection/scoring.py"],
                         check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "scoring_ab.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("netsift.selection.scoring_ab", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod.BatchedScorer


def compare(name: str, width: float, args, before_cls) -> dict:
    shape = (1, args.image_size, args.image_size)
    model = make_model(name, width, shape, 0)
    groups = find_groups(model, shape)
    x, y = make_batches(1, args.batch, shape, 0)[0]
    masker = Masker(model, groups)
    picks = list(range(0, len(groups), max(1, len(groups) // args.groups)))[:args.groups]
    rows = []
    for gi in picks:
        n = groups[gi].size
        kept = list(range(min(4, n - 1)))
        cands = [j for j in range(n) if j not in kept][:args.candidates]
        masks = candidate_masks(n, kept, add=cands)
        masker.set_kept(gi, kept)
        scorers = {"after": BatchedScorer(model, masker, bn_batch_stats=True),
                   "before": before_cls(model, masker, bn_batch_stats=True)}
        outs = {k: s.score(gi, masks, x, y) for k, s in scorers.items()}  # first calls: tracing, checks
        times: dict[str, list[float]] = {k: [] for k in scorers}
        for r in range(args.repeats):
            for k in (["after", "before"] if r % 2 else ["before", "after"]):  # either goes first as often
                s = scorers[k]
                t = time.perf_counter()
                outs[k] = s.score(gi, masks, x, y)
                times[k].append(time.perf_counter() - t)
        rows.append({"group": groups[gi].name, "candidates": len(cands), "path": scorers["after"].stats.path,
                     "after_s": min(times["after"]), "before_s": min(times["before"]),
                     "after_median_s": statistics.median(times["after"]),
                     "before_median_s": statistics.median(times["before"]),
                     "equal": bool(torch.equal(outs["after"], outs["before"]))})
        masker.set(gi, None)
    masker.remove()
    after, before = sum(r["after_s"] for r in rows), sum(r["before_s"] for r in rows)
    return {"model": f"{name}:{width}", "groups": rows, "after_s": after, "before_s": before,
            "after_over_before": after / before, "equal": all(r["equal"] for r in rows)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", default="2901c5e", help="commit of the scorer to compare with")
    p.add_argument("--models", default="resnet20:0.5,vgg11:0.25,mobilenetv2:0.25")
    p.add_argument("--image-size", type=int, default=28)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--candidates", type=int, default=50)
    p.add_argument("--groups", type=int, default=4, help="groups per network (spread input to output)")
    p.add_argument("--repeats", type=int, default=8)
    p.add_argument("--out", default=None, help="JSON file for the results")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    before_cls = scorer_at(args.before)
    results = []
    for spec in args.models.split(","):
        name, width = spec.split(":")
        r = compare(name, float(width), args, before_cls)
        results.append(r)
        print(f"{r['model']}: {r['after_s'] * 1e3:.0f} ms per round of {len(r['groups'])} calls vs "
              f"{r['before_s'] * 1e3:.0f} ms at {args.before} (x{r['after_over_before']:.3f}); scores equal bit for "
              f"bit: {r['equal']}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"before": args.before, "threads": 1, "batch": args.batch,
                                              "repeats": args.repeats, "torch": torch.__version__,
                                              "results": results}, indent=1) + "\n")
    return 0 if all(r["equal"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
