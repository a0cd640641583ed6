"""Coverage of timm's classification models: prune, save, load back without the pruning code, run.

The models tried: for every timm model module (architecture family, ``timm.list_modules()``), its smallest
model that fits this CPU (at most ``--max-params`` parameters with a 10-class head, counted on PyTorch's meta
device; the families whose smallest model is larger are listed as cut for size). Each goes through
``round_trip`` of ``tests/prune_roundtrip.py`` (``timm:<name>``, random weights, nothing downloaded): channel
groups from Torch-Pruning's dependency graph, a 50% MACs budget, selection, physical removal, ``save_model`` with
the module manifest, ``load_model`` and a forward pass whose output must equal the pruned network's. Each
(model, method) runs in its own process with a time limit; a refusal is one ``NetsiftError`` line, anything else
(a raw exception, a timeout) is a failure. Inputs are 32 px, or the first of 64, 96, 128, 160, 224 px and the model's
own input size it can be built for and run at; selection data are random tensors. Every channel group left whole is counted with
its reason.

    PYTHONPATH=src OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/timm_coverage.py            # l1
    PYTHONPATH=src OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/timm_coverage.py --methods gfs \\
        --models representative

Results go to ``benchmarks/results/timm_coverage.json`` (one record per run, merged across invocations; the
family list with every model's parameter count in ``timm_families.json``) and ``timm_coverage.md`` (the table).
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
SIZES = (32, 64, 96, 128, 160, 224)
REPRESENTATIVE = ("resnet18", "mobilenetv3_small_100", "efficientnet_b0", "vit_tiny_patch16_224", "convnext_atto",
                  "regnetx_002", "resnext26ts", "ghostnet_100")


def _count_params(name: str) -> int | str:
    """Parameters of timm's ``name`` with a 10-class head (meta device: no memory), or why it cannot be built."""
    import warnings

    import timm
    import torch

    warnings.filterwarnings("ignore")
    try:
        with torch.device("meta"):
            try:
                m = timm.create_model(name, pretrained=False, num_classes=10, img_size=32)
            except TypeError as e:
                if "img_size" not in str(e):
                    raise
                m = timm.create_model(name, pretrained=False, num_classes=10)
        return sum(p.numel() for p in m.parameters())
    except Exception as e:  # noqa: BLE001 - a model timm cannot build here is recorded, not fatal
        return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"


def families(path: Path, max_params: int) -> dict:
    """``{module: {"models": {name: params or error}, "pick": name or None}}``, cached in ``path``."""
    import timm

    known = json.loads(path.read_text()) if path.exists() else {}
    for module in timm.list_modules():
        entry = known.setdefault(module, {"models": {}})
        for name in timm.list_models(module=module):
            if name not in entry["models"]:
                entry["models"][name] = _count_params(name)
                path.write_text(json.dumps(known, indent=1))
        sized = sorted((p, n) for n, p in entry["models"].items() if isinstance(p, int) and not n.startswith("test_"))
        entry["smallest"] = sized[0][1] if sized else None
        entry["pick"] = sized[0][1] if sized and sized[0][0] <= max_params else None
    path.write_text(json.dumps(known, indent=1))
    return known


def worker(name: str, method: str, candidates: int) -> None:
    """Run one model in this process (the first input size it takes) and print one JSON line."""
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]
    from netsift.errors import NetsiftError
    from netsift.models import build_for
    from prune_roundtrip import round_trip

    t0, c0 = time.perf_counter(), time.process_time()
    size, model, why = None, None, None
    import timm

    default = timm.models.get_pretrained_cfg(name)
    own = default.input_size[-1] if default is not None and getattr(default, "input_size", None) else 224
    for size in dict.fromkeys((*SIZES, own)):
        try:
            model = build_for(f"timm:{name}", (3, size, size), 10, seed=0)
            break
        except NetsiftError as e:
            why = str(e)

    def trip() -> dict:
        if model is None:
            raise NetsiftError(why or "cannot be built")
        return round_trip(f"timm:{name}", 3, size, 10, method=method, candidates=candidates, model=model,
                          explain=True)

    r = attempt(trip, t0, c0, model=name, method=method, image_size=size)
    print("RESULT " + json.dumps(r), flush=True)


def run_one(name: str, method: str, timeout: float, candidates: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, method, str(candidates)]
    return run_worker(cmd, timeout, {"model": name, "method": method})


