"""Experiment: learned-width GFS on ResNet-20 x0.5 at 25% MACs with a width floor / cost-free allocation.

Run: python floor_and_allocation.py VARIANT,... SEED,... (variants: base, floor25, nocost). Needs the
ResNet-20 dense run of benchmarks/structured.py. Measured with the stop-26 (full) curves."""
import inspect, json, math, sys, time
from pathlib import Path
ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "src"))
import torch
torch.set_num_threads(1)
import netsift
from netsift.config import DataConfig, TrainConfig
from netsift.rundir import load_model
from netsift.selection import finetune_defaults
import netsift.selection.widths as W
import netsift.selection.gfs as G

ORIG = W.allocate_learned
src = inspect.getsource(ORIG)
src = src.replace("if gi in fixed or new < steps[gi]:", "if gi in fixed or new < max(steps[gi], FLOOR(groups[gi].size)):")
src = src.replace("return _nudge(", "return _nudge2(")
assert "FLOOR(groups" in src
ns = dict(vars(W))
nsrc = inspect.getsource(W._nudge).replace("def _nudge(", "def _nudge2(").replace("_moves(", "_moves2(")
msrc = inspect.getsource(W._moves).replace("def _moves(", "def _moves2(").replace(
    "not steps[gi] <= new <= g.size", "not max(steps[gi], FLOOR(g.size)) <= new <= g.size")
assert "FLOOR(g.size)" in msrc
VARIANT = {"floor": 0.0, "per_cost": True}
ns["FLOOR"] = lambda n: math.ceil(VARIANT["floor"] * n)
exec(msrc, ns); exec(nsrc, ns); exec(src, ns)
PATCHED = ns["allocate_learned"]
def alloc(model, curves, f, round_to=1, fixed=None, per_cost=True):
    return PATCHED(model, curves, f, round_to, fixed, VARIANT["per_cost"] if per_cost else per_cost)
W.allocate_learned = alloc

CACHE = {}
SEED = [0]
orig_curves = G.curves_of
def cached(ctx, curve):
    f = Path(f"/tmp/floorexp/curves_s{SEED[0]}.json")
    if f.exists():
        return json.loads(f.read_text())
    c = orig_curves(ctx, curve)
    f.write_text(json.dumps(c))
    return c
G.curves_of = cached

dense = ROOT / "runs/bench-structured/resnet20/dense"
data = DataConfig("fashion-mnist", train_subset=6000, val_fraction=0.05)
out = Path("/tmp/floorexp")
for seed in [int(s) for s in sys.argv[2].split(",")]:
    for name in sys.argv[1].split(","):
        SEED[0] = seed
        VARIANT.update({"base": {}, "floor25": {"floor": 0.25}, "floor375": {"floor": 0.375},
                        "nocost": {"per_cost": False}}.get(name, {}))
        if name == "base": VARIANT.update(floor=0.0, per_cost=True)
        if name.startswith("floor"): VARIANT["per_cost"] = True
        if name == "nocost": VARIANT["floor"] = 0.0
        folder = out / f"{name}-s{seed}"
        if (folder / "ft5" / "result.json").exists():
            continue
        t = time.time()
        netsift.prune(dense, method="gfs", macs=0.25, widths="learned", finetune_epochs=0, seed=seed, out=folder,
                      overwrite=True, candidates=50, select_batch=128, latency_threads=None)
        sel = json.loads((folder / "result.json").read_text())
        ft = TrainConfig(epochs=5, **finetune_defaults())
        netsift.train(load_model(folder)[0], data, ft, seed=seed, data_seed=sel["data_seed"], out=folder / "ft5",
                      overwrite=True, latency_threads=None)
        r = json.loads((folder / "ft5" / "result.json").read_text())
        line = dict(variant=name, seed=seed, widths=[(g["kept"], g["size"]) for g in sel["groups"]],
                    macs_fraction=sel["macs_fraction"], sel_test=sel["test_acc_selected"], sel_val=sel.get("val_acc"),
                    ft5_test=r["test_acc"], ft5_val=r["val_acc"], s=round(time.time() - t))
        print(json.dumps(line), flush=True)
        with open(out / "results.jsonl", "a") as fh:
            fh.write(json.dumps(line) + "\n")
