"""Does the pruned network compute what the selection scored? ``removal_error`` on chosen models.

For each model (``timm:<name>`` or ``tv:<name>``, random weights, nothing downloaded) at 32 px: the channel groups
and uniform widths of a 50% MACs budget, a random set of kept channels per group (seeded), the channels removed
(``remove_channels``), then ``removal_error`` — the masked dense network against the pruned one on 8 random
images, largest output difference over largest output. ``--per-group`` also prunes one group at a time and lists
the groups above 1e-4 (where a mismatch comes from). This is the check ``netsift prune`` runs on every network.

    PYTHONPATH=src .venv/bin/python benchmarks/removal_check.py                       # the default models
    PYTHONPATH=src .venv/bin/python benchmarks/removal_check.py timm:convnext_atto --per-group

Outputs ``benchmarks/results/removal_check.{md,json}`` (with the default models only).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from netsift.models import build_for  # noqa: E402
from netsift.selection import PruneConfig  # noqa: E402
from netsift.selection.pruner import REMOVAL_TOLERANCE, plan_channels  # noqa: E402
from netsift.selection.removal import removal_error, remove_channels  # noqa: E402

DEFAULT = ["timm:resnet18", "timm:ghostnet_100", "timm:convnext_atto", "timm:rdnet_tiny", "timm:lowformer_b0",
           "timm:cspnext_tiny", "timm:edgenext_xx_small", "timm:mambaout_femto", "timm:poolformer_s12"]
SHAPE = (3, 32, 32)


def check(name: str, per_group: bool, seed: int = 0) -> dict:
    """``removal_error`` of ``name`` with a random half-budget selection (and per group with ``per_group``)."""
    t0 = time.perf_counter()
    model = build_for(name, SHAPE, 10).eval()
    plan = plan_channels(model, SHAPE, PruneConfig(method="l1", macs=0.5))
    g = torch.Generator().manual_seed(seed)
    kept = {gr.name: sorted(torch.randperm(gr.size, generator=g)[:w].tolist())
            for gr, w in zip(plan.groups, plan.widths)}
    x = torch.randn(8, *SHAPE, generator=torch.Generator().manual_seed(seed))
    error = removal_error(model, remove_channels(model, SHAPE, kept, True, groups=plan.groups), plan.groups, kept,
                          True, x)
    out = {"model": name, "groups": len(plan.groups), "removal_error": error}
    if per_group:
        worst = {}
        for gr in plan.groups:
            one = {gr.name: kept[gr.name]}
            e = removal_error(model, remove_channels(model, SHAPE, one, True, groups=plan.groups), plan.groups, one,
                              True, x)
            if e is None or e > 1e-4:
                worst[gr.name] = e
        out["groups_off"] = worst
    out["wall_s"] = time.perf_counter() - t0
    return out


def _fmt(error: float | None) -> str:
    return "null" if error is None else f"{error:.2g}"


def verdict(error: float | None) -> str:
    if error is None:
        return "nothing to compare (the same outputs for every input)"
    return "exact" if error <= REMOVAL_TOLERANCE else "differs: netsift warns"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", default=DEFAULT, help="timm:<name> or tv:<name>")
    p.add_argument("--per-group", action="store_true", help="also prune one group at a time")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models:
        r = check(name, args.per_group)
        rows.append(r)
        e = r["removal_error"]
        print(f"{name}: removal_error {_fmt(e)} ({verdict(e)}), {r['groups']} groups, "
              f"{r['wall_s']:.1f} s", flush=True)
        for gname, ge in r.get("groups_off", {}).items():
            print(f"  group {gname}: {_fmt(ge)}", flush=True)
    if args.models == DEFAULT:
        lines = ["# removal_error: the pruned network against the masked one the selection scored", "",
                 f"`python benchmarks/removal_check.py`: random weights, {SHAPE[1]} px, uniform widths of a 50% MACs "
                 "budget, random kept channels (seed 0), 8 random images; torch "
                 f"{torch.__version__}. netsift warns above {REMOVAL_TOLERANCE:g}.", "",
                 "| model | groups | removal_error | verdict |", "|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['groups']} | {_fmt(r['removal_error'])} | {verdict(r['removal_error'])} |"
                  for r in rows]
        results = ROOT / "benchmarks" / "results"
        (results / "removal_check.md").write_text("\n".join(lines) + "\n")
        (results / "removal_check.json").write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