def _missed(records: list[dict]) -> str:
    """Which passes land off the MACs budget by more than 1% of it (netsift says so: ``budget_missed``)."""
    from netsift.pipelines.prune import budget_missed
    from netsift.selection import PruneConfig

    off = sorted(f"{r['model']} {r['macs_fraction']:.3f}" for r in records if r["status"] == "pass"
                 and budget_missed(PruneConfig(method=r["method"], macs=r["target"]), r["macs_fraction"], None))
    return (f"MACs budget met within 1% by {sum(r['status'] == 'pass' for r in records) - len(off)} of the passes"
            + (f"; off by more: {', '.join(off)}." if off else "."))


def write_table(records: list[dict], fams: dict, max_params: int, path: Path) -> None:
    import timm

    l1 = [r for r in records if r["method"] == "l1"]
    passed = sum(1 for r in l1 if r["status"] == "pass")
    cut = sorted(f"{m} ({e['smallest']}: {fams[m]['models'][e['smallest']] / 1e6:.0f} M)" if e.get("smallest")
                 else f"{m} (cannot be built)" for m, e in fams.items() if not e.get("pick"))
    lines = ["# timm classification models: prune, save, load back, run", "",
             f"timm {timm.__version__}, {len(fams)} model families (`timm.list_modules()`); the smallest model of "
             f"each family up to {max_params / 1e6:.0f} M parameters is tried (timm's `test_*` models left out). **{passed}/{len(l1)}** pass end to "
             f"end with l1 at a 50% MACs budget ({100 * passed / max(1, len(l1)):.1f}%; random weights, small "
             "inputs).", "",
             f"Cut for size or not buildable ({len(cut)}): {', '.join(cut) or 'none'}.", "",
             _missed(l1), "",
             f"Channel groups left whole over every run: {whole(records)}; each one is listed with its reason "
             "(layers, channels) in the records: none in silence.", ""]
    for method in sorted({r["method"] for r in records} - {"l1"}):
        mine = [r for r in records if r["method"] == method]
        ok = [r["model"] for r in mine if r["status"] == "pass"]
        bad = sorted(f"{r['model']} ({r['status']})" for r in mine if r["status"] != "pass")
        lines.append(f"- {method}: {len(ok)}/{len(mine)} pass" + (f"; not: {', '.join(bad)}" if bad else "") + ".")
    lines += ["", *header(load_back=False)]
    lines += [row(r, load_back=False) for r in sorted(records, key=lambda r: (r["model"], r["method"]))]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    sys.path.insert(0, str(ROOT / "src"))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", nargs=3, metavar=("MODEL", "METHOD", "CANDIDATES"), help=argparse.SUPPRESS)
    ap.add_argument("--models", default="families", help="comma-separated timm names, 'families' (the smallest "
                    "model of each family that fits) or 'representative' (the GFS set)")
    ap.add_argument("--methods", default="l1", help="comma-separated methods (l1, taylor, bn-scale, random, gfs, "
                    "backward)")
    ap.add_argument("--max-params", type=float, default=60e6, help="largest model tried (parameters)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per (model, method)")
    ap.add_argument("--candidates", type=int, default=4, help="gfs/backward: candidates per greedy step")
    ap.add_argument("--redo", action="store_true", help="rerun (model, method) pairs already in the results")
    ap.add_argument("--out", default=str(RESULTS / "timm_coverage.json"))
    args = ap.parse_args()
    if args.worker:
        name, method, cands = args.worker
        worker(name, method, int(cands))
        return
    fams = families(RESULTS / "timm_families.json", int(args.max_params))
    picks = [e["pick"] for e in fams.values() if e.get("pick")]
    names = {"families": picks, "representative": list(REPRESENTATIVE)}.get(args.models, args.models.split(","))
    out = Path(args.out)
    records = json.loads(out.read_text()) if out.exists() else []
    records = [r for r in records if r["model"] in set(picks) | set(REPRESENTATIVE) | set(names)]
    records = sweep(names, args.methods.split(","), records, out, args.redo,
                    lambda n, m: run_one(n, m, args.timeout, args.candidates),
                    lambda recs: write_table(recs, fams, int(args.max_params), out.with_suffix(".md")), width=32)
    write_table(records, fams, int(args.max_params), out.with_suffix(".md"))  # also when nothing was left to run


if __name__ == "__main__":
    main()
