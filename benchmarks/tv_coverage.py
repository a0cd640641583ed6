"""Coverage of torchvision's classification models: prune, save, load back without the pruning code, run.

Every model of ``torchvision.models.list_models(module=torchvision.models)`` (random weights: nothing can be
downloaded here) goes through ``round_trip`` of ``tests/prune_roundtrip.py``: ``netsift.prune`` itself on
random data (channel groups from Torch-Pruning's dependency graph, a 50% MACs budget, selection, physical
removal, measurement), ``save_model`` with the module manifest, ``load_model`` (plain modules, no pruning code)
and a forward pass whose output must equal the pruned network's. Each (model, method) runs in its own process
with a time limit; a refusal is one ``NetsiftError`` line, anything else (a raw exception, a timeout) is a
failure. Inputs are small (32 px, or the smallest size
the model takes); selection data are random tensors.

    PYTHONPATH=src OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tv_coverage.py               # l1, every model
    PYTHONPATH=src OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tv_coverage.py --methods all --models \\
        resnet18,resnet50,mobilenet_v2,mobilenet_v3_small,efficientnet_b0,regnet_y_400mf,vit_b_32

Results go to ``benchmarks/results/tv_coverage.json`` (one record per run, merged across invocations) and
``tv_coverage.md`` (the table).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from coverage_sweep import attempt, header, row, run_worker, sweep, whole

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ALL_METHODS = ("l1", "taylor", "bn-scale", "random", "gfs", "backward")
REPRESENTATIVE = ("resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "regnet_y_400mf",
                  "resnext50_32x4d", "convnext_tiny", "shufflenet_v2_x1_0", "swin_t", "vit_b_32")
# the smallest model of each torchvision family (every architecture variant the code paths differ on)
FAMILIES = ("alexnet", "convnext_tiny", "densenet121", "efficientnet_b0", "efficientnet_v2_s", "googlenet",
            "inception_v3", "maxvit_t", "mnasnet0_5", "mobilenet_v2", "mobilenet_v3_small", "regnet_x_400mf",
            "regnet_y_400mf", "resnet18", "resnet50", "resnext50_32x4d", "shufflenet_v2_x0_5", "squeezenet1_1",
            "swin_t", "swin_v2_t", "vgg11_bn", "vit_b_32", "wide_resnet50_2")
# the size each model runs at: 32 px unless it needs more (or, for ViT-H/14, a multiple of its 14 px patch);
# Swin at sizes where its windows (7x7; V2: 8x8) need little padding: at 32 px the padded attention (kept whole)
# is ~89% of the MACs and a 50% budget is out of reach
SIZES = {"alexnet": 64, "inception_v3": 75, "maxvit_t": 224, "vit_h_14": 28,
         **{f"swin_{v}": 112 for v in ("t", "s", "b")}, **{f"swin_v2_{v}": 128 for v in ("t", "s", "b")}}


def image_size(name: str) -> int:
    return SIZES.get(name, 32)


def worker(name: str, method: str, size: int, candidates: int) -> None:
    """Run one model in this process and print one JSON line."""
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]
    from prune_roundtrip import round_trip

    t0, c0 = time.perf_counter(), time.process_time()
    r = attempt(lambda: round_trip(f"tv:{name}", 3, size, 10, method=method, candidates=candidates, explain=True),
                t0, c0, exclude_explain=True, model=name, method=method, image_size=size)
    print("RESULT " + json.dumps(r), flush=True)


def run_one(name: str, method: str, timeout: float, candidates: int) -> dict:
    size = image_size(name)
    cmd = [sys.executable, __file__, "--worker", name, method, str(size), str(candidates)]
    return run_worker(cmd, timeout, {"model": name, "method": method, "image_size": size})


def _other_methods(records: list[dict]) -> list[str]:
    """One line per method other than l1: how many of the models it was run on pass."""
    lines = []
    for method in ALL_METHODS:
        mine = [r for r in records if r["method"] == method]
        if method == "l1" or not mine:
            continue
        passed = [r["model"] for r in mine if r["status"] == "pass"]
        refused = sorted(r["model"] for r in mine if r["status"] == "refused")
        failed = sorted(r["model"] for r in mine if r["status"] not in ("pass", "refused"))
        lines.append(f"- {method}: {len(passed)}/{len(mine)} of the models it was run on pass"
                     + (f"; refused up front with one line: {', '.join(refused)}" if refused else "")
                     + (f"; failed: {', '.join(failed)}" if failed else "") + ".")
    return [*lines, ""] if lines else []


def write_table(records: list[dict], path: Path) -> None:
    import torchvision

    models = torchvision.models.list_models(module=torchvision.models)
    l1 = {r["model"]: r for r in records if r["method"] == "l1"}
    passed = sum(1 for m in models if l1.get(m, {}).get("status") == "pass")
    lines = ["# torchvision classification models: prune, save, load back, run", "",
             f"torchvision {torchvision.__version__}: **{passed}/{len(models)}** models pass end to end with l1 at a "
             "50% MACs budget (random weights, small inputs; Torch-Pruning reports 77/85 over all its tasks).", "",
             f"Channel groups left whole over every run: {whole(records)}; each one is listed with its reason "
             "(layers, channels) in the records: none in silence.", "",
             *_other_methods(records), *header(load_back=True)]
    order = {m: i for i, m in enumerate(models)}
    lines += [row(r, load_back=True)
              for r in sorted(records, key=lambda r: (order.get(r["model"], 999), ALL_METHODS.index(r["method"])))]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    sys.path.insert(0, str(ROOT / "src"))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", nargs=4, metavar=("MODEL", "METHOD", "SIZE", "CANDIDATES"), help=argparse.SUPPRESS)
    ap.add_argument("--models", default="all", help="comma-separated torchvision names, 'all', 'families' (one per "
                    "family) or 'representative' (the GFS set)")
    ap.add_argument("--methods", default="l1", help=f"comma-separated methods or 'all' ({', '.join(ALL_METHODS)})")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per (model, method)")
    ap.add_argument("--candidates", type=int, default=4, help="gfs/backward: candidates per greedy step")
    ap.add_argument("--redo", action="store_true", help="rerun (model, method) pairs already in the results")
    ap.add_argument("--out", default=str(RESULTS / "tv_coverage.json"))
    args = ap.parse_args()
    if args.worker:
        name, method, size, cands = args.worker
        worker(name, method, int(size), int(cands))
        return
    import torchvision

    names = {"all": torchvision.models.list_models(module=torchvision.models), "families": list(FAMILIES),
             "representative": list(REPRESENTATIVE)}.get(args.models, args.models.split(","))
    methods = list(ALL_METHODS) if args.methods == "all" else args.methods.split(",")
    out = Path(args.out)
    records = json.loads(out.read_text()) if out.exists() else []
    sweep(names, methods, records, out, args.redo, lambda n, m: run_one(n, m, args.timeout, args.candidates),
          lambda recs: write_table(recs, out.with_suffix(".md")))


if __name__ == "__main__":
    main()
