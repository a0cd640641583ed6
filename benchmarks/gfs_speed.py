"""GFS scoring speed: how close candidate scoring runs to the machine's dense-forward throughput.

For each network (zoo models on 1×28×28, batch-norm statistics calibrated on random images, affine parameters
randomised), GFS runs on a fixed sequence of random 128-image minibatches with the published 50 candidates
per step: either a few greedy steps per channel group (``--steps``), or a full selection to a MACs budget
(``--macs``). Reported per network:

- selection wall time (minus the interleaved dense timings), the scorer's own time, and Taylor's wall time on
  the same network and budget (``taylor.select``, 8 minibatches);
- the MACs the scorer executed (``BatchedScorer.stats``): the suffix passes (the first consumers' shared
  products plus every candidate's own work), the candidate-independent prefix, and what plain suffix passes
  would have executed;
- the dense forward's MACs/s at the same batch, timed in the same process, interleaved with the scoring (one
  dense forward of an unmasked copy of the network before every greedy step; median);
- **efficiency** = (suffix MACs / scoring seconds) / (dense MACs/s): the share of the machine's real
  throughput that scoring achieves (also with each group's scoring time weighed against the dense forwards
  timed during that group's steps: the load of a shared machine drifts during a long run); and the compute
  bound suffix MACs / dense MACs/s next to the wall time;
- the scorer before this change (``src/netsift/selection/scoring.py`` at ``--before-commit``, loaded from git;
  up to commit 2901c5e that file held the whole scorer, later ones import its parts from the current tree)
  on the same network, minibatches and candidate subsets, in the same process right after: its wall time (with
  its own interleaved dense timings) and whether it selects the same channels. ``--before-file`` instead takes
  selections recorded by ``--record`` (runs with the old code checked out) for runs too long to repeat.

    PYTHONPATH=src .venv/bin/python benchmarks/gfs_speed.py           # the table
    PYTHONPATH=src .venv/bin/python benchmarks/gfs_speed.py --models vgg11:0.25 --macs 0.5 --before-file F \\
        --out benchmarks/results/gfs_speed_vgg11_full.json            # a full selection

Timings come from one process on 1 thread; on a shared machine they are noisy (the dense baseline is
interleaved so that both see the same load).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from netsift.models import build_model  # noqa: E402
from netsift.selection import gfs, taylor  # noqa: E402
from netsift.selection.base import SelectionContext  # noqa: E402
from netsift.selection.budget import MacsModel, allocate  # noqa: E402
from netsift.selection.groups import build_graph, find_groups  # noqa: E402

DEFAULT_MODELS = "resnet20:0.5,vgg11:0.5,mobilenetv2:0.5"


def make_model(name: str, width: float, shape, seed: int) -> nn.Module:
    """A zoo network with trained-looking batch norms: statistics of random images, random affine parameters."""
    torch.manual_seed(seed)
    model = build_model(name, shape[0], shape[1], 10, width)
    g = torch.Generator().manual_seed(seed + 100)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
            m.weight.data.uniform_(0.5, 1.5, generator=g)
            m.bias.data.uniform_(-0.2, 0.2, generator=g)
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(64, *shape, generator=g))
    return model.eval()


def make_batches(n: int, batch: int, shape, seed: int):
    g = torch.Generator().manual_seed(seed + 1)
    return [(torch.randn(batch, *shape, generator=g), torch.randint(0, 10, (batch,), generator=g)) for _ in range(n)]


def widths_for(model, groups, shape, args) -> list[int]:
    if args.macs:
        return allocate(MacsModel(model, groups, shape), args.macs)
    return [min(args.steps, g.size) for g in groups]


class Interleaved:
    """Wraps the scorer: before each greedy step, times one forward pass of the dense (unmasked) copy."""

    def __init__(self, inner, dense: nn.Module | None):
        self.inner, self.dense, self.dense_s, self.dense_group, self.scoring_s = inner, dense, [], [], 0.0

    def score(self, gi, masks, x, y):
        if self.dense is not None:
            with torch.no_grad():
                t = time.perf_counter()
                self.dense(x)
                self.dense_s.append(time.perf_counter() - t)
                self.dense_group.append(gi)
        t = time.perf_counter()
        out = self.inner.score(gi, masks, x, y)
        self.scoring_s += time.perf_counter() - t
        return out


def before_scorer_class(commit: str):
    """``BatchedScorer`` of ``src/netsift/selection/scoring.py`` at ``commit`` (a module of its own)."""
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:src/netsift/selection/scoring.py"],
                         check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "scoring_before.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("netsift.selection.scoring_before", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod.BatchedScorer


def setup(name, width, shape, args):
    """The network (and a dense copy), its graph and channel groups, the widths to reach and the minibatches."""
    model = make_model(name, width, shape, args.seed)
    dense = copy.deepcopy(model)
    graph = build_graph(model, shape)
    groups = find_groups(model, shape, graph)
    widths = widths_for(model, groups, shape, args)
    batches = make_batches(sum(widths) + 1, args.batch, shape, args.seed)
    return model, dense, graph, groups, widths, batches


def run_before(name, width, shape, args, scorer_cls):
    """GFS with the scorer before this change on the same network, minibatches and candidates."""
    model, dense, graph, groups, widths, batches = setup(name, width, shape, args)
    it = iter(batches)
    ctx = SelectionContext(model, groups, graph, shape, lambda: next(it), batches[0], widths=widths,
                           candidates=args.candidates, seed=args.seed, progress=False,
                           bn_batch_stats=args.bn_batch_stats)
    ctx.scorer = Interleaved(scorer_cls(model, ctx.masker, ctx.max_batch, args.bn_batch_stats), dense)
    t = time.perf_counter()
    sel = gfs.select(ctx)
    wall = time.perf_counter() - t - sum(ctx.scorer.dense_s)
    ctx.masker.remove()
    return {"kept": [sel.kept[g.name] for g in groups], "wall_s": wall,
            "dense_forward_s_median": statistics.median(ctx.scorer.dense_s)}


def run_gfs(name, width, shape, args, record_only=False):
    model, dense, graph, groups, widths, batches = setup(name, width, shape, args)
    it = iter(batches)
    kwargs = dict(widths=widths, candidates=args.candidates, seed=args.seed, progress=False,
                  bn_batch_stats=args.bn_batch_stats)
    ctx = SelectionContext(model, groups, graph, shape, lambda: next(it), batches[0], **kwargs)
    if record_only:  # works with the scorer before this change too
        t = time.perf_counter()
        sel = gfs.select(ctx)
        return {"kept": [sel.kept[g.name] for g in groups], "wall_s": time.perf_counter() - t}
    scorer = ctx.scorer
    if args.mode:
        scorer.mode = args.mode
    ctx.scorer = Interleaved(scorer, dense)
    t = time.perf_counter()
    sel = gfs.select(ctx)
    wall = time.perf_counter() - t - sum(ctx.scorer.dense_s)
    ctx.masker.remove()
    # Taylor on the same network (unmasked), same budget and minibatches
    model_t = copy.deepcopy(dense)
    it_t = itertools.cycle(batches)  # Taylor may need more minibatches than the greedy steps
    ctx_t = SelectionContext(model_t, find_groups(model_t, shape, build_graph(model_t, shape)),
                             build_graph(model_t, shape), shape, lambda: next(it_t), batches[0], **kwargs)
    t = time.perf_counter()
    taylor.select(ctx_t)
    taylor_s = time.perf_counter() - t
    ctx_t.masker.remove()
    from netsift.measure import count_macs

    dense_macs = count_macs(dense, shape) * args.batch
    dense_s = statistics.median(ctx.scorer.dense_s)
    st = scorer.stats
    dense_rate = dense_macs / dense_s
    # the load of a shared machine drifts during a long run: also compare each group with the dense forwards
    # timed during that group's own steps
    local = bound_local = 0.0
    for gi, gst in scorer.group_stats.items():
        times = [d for d, g in zip(ctx.scorer.dense_s, ctx.scorer.dense_group) if g == gi]
        rate = dense_macs / statistics.median(times)
        local += gst.seconds * rate
        bound_local += gst.suffix_macs / rate
    row = {
        "model": name, "width": width, "groups": len(groups), "widths": widths,
        "steps": sum(widths), "candidates_scored": st.candidates,
        "selection_wall_s": wall, "scoring_s": ctx.scorer.scoring_s, "taylor_wall_s": taylor_s,
        "dense_macs_per_batch": dense_macs, "dense_forward_s_median": dense_s,
        "dense_forward_s_quartiles": statistics.quantiles(ctx.scorer.dense_s, n=4) if len(ctx.scorer.dense_s) > 1
        else [dense_s] * 3,
        "dense_macs_per_s": dense_rate,
        "stats": st.as_dict(),
        "suffix_macs_per_s": st.suffix_macs / ctx.scorer.scoring_s,
        "efficiency": st.suffix_macs / ctx.scorer.scoring_s / dense_rate,
        "efficiency_group_local": st.suffix_macs / local,
        "efficiency_all_macs_wall": (st.total_macs) / wall / dense_rate,
        "compute_bound_s": st.suffix_macs / dense_rate,
        "wall_over_bound": wall / (st.suffix_macs / dense_rate),
        "compute_bound_group_local_s": bound_local,
        "wall_over_bound_group_local": wall / bound_local,
        "plain_compute_bound_s": st.plain_suffix_macs / dense_rate,
        "kept": [sel.kept[g.name] for g in groups],
        "per_group": [{"group": g.name, "size": g.size, "kept": widths[gi],
                       "dense_forward_s_median": statistics.median(
                           [d for d, k in zip(ctx.scorer.dense_s, ctx.scorer.dense_group) if k == gi]
                           or [float("nan")]),
                       **{k: v for k, v in scorer.group_stats.get(gi, type(st)()).as_dict().items()
                          if k in ("candidates", "seconds", "suffix_macs", "plain_suffix_macs", "path")}}
                      for gi, g in enumerate(groups)],
    }
    return row


def key_of(name, width, args) -> str:
    budget = f"macs{args.macs}" if args.macs else f"steps{args.steps}"
    return (f"{name}:{width}/{args.image_size}/{budget}/b{args.batch}/c{args.candidates}/s{args.seed}/"
            f"{'bnstats' if args.bn_batch_stats else 'running'}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=DEFAULT_MODELS, help="name:width,... (zoo models)")
    p.add_argument("--image-size", type=int, default=28)
    p.add_argument("--batch", type=int, default=128, help="greedy minibatch (published 128)")
    p.add_argument("--candidates", type=int, default=50, help="candidates per step (published 50)")
    p.add_argument("--steps", type=int, default=3, help="greedy steps per group (without --macs)")
    p.add_argument("--macs", type=float, default=None, help="full selection to this MACs fraction instead")
    p.add_argument("--bn-batch-stats", action=argparse.BooleanOptionalAction, default=True,
                   help="score with per-candidate batch statistics (default on: the better variant)")
    p.add_argument("--mode", choices=["auto", "graph", "hooks"], default=None, help="scorer path")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--record", default=None, help="only run GFS and add the selections to this JSON file "
                                                  "(runs with the scorer before this change too)")
    p.add_argument("--before-commit", default="230915b",
                   help="run the scorer of this commit too (the last one before the graph path); '' to skip")
    p.add_argument("--before-file", default=None,
                   help="selections recorded with --record by the scorer before this change (used where present, "
                        "instead of running it)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gfs_speed.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    shape = (1, args.image_size, args.image_size)
    models = [(m.split(":")[0], float(m.split(":")[1]) if ":" in m else 0.5) for m in args.models.split(",")]
    if args.record:
        path = Path(args.record)
        rec = json.loads(path.read_text()) if path.exists() else {}
        for name, width in models:
            r = run_gfs(name, width, shape, args, record_only=True)
            rec[key_of(name, width, args)] = r
            print(f"{key_of(name, width, args)}: {r['wall_s']:.1f} s", flush=True)
            path.write_text(json.dumps(rec, indent=1) + "\n")
        return 0
    recorded = json.loads(Path(args.before_file).read_text()) if args.before_file else {}
    scorer_cls = before_scorer_class(args.before_commit) if args.before_commit else None
    rows = []
    for name, width in models:
        row = run_gfs(name, width, shape, args)
        b, source = recorded.get(key_of(name, width, args)), f"recorded in {args.before_file}"
        if b is None and scorer_cls is not None:
            b = run_before(name, width, shape, args, scorer_cls)
            source = f"scorer at {args.before_commit}, same process"
        row["same_as_before"] = None if b is None else b["kept"] == row["kept"]
        row["before"] = None if b is None else {"source": source, "wall_s": b["wall_s"],
                                                "dense_forward_s_median": b.get("dense_forward_s_median")}
        rows.append(row)
        print(f"{name} x{width}: selection {row['selection_wall_s']:.1f} s (before: "
              f"{'-' if b is None else round(b['wall_s'], 1)} s), efficiency {row['efficiency']:.2f}, "
              f"same as before: {row['same_as_before']}", flush=True)
    result = {"input_shape": list(shape), "batch": args.batch, "candidates_per_step": args.candidates,
              "steps_per_group": None if args.macs else args.steps, "macs": args.macs,
              "bn_batch_stats": args.bn_batch_stats, "threads": args.threads, "seed": args.seed,
              "command": "benchmarks/gfs_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "torch": torch.__version__, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print()
    print(table(rows))
    return 0 if all(r["same_as_before"] is not False for r in rows) else 1


def speedup(r) -> str:
    """Wall-time speed-up over the scorer before this change; normalised by the dense forward's time in each run
    (the load of a shared machine differs between runs) where the earlier run timed it."""
    b = r["before"]
    if b is None:
        return "–"
    raw = b["wall_s"] / r["selection_wall_s"]
    if b.get("dense_forward_s_median"):
        return f"×{raw:.1f} (×{raw * r['dense_forward_s_median'] / b['dense_forward_s_median']:.1f})"
    return f"×{raw:.1f} (not timed)"


def table(rows) -> str:
    head = ("| network | steps | candidates | GFS selection s (before) | Taylor s | suffix GMACs (plain) | "
            "dense GMAC/s | scoring suffix GMAC/s | efficiency (group-local) | bound s | wall / bound (group-local) | "
            "same channels | speed-up vs before (dense-normalised) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        st = r["stats"]
        before = f" ({r['before']['wall_s']:.1f})" if r["before"] is not None else ""
        lines.append(
            f"| {r['model']} ×{r['width']} | {r['steps']} | {r['candidates_scored']} | "
            f"{r['selection_wall_s']:.1f}{before} | {r['taylor_wall_s']:.1f} | "
            f"{st['suffix_macs'] / 1e9:.1f} ({st['plain_suffix_macs'] / 1e9:.1f}) | "
            f"{r['dense_macs_per_s'] / 1e9:.1f} | "
            f"{r['suffix_macs_per_s'] / 1e9:.1f} | **{r['efficiency']:.2f}** ({r['efficiency_group_local']:.2f}) | "
            f"{r['compute_bound_s']:.1f} | {r['wall_over_bound']:.2f} ({r['wall_over_bound_group_local']:.2f}) | "
            f"{r['same_as_before']} | {speedup(r)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
