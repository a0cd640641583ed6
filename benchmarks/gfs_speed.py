"""GFS scoring speed: batched prefix-cached scoring against the plain one-forward-per-candidate reference.

Both run the same greedy selection (``netsift.selection.gfs.select``) on the same network, the same minibatch
sequence and the same candidate subsets; only the scorer differs. The reference (kept here) runs the whole
network once per candidate. The batched scorer runs the prefix below the group's consumers once per step and
the rest of the network once on K stacked copies of the minibatch. The benchmark checks that both pick the
same channels and reports candidates scored per second.

    PYTHONPATH=src .venv/bin/python benchmarks/gfs_speed.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from netsift.models import build_model  # noqa: E402
from netsift.selection import gfs  # noqa: E402
from netsift.selection.base import SelectionContext  # noqa: E402
from netsift.selection.groups import build_graph, find_groups  # noqa: E402


class ReferenceScorer:
    """One whole forward pass of the masked network per candidate (what the published code does)."""

    def __init__(self, model: nn.Module, masker):
        self.model, self.masker = model, masker

    @torch.no_grad()
    def score(self, gi: int, masks: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        old = self.masker.masks[gi]
        losses = []
        for mask in masks:
            self.masker.set(gi, mask)
            losses.append(F.cross_entropy(self.model(x), y))
        self.masker.set(gi, old)
        return torch.stack(losses)


class Counting:
    """Wraps a scorer; counts candidates and time spent per group."""

    def __init__(self, inner):
        self.inner, self.candidates, self.seconds = inner, {}, {}

    def score(self, gi, masks, x, y):
        t = time.perf_counter()
        out = self.inner.score(gi, masks, x, y)
        self.seconds[gi] = self.seconds.get(gi, 0.0) + time.perf_counter() - t
        self.candidates[gi] = self.candidates.get(gi, 0) + len(masks)
        return out


def suffix_fractions(model: nn.Module, groups, shape) -> list[float]:
    """Per group: the share of the network's MACs from its first consumer on (what each candidate must run)."""
    layers = []

    def hook(mod, inp, out):
        if isinstance(mod, nn.Conv2d):
            macs = out.numel() * mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
        else:
            macs = out.numel() * mod.in_features
        layers.append((mod, macs))

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(torch.zeros(1, *shape))
    for h in hs:
        h.remove()
    total = sum(m for _, m in layers)
    fractions = []
    for g in groups:
        consumers = {c.module for c in g.consumers}
        first = min(i for i, (mod, _) in enumerate(layers) if mod in consumers)
        fractions.append(sum(m for _, m in layers[first:]) / total)
    return fractions


def run(model: nn.Module, shape, batches, steps: int, candidates: int, reference: bool, seed: int,
        max_batch: int | None = None):
    graph = build_graph(model, shape)
    groups = find_groups(model, shape, graph)
    it = iter(batches)
    ctx = SelectionContext(model, groups, graph, shape, lambda: next(it), batches[0], widths=[steps] * len(groups),
                           candidates=candidates, seed=seed, progress=False)
    if max_batch:
        ctx.scorer.max_batch = max_batch
    scorer = Counting(ReferenceScorer(model, ctx.masker) if reference else ctx.scorer)
    ctx.scorer = scorer
    t = time.perf_counter()
    sel = gfs.select(ctx)
    wall = time.perf_counter() - t
    ctx.masker.remove()
    return sel, wall, scorer, groups


def ctx_default_max_batch() -> int:
    import dataclasses

    return next(f.default for f in dataclasses.fields(SelectionContext) if f.name == "max_batch")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--image-size", type=int, default=28)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--batch", type=int, default=128, help="greedy minibatch (published 128)")
    p.add_argument("--candidates", type=int, default=50, help="candidates per step (published 50)")
    p.add_argument("--steps", type=int, default=2, help="greedy steps per group (both implementations)")
    p.add_argument("--max-batch", type=int, default=None, help="images per stacked pass (default: the scorer's)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gfs_speed.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    shape = (args.channels, args.image_size, args.image_size)
    model = build_model(args.model, args.channels, args.image_size, 10, args.width).eval()
    for m in model.modules():  # trained-looking batch-norm statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    n_groups = len(find_groups(model, shape))
    g = torch.Generator().manual_seed(args.seed)
    batches = [(torch.randn(args.batch, *shape, generator=g), torch.randint(0, 10, (args.batch,), generator=g))
               for _ in range(args.steps * n_groups + 1)]
    fast_sel, fast_wall, fast, groups = run(model, shape, batches, args.steps, args.candidates, False, args.seed,
                                            args.max_batch)
    ref_sel, ref_wall, ref, _ = run(model, shape, batches, args.steps, args.candidates, True, args.seed)
    same = fast_sel.kept == ref_sel.kept
    n = sum(fast.candidates.values())
    fractions = suffix_fractions(model, groups, shape)
    # exact scoring must run the suffix once per candidate: the best speed-up that skipping the prefix can give
    bound = n / sum(fast.candidates.get(gi, 0) * f for gi, f in enumerate(fractions))
    rows = []
    for gi, grp in enumerate(groups):
        rows.append({"group": grp.name, "channels": grp.size, "candidates": fast.candidates.get(gi, 0),
                     "suffix_macs_fraction": fractions[gi],
                     "batched_s": fast.seconds.get(gi, 0.0), "reference_s": ref.seconds.get(gi, 0.0),
                     "speedup": ref.seconds.get(gi, 0.0) / max(fast.seconds.get(gi, 1e-9), 1e-9)})
    result = {"model": args.model, "max_batch": args.max_batch or ctx_default_max_batch(), "width": args.width, "input_shape": list(shape), "batch": args.batch,
              "candidates_per_step": args.candidates, "steps_per_group": args.steps, "threads": args.threads,
              "candidates_scored": n, "batched_wall_s": fast_wall, "reference_wall_s": ref_wall,
              "batched_candidates_per_s": n / fast_wall, "reference_candidates_per_s": n / ref_wall,
              "speedup": ref_wall / fast_wall, "prefix_skip_macs_bound": bound, "same_selection": same,
              "groups": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'group':28} {'N':>4} {'cands':>6} {'suffix':>6} {'batched s':>9} {'ref s':>8} {'speed-up':>8}")
    for r in rows:
        print(f"{r['group']:28} {r['channels']:4d} {r['candidates']:6d} {r['suffix_macs_fraction']:6.2f} "
              f"{r['batched_s']:9.2f} {r['reference_s']:8.2f} {r['speedup']:8.2f}")
    print(f"{args.model} x{args.width} {shape}, batch {args.batch}, {args.threads} thread(s): {n} candidates; "
          f"batched {n / fast_wall:.1f}/s, reference {n / ref_wall:.1f}/s, speed-up x{ref_wall / fast_wall:.2f}; "
          f"same channels selected: {same}; MACs bound of exact prefix skipping x{bound:.2f}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
