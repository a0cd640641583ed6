"""Experiment: cheaper GFS forward curves (half minibatch, candidate cap), ResNet-20 / VGG11 at 25% MACs.

Run (stop 27, with the stop-26 curves in src/): python cheaper_curves.py NETWORK VARIANT,... SEED,...
(variants: uniform, base, half, halfcap, replay, halfreplay). Needs the dense runs of benchmarks/structured.py.
The landed design is halfcap; to rerun the others against it, start from the stop-26 curves.py."""
import json, math, sys, time
from pathlib import Path
ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "src"))
import torch
torch.set_num_threads(1)
import netsift
from netsift.config import DataConfig, TrainConfig
from netsift.rundir import load_model
from netsift.selection import finetune_defaults
import netsift.selection.gfs as G
import netsift.selection.curves as C
from netsift.selection.steps import Step
from netsift.selection.masking import candidate_masks

V = {"half": False, "cap": False, "replay": False}
ORDERS = {}

def forward_curve(ctx, gi, flat=C.FLAT, patience=C.PATIENCE):
    n = ctx.groups[gi].size
    chosen, curve = [], [float("nan")] * (n + 1)
    calm, done = 0, False
    for step in ctx.steps(gi, lambda: 0 if done or len(chosen) >= n else 1):
        if V["half"]:
            h = (len(step.x) + 1) // 2
            step = Step(step.stream, step.gi, step.x[:h], step.y[:h],
                        None if step.prefix is None else [p[:h] for p in step.prefix], step.left)
        pool = sorted(set(range(n)) - set(chosen))
        k = ctx.n_candidates(gi, len(pool))
        if V["cap"]:
            k = min(k, max(8, -(-n // 4)))
        cands = ctx.sample(pool, k)
        scores, whole, empty = C._score(ctx, step, candidate_masks(n, chosen, add=cands), n, empty=not chosen)
        if not chosen:
            curve[0] = empty - whole
        best = int(torch.argmin(scores))
        chosen.append(cands[best])
        ctx.masker.set_kept(gi, chosen)
        gap = float(scores[best]) - whole
        curve[len(chosen)] = gap
        calm = calm + 1 if gap <= flat * abs(whole) else 0
        done = calm >= patience
    ctx.masker.set(gi, None)
    ORDERS[gi] = list(chosen)
    k = len(chosen)
    for j in range(k + 1, n + 1):
        curve[j] = curve[k] * (n - j) / (n - k)
    curve[n] = 0.0
    return curve

G.forward_curve = forward_curve


class Replay(G.Forward):
    """The curve's greedy order, one channel per step (no search): conditioning on earlier groups is lost."""

    def candidates(self):
        order = ORDERS[self.gi]
        rest = [c for c in order if c not in self.chosen] + [c for c in range(self.n)
                                                             if c not in self.chosen and c not in order]
        return rest[:1], candidate_masks(self.n, self.chosen, add=rest[:1])


def select(ctx, replacement=False):
    ctx.learn_widths(lambda: C.curves_of(ctx, forward_curve))
    return G.greedy_groups(ctx, Replay if V["replay"] else G.Forward)


G.select = select
NETS = {"resnet20": DataConfig("fashion-mnist", train_subset=6000, val_fraction=0.05),
        "vgg11": DataConfig("fashion-mnist", train_subset=20000, val_fraction=0.05)}
out = Path("/tmp/curvexp2")  # run folders and results.jsonl
net = sys.argv[1]
dense = ROOT / f"runs/bench-structured/{net}/dense"
for seed in [int(s) for s in sys.argv[3].split(",")]:
    for name in sys.argv[2].split(","):
        V.update(half="half" in name, cap="cap" in name, replay="replay" in name)
        folder = out / f"{net}-{name}-s{seed}"
        if (folder / "done.json").exists():
            continue
        widths = "uniform" if name == "uniform" else "learned"
        netsift.prune(dense, method="gfs", macs=0.25, widths=widths, finetune_epochs=0, seed=seed, out=folder,
                      overwrite=True, candidates=50, select_batch=128, latency_threads=None)
        sel = json.loads((folder / "result.json").read_text())
        line = dict(net=net, variant=name, seed=seed, widths=[g["kept"] for g in sel["groups"]],
                    macs_fraction=round(sel["macs_fraction"], 4), selection_s=round(sel["selection_s"], 1),
                    sel_test=sel["test_acc_selected"])
        if widths == "learned":
            ft = TrainConfig(epochs=5, **finetune_defaults())
            netsift.train(load_model(folder)[0], NETS[net], ft, seed=seed, data_seed=sel["data_seed"],
                          out=folder / "ft5", overwrite=True, latency_threads=None)
            r = json.loads((folder / "ft5" / "result.json").read_text())
            line.update(ft5_test=r["test_acc"], ft5_val=round(r["val_acc"], 4))
        print(json.dumps(line), flush=True)
        (folder / "done.json").write_text(json.dumps(line))
        with open(out / "results.jsonl", "a") as fh:
            fh.write(json.dumps(line) + "\n")
