"""Structured pruning benchmark: GFS against its rivals on networks trained on Fashion-MNIST, by fine-tune budget
and by widths (uniform: every group the same kept fraction; learned: each method allocates the budget itself).

For each network (ResNet-20 x0.5, VGG11 x0.25 and MobileNetV2 x0.25 at 16 px by default) one dense network is
trained once. Then every
method prunes it to each MACs fraction with each seed (the seed drives the greedy minibatches, the candidate
subsets, the random ranking and the fine-tune) through ``netsift.prune`` with no fine-tuning: that cell's
``test_acc_selected`` is the accuracy before any fine-tuning (BN statistics re-estimated, as netsift does by
default for every method on batch-norm networks). The same selected network is then fine-tuned for each
budget in ``--finetune-epochs`` with ``netsift.train`` — what ``netsift prune --finetune-epochs K`` does after
selection — so a selection is paid once per cell. The recipe is the published one (SGD Nesterov, cosine, label
smoothing 0.1, weight decay 4e-5) but from lr 0.01, where the paper starts at 0.1. ``--finetune-lrs`` fine-tunes
each cell at other peak rates too (in ``ft<epochs>-lr<lr>``; the 0.1 the dense networks were trained with is
also "learning-rate rewinding", Renda et al. 2020): the report's second table gives each method the rate with its
best mean validation accuracy. With ``--scratch`` the architecture GFS learned is also trained from a new
random initialisation for as many epochs as dense training + the largest fine-tune budget (the paper's claim:
fine-tuning the selected subnetwork beats training it anew). Every run folder is kept and skipped when its
result.json exists, so an interrupted run continues where it stopped. The result files are rewritten from the
run folders and from the previous ``<name>.json``: a cell whose folder is gone (a fresh clone) keeps its recorded
row, and a dense network retrained there must match the recorded one or the grid stops.

``--speed`` (run it on a quiet machine) times every finished cell's pruned network against its dense network,
interleaved, at batch 1 and 64 (1 thread) and records the speed-ups in ``<name>_speed.json``; the report puts
them next to the accuracies.

    PYTHONPATH=src .venv/bin/python benchmarks/structured.py                # resumable; see --help for the grid
    PYTHONPATH=src .venv/bin/python benchmarks/structured.py --quick        # smoke test: a few minutes, *_quick.*
    PYTHONPATH=src .venv/bin/python benchmarks/structured.py --report       # tables and plot from finished cells

Outputs in ``benchmarks/results/``: ``<name>.csv`` (one row per cell and budget), ``<name>.json`` (setup, dense
networks, cells, per-method summary), ``<name>.md`` (mean ± std tables) and ``<name>.png`` (accuracy against MACs
per fine-tune budget); ``<name>`` is ``structured_widths`` (``--name`` changes it).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import netsift  # noqa: E402
from netsift.config import DataConfig, TrainConfig  # noqa: E402
from netsift.data import load_bundle  # noqa: E402
from netsift.measure import measure  # noqa: E402
from netsift.rundir import load_model  # noqa: E402
from netsift.selection import METHODS, finetune_defaults  # noqa: E402

NETWORKS = {
    # name: architecture, width, training subset, dense epochs (CPU budget; the VGG11 setting)
    "resnet20": {"arch": "resnet20", "width": 0.5, "train_subset": 6000, "epochs": 8},
    "vgg11": {"arch": "vgg11", "width": 0.25, "train_subset": 20000, "epochs": 6},
    # the paper's own family; depthwise convolutions are slow on a CPU: 16 px images
    "mobilenetv2": {"arch": "mobilenetv2", "width": 0.25, "train_subset": 6000, "epochs": 8, "image_size": 16},
}
VARIANTS = {
    # the paper's settings: eval-mode BN scoring, no BN re-estimation, 0.1-epoch fine-tune after each layer
    "gfs-published": {"method": "gfs", "published": True},
    # ablation: the pruned architecture re-initialised at random before fine-tuning (the paper: worse)
    "same-arch-reinit": {"method": "random", "reinit": True},
}
"""Benchmark rows that are a method with non-default settings."""

COLUMNS = ["network", "method", "widths", "macs_target", "seed", "finetune_epochs", "finetune_lr", "test_acc",
           "val_acc", "test_acc_selected", "macs", "macs_fraction", "params", "selection_s", "finetune_s", "speedup_b1", "speedup_b64"]
METHODS_DEFAULT = ["gfs", "l1", "taylor", "bn-scale", "random"]
DEFAULT_LR = 0.01
"""The peak fine-tune learning rate of the ``ft<epochs>`` folders (netsift's default ``--lr`` when they were run);
the runs at other rates are in ``ft<epochs>-lr<lr>``. Every fine-tune names its rate, so a later change of
netsift's default does not change what a folder holds."""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--val-fraction", type=float, default=0.05)
    p.add_argument("--finetune-epochs", type=int, nargs="+", default=[0, 1, 5], help="fine-tune budgets")
    p.add_argument("--finetune-lrs", type=float, nargs="+", default=[DEFAULT_LR],
                   help="peak fine-tune learning rates (the report picks one per method on validation accuracy)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--fractions", type=float, nargs="+", default=[0.5, 0.25])
    p.add_argument("--methods", nargs="+", default=METHODS_DEFAULT,
                   help=f"methods ({', '.join(METHODS)}) and variants ({', '.join(VARIANTS)})")
    p.add_argument("--widths", nargs="+", default=["uniform", "learned"], choices=["uniform", "learned"])
    p.add_argument("--scratch", action=argparse.BooleanOptionalAction, default=True,
                   help="also train GFS's learned architecture from scratch (dense epochs + largest fine-tune)")
    p.add_argument("--speed", action="store_true", help="time the finished cells' networks (quiet machine)")
    p.add_argument("--name", default="structured_widths", help="stem of the result files")
    p.add_argument("--candidates", type=int, default=50, help="GFS / backward candidates per step (published 50)")
    p.add_argument("--select-batch", type=int, default=128, help="greedy minibatch (published 128)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--shard", default="0/1", help="I/N: run every N-th cell starting at I (a second worker; a "
                                                  "from-scratch cell goes with its GFS cell)")
    p.add_argument("--report", action="store_true", help="only tabulate the finished cells")
    p.add_argument("--work", default=str(ROOT / "runs" / "bench-structured"), help="run folders of the cells")
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--quick", action="store_true", help="smoke test: resnet20 on 1,000 images, 2 dense epochs, "
                                                        "seed 0, 50%% MACs, 4 candidates, budgets 0/1")
    args = p.parse_args(argv)
    if any(not 0 < lr <= 10 for lr in args.finetune_lrs):  # before a dense network is trained for nothing
        p.error(f"--finetune-lrs must be in (0, 10], got {args.finetune_lrs}")
    i, _, n = args.shard.partition("/")
    if not (i.isdigit() and n.isdigit() and int(i) < int(n)):
        p.error(f"--shard must be I/N with 0 <= I < N, got {args.shard!r}")
    if args.quick:
        args.networks, args.seeds, args.fractions, args.finetune_epochs = ["resnet20"], [0], [0.5], [0, 1]
        args.candidates, args.methods = 4, ["gfs", "l1", "taylor"]
        args.work += "-quick"
        args.name += "_quick"
    return args


def network_setup(name: str, args) -> dict:
    net = dict(NETWORKS[name])
    if args.quick:
        net.update(train_subset=1000, epochs=2)
    return net


def dense_run(name: str, args) -> tuple[Path, DataConfig]:
    """Train (once) the dense network of ``name``; its run folder and data settings."""
    net = network_setup(name, args)
    data_cfg = DataConfig(args.data, train_subset=net["train_subset"], val_fraction=args.val_fraction,
                          image_size=net.get("image_size"))
    folder = Path(args.work) / name / "dense"
    if not (folder / "result.json").exists():
        netsift.train(net["arch"], data_cfg, epochs=net["epochs"], batch_size=128, lr=0.1, nesterov=True,
                      weight_decay=5e-4, width=net["width"], seed=0, out=folder, overwrite=True)
    return folder, data_cfg


def cells(args) -> list[tuple[str, str, str, float, int]]:
    """(network, method, widths, fraction, seed), seed-major so a cut-short run has every method for the first
    seeds, networks interleaved."""
    units = [[(n, m, w, f, s)] for s in args.seeds for f in args.fractions for n in args.networks
             for w in args.widths for m in args.methods]
    if args.scratch and "learned" in args.widths and "gfs" in args.methods:
        # a from-scratch cell trains the architecture its GFS cell found: the two stay in one shard, in that order
        # (split over two workers, the scratch cell used to start before the other worker had selected it)
        for u in units:
            if u[0][1:3] == ("gfs", "learned"):
                u.append((u[0][0], "gfs-scratch", *u[0][2:]))
    i, n = (int(v) for v in args.shard.split("/"))
    return [c for u in units[i::n] for c in u]


def _whole_grid(args) -> argparse.Namespace:
    """``args`` widened to the default grid (seeds, fractions, methods, widths) plus what ``args`` names."""
    default = parse_args([]) if not args.quick else args
    return argparse.Namespace(**{**vars(args), "shard": "0/1",
                                 "seeds": sorted(set(default.seeds) | set(args.seeds)),
                                 "fractions": sorted(set(default.fractions) | set(args.fractions), reverse=True),
                                 "finetune_epochs": sorted(set(default.finetune_epochs) | set(args.finetune_epochs)),
                                 "networks": list(dict.fromkeys([*default.networks, *args.networks])),
                                 "methods": list(dict.fromkeys([*args.methods, *default.methods])),
                                 "widths": ["uniform", "learned"]})


def cell_folder(args, network: str, method: str, widths: str, fraction: float, seed: int) -> Path:
    return Path(args.work) / network / f"{method}-{widths}-{fraction}-s{seed}"


def ft_folder(folder: Path, epochs: int, lr: float = DEFAULT_LR) -> Path:
    """The run folder of a cell's fine-tune (``folder`` itself for no fine-tune)."""
    if not epochs:
        return folder
    return folder / (f"ft{epochs}" if lr == DEFAULT_LR else f"ft{epochs}-lr{lr:g}")


def _ft_of(name: str) -> tuple[int, float]:
    """(epochs, lr) of a fine-tune folder's name (``ft5``, ``ft5-lr0.1``)."""
    epochs, _, lr = name[2:].partition("-lr")
    return int(epochs), float(lr) if lr else DEFAULT_LR


def cell_done(args, folder: Path, method: str) -> bool:
    """Whether every run of the cell that ``args`` asks for has its result.json."""
    if method == "gfs-scratch":
        return (folder / "result.json").exists()
    return all((ft_folder(folder, e, lr) / "result.json").exists() for e in args.finetune_epochs
               for lr in (args.finetune_lrs if e else [DEFAULT_LR]))


def run_cell(network: str, method: str, widths: str, fraction: float, seed: int, args, before: dict) -> list[dict]:
    """Select once (no fine-tune), then fine-tune the selected network for every budget; one row per budget."""
    if method == "gfs-scratch":
        return [scratch_cell(network, widths, fraction, seed, args)]
    folder = cell_folder(args, network, method, widths, fraction, seed)
    if not cell_done(args, folder, method):
        dense_dir, data_cfg = dense_run(network, args)
        if not (folder / "result.json").exists():
            settings = dict(VARIANTS.get(method, {"method": method}))
            netsift.prune(dense_dir, method=settings.pop("method"), macs=fraction, widths=widths, finetune_epochs=0,
                          seed=seed, out=folder, overwrite=True, source_measure=before, candidates=args.candidates,
                          select_batch=args.select_batch, latency_threads=None, **settings)
        data_seed = json.loads((folder / "result.json").read_text())["data_seed"]
        for epochs in args.finetune_epochs:
            for lr in args.finetune_lrs if epochs else []:
                ft_dir = ft_folder(folder, epochs, lr)
                if not (ft_dir / "result.json").exists():
                    ft = TrainConfig(epochs=epochs, **{**finetune_defaults(), "lr": lr})
                    netsift.train(load_model(folder)[0], data_cfg, ft, seed=seed, data_seed=data_seed, out=ft_dir,
                                  overwrite=True, latency_threads=None)
    sel = json.loads((folder / "result.json").read_text())
    # every finished fine-tune of the cell, whichever run asked for it: (epochs, lr, result)
    runs = [(0, None, sel)] + sorted(((*_ft_of(p.parent.name), json.loads(p.read_text()))
                                      for p in folder.glob("ft*/result.json")), key=lambda t: t[:2])
    rows = []
    for epochs, lr, r in runs:
        rows.append({"network": network, "method": method, "widths": widths, "macs_target": fraction, "seed": seed,
                     "finetune_epochs": epochs, "finetune_lr": lr, "test_acc": r["test_acc"],
                     "val_acc": r.get("val_acc"), "test_acc_selected": sel["test_acc_selected"],
                     "macs": sel["macs"], "macs_fraction": sel["macs_fraction"], "params": sel["params"],
                     "selection_s": sel["selection_s"], "finetune_s": r["wall_s"] if epochs else 0.0})
    return rows


def scratch_cell(network: str, widths: str, fraction: float, seed: int, args) -> dict:
    """GFS's architecture (of the same cell) re-initialised at random and trained like the dense network for as
    many epochs as dense training + the largest fine-tune budget."""
    net = network_setup(network, args)
    _, data_cfg = dense_run(network, args)
    source = cell_folder(args, network, "gfs", widths, fraction, seed)
    folder = cell_folder(args, network, "gfs-scratch", widths, fraction, seed)
    epochs = net["epochs"] + max(args.finetune_epochs)
    if not (folder / "result.json").exists():
        model = load_model(source)[0]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for m in model.modules():
                if hasattr(m, "reset_parameters") and m is not model:
                    m.reset_parameters()
        netsift.train(model, data_cfg, epochs=epochs, batch_size=128, lr=0.1, nesterov=True, weight_decay=5e-4,
                      seed=seed, out=folder, overwrite=True, latency_threads=None)
    r = json.loads((folder / "result.json").read_text())
    sel = json.loads((source / "result.json").read_text())
    return {"network": network, "method": "gfs-scratch", "widths": widths, "macs_target": fraction, "seed": seed,
            "finetune_epochs": epochs, "finetune_lr": None, "test_acc": r["test_acc"], "val_acc": r["val_acc"], "test_acc_selected": None, "macs": sel["macs"],
            "macs_fraction": sel["macs_fraction"], "params": sel["params"], "selection_s": 0.0,
            "finetune_s": r["wall_s"]}


def same_dense(network: str, dense_dir: Path, recorded: dict) -> None:
    """Stop (exit 1, one line) when a retrained dense network differs from the one the recorded cells pruned:
    new cells would be mixed with cells of another network in the same table."""
    was = recorded.get(network)
    now = json.loads((dense_dir / "result.json").read_text())
    if was and (now["test_acc"], now["macs"], now["params"]) != (was["test_acc"], was["macs"], was["params"]):
        sys.exit(f"structured: the dense {network} in {dense_dir} (test acc {now['test_acc']}) is not the one the "
                 f"recorded cells pruned (test acc {was['test_acc']}); move the recorded results aside first")


ROW_KEY = ("network", "method", "widths", "macs_target", "seed", "finetune_epochs", "finetune_lr")


def recorded_rows(recorded: list[dict], fresh: list[dict], grid: list[tuple]) -> list[dict]:
    """The rows of the previous result file that no run folder gives any more (a fresh clone, a cleaned ``runs/``):
    kept, so rewriting the tables never drops a measured cell. A row a run folder gives again replaces its record;
    a recorded row outside the grid (a network or method no longer run) is dropped."""
    have = {tuple(r[k] for k in ROW_KEY) for r in fresh}
    in_grid = set(grid)
    return [r for r in recorded if tuple(r.get(k) for k in ROW_KEY) not in have
            and (r["network"], r["method"], r["widths"], r["macs_target"], r["seed"]) in in_grid]


def time_cells(args, todo) -> dict:
    """Speed-ups of every finished cell's network against its dense network (interleaved, 1 thread)."""
    from netsift.measure import compare_latency

    out_path = Path(args.results) / f"{args.name}_speed.json"
    speed = json.loads(out_path.read_text()) if out_path.exists() else {}
    dense_models = {}
    for network, method, widths, fraction, seed in todo:
        folder = cell_folder(args, network, method, widths, fraction, seed)
        key = f"{network}/{folder.name}"
        if key in speed or not (folder / "result.json").exists() or method == "gfs-scratch":
            continue
        if network not in dense_models:
            dense_dir, data_cfg = dense_run(network, args)
            dense_models[network] = (load_model(dense_dir)[0], load_bundle(data_cfg, 0).input_shape)
        dense, shape = dense_models[network]
        lat = compare_latency({"dense": dense, "pruned": load_model(folder)[0]}, shape, threads=1)
        speed[key] = {"speedup_b1": lat["dense"]["b1_ms"] / lat["pruned"]["b1_ms"],
                      "speedup_b64": lat["dense"]["b64_ms"] / lat["pruned"]["b64_ms"],
                      "spread": max(lat["dense"]["spread"], lat["pruned"]["spread"])}
        out_path.write_text(json.dumps(speed, indent=1) + "\n")
        print(f"{key}: speed-up b1 x{speed[key]['speedup_b1']:.2f}, b64 x{speed[key]['speedup_b64']:.2f}", flush=True)
    return speed


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and standard deviation over seeds per (network, method, MACs target, fine-tune budget)."""
    out = []
    fields = ("network", "method", "widths", "macs_target", "finetune_epochs", "finetune_lr")
    keys = sorted({tuple(r[f] for f in fields) for r in rows},
                  key=lambda k: (k[0], -k[3], k[4], k[2], k[1], k[5] or 0))
    for key in keys:
        cell = [r for r in rows if tuple(r[f] for f in fields) == key]
        s = dict(zip(fields, key), n=len(cell))
        for k in ("test_acc", "val_acc", "macs_fraction", "selection_s", "speedup_b1", "speedup_b64"):
            vals = [float(r[k]) for r in cell if r.get(k) is not None]
            if not vals:
                s[k] = s[k + "_std"] = None
                continue
            s[k] = statistics.mean(vals)
            s[k + "_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        out.append(s)
    return out


def _acc(s: dict) -> str:
    """Mean test accuracy ± std over the seeds, their number in brackets (one seed: no spread to show)."""
    return f"{s['test_acc']:.4f} ± {s['test_acc_std']:.4f} ({s['n']})" if s["n"] > 1 else f"{s['test_acc']:.4f} (1)"


def published_lr(summary: list[dict]) -> list[dict]:
    """The summary rows of the published fine-tune recipe (and the unfine-tuned and from-scratch rows)."""
    return [s for s in summary if s["finetune_lr"] in (None, DEFAULT_LR)]


def chosen_lr(summary: list[dict]) -> list[dict]:
    """Per (network, method, widths, MACs, fine-tune budget) the row of the learning rate with the best mean
    validation accuracy over the seeds, among the rates run with the most seeds (where there are two or more);
    each carries ``lrs``, those rates' ``{lr: mean validation accuracy}``."""
    groups: dict[tuple, list[dict]] = {}
    for s in summary:
        if s["finetune_lr"] is not None and s["val_acc"] is not None:
            groups.setdefault(tuple(s[k] for k in ("network", "method", "widths", "macs_target",
                                                   "finetune_epochs")), []).append(s)
    full = [[s for s in g if s["n"] == max(s["n"] for s in g)] for g in groups.values()]  # rates still running: out
    return [max(g, key=lambda s: s["val_acc"]) | {"lrs": {s["finetune_lr"]: s["val_acc"] for s in g}}
            for g in full if len(g) > 1]


def markdown_lr(summary: list[dict]) -> str:
    """Per network: each method's accuracy at the fine-tune learning rate it does best with on validation."""
    chosen, lines = chosen_lr(summary), []
    for network in sorted({s["network"] for s in chosen}):
        part = [s for s in chosen if s["network"] == network]
        cols = sorted({(s["macs_target"], s["finetune_epochs"]) for s in part}, key=lambda c: (-c[0], c[1]))
        lines += [f"### {network}: fine-tune learning rate chosen on validation accuracy", "",
                  "| method | widths | " + " | ".join(f"{m:.0%} MACs, {e} ep: test (lr)" for m, e in cols)
                  + " | validation accuracy by lr |", "|---|---|" + "---|" * (len(cols) + 1)]
        for method, widths in sorted({(s["method"], s["widths"]) for s in part}):
            cells = {(s["macs_target"], s["finetune_epochs"]): s for s in part
                     if (s["method"], s["widths"]) == (method, widths)}
            row = [f"{_acc(cells[c])} ({cells[c]['finetune_lr']:g})" if c in cells else "–" for c in cols]
            vals = "; ".join(", ".join(f"{lr:g}: {v:.4f}" for lr, v in sorted(cells[c]["lrs"].items()))
                             for c in cols if c in cells)
            lines.append(f"| {method} | {widths} | " + " | ".join(row) + f" | {vals} |")
        lines.append("")
    return "\n".join(lines)


def markdown(summary: list[dict], dense: dict) -> str:
    """One table per network: rows = method and widths, columns = (MACs, fine-tune budget), then speed-ups (the
    published fine-tune recipe; ``markdown_lr`` has the learning rates chosen on validation)."""
    lines = []
    summary = published_lr(summary)
    for network in sorted({s["network"] for s in summary}):
        part = [s for s in summary if s["network"] == network and s["method"] != "gfs-scratch"]
        cols = sorted({(s["macs_target"], s["finetune_epochs"]) for s in part}, key=lambda c: (-c[0], c[1]))
        fracs = sorted({s["macs_target"] for s in part}, reverse=True)
        d = dense[network]
        lines += [f"### {network} (dense test accuracy {d['test_acc']:.4f}, {d['macs']:,} MACs)", "",
                  "| method | widths | " + " | ".join(f"{m:.0%} MACs, {e} ep" for m, e in cols)
                  + " | " + " | ".join(f"speed-up b64 at {m:.0%}" for m in fracs) + " | selection s |",
                  "|---|---|" + "---|" * (len(cols) + len(fracs) + 1)]
        for method, widths in sorted({(s["method"], s["widths"]) for s in part}):
            cells = {(s["macs_target"], s["finetune_epochs"]): s for s in part
                     if (s["method"], s["widths"]) == (method, widths)}
            row = [_acc(cells[c]) if c in cells else "–" for c in cols]
            speed = []
            for f in fracs:
                c = next((cells[k] for k in cells if k[0] == f and cells[k]["speedup_b64"] is not None), None)
                speed.append(f"x{c['speedup_b64']:.2f}" if c else "–")
            sel = statistics.mean(s["selection_s"] for s in cells.values())
            lines.append(f"| {method} | {widths} | " + " | ".join(row + speed) + f" | {sel:.1f} |")
        scratch = [s for s in summary if s["network"] == network and s["method"] == "gfs-scratch"]
        for s in scratch:
            lines.append(f"| gfs architecture from scratch ({s['finetune_epochs']} ep) | {s['widths']} | "
                         + " | ".join(_acc(s) if c[0] == s["macs_target"]
                                      and c[1] == max(e for _, e in cols) else "–" for c in cols)
                         + " | " + " | ".join("–" for _ in fracs) + " | – |")
        lines.append("")
    return "\n".join(lines)


LABELS = {"resnet20": "ResNet-20", "vgg11": "VGG11", "mobilenetv2": "MobileNetV2"}


def markdown_budget(summary: list[dict], fraction: float, seeds: int) -> str:
    """The README's table for one MACs budget: every network side by side, rows = method and widths (uniform
    first), three decimals; a cell with fewer than ``seeds`` seeds gives their number in brackets."""
    part = [s for s in published_lr(summary) if s["macs_target"] == fraction]
    networks = [n for n in NETWORKS if any(s["network"] == n for s in part)]
    epochs = sorted({s["finetune_epochs"] for s in part if s["method"] != "gfs-scratch"})
    if not networks or not epochs:
        return ""

    def acc(s: dict) -> str:
        text = f"{s['test_acc']:.3f}" + (f" ± {s['test_acc_std']:.3f}" if s["n"] > 1 else "")
        return text + (f" ({s['n']})" if s["n"] < seeds else "")

    head = [f"{LABELS.get(n, n)} {e} ep" if i == 0 else f"{e} ep" for n in networks for i, e in enumerate(epochs)]
    lines = [f"### every network at {fraction:.0%} MACs (the README's table)", "",
             "| method | widths | " + " | ".join(head) + " |", "|---|---|" + "---|" * len(head)]
    methods = [m for m in METHODS_DEFAULT + sorted(VARIANTS) if any(s["method"] == m for s in part)]
    for method in methods:
        for widths in ("uniform", "learned"):
            cells = {(s["network"], s["finetune_epochs"]): s for s in part
                     if (s["method"], s["widths"]) == (method, widths)}
            if cells:
                lines.append(f"| {method} | {widths} | " + " | ".join(
                    acc(cells[(n, e)]) if (n, e) in cells else "–" for n in networks for e in epochs) + " |")
    scratch = {s["network"]: s for s in part if s["method"] == "gfs-scratch"}
    if scratch:
        row = [f"{acc(scratch[n])} ({scratch[n]['finetune_epochs']} ep)" if n in scratch and e == epochs[-1]
               else "–" for n in networks for e in epochs]
        lines.append("| GFS's learned architecture trained from scratch | learned | " + " | ".join(row) + " |")
    return "\n".join(lines + [""])


def plot(summary: list[dict], path: Path) -> None:
    """Accuracy against MACs per fine-tune budget: one panel per network and budget, learned widths filled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    networks = sorted({s["network"] for s in summary})
    budgets = sorted({s["finetune_epochs"] for s in summary if s["method"] != "gfs-scratch"})
    fig, axes = plt.subplots(len(networks), len(budgets), figsize=(4 * len(budgets), 3.2 * len(networks)),
                             squeeze=False)
    methods = sorted({s["method"] for s in summary if s["method"] != "gfs-scratch"})
    colors = {m: plt.cm.tab10(i) for i, m in enumerate(methods)}
    for r, network in enumerate(networks):
        for c, ep in enumerate(budgets):
            ax = axes[r][c]
            for s in summary:
                if s["network"] != network or s["finetune_epochs"] != ep or s["method"] not in colors:
                    continue
                ax.errorbar(s["macs_fraction"], s["test_acc"], yerr=s["test_acc_std"], fmt="o" if s["widths"] ==
                            "learned" else "s", mfc=colors[s["method"]] if s["widths"] == "learned" else "none",
                            color=colors[s["method"]], label=f"{s['method']} {s['widths']}", capsize=2)
            ax.set_title(f"{network}, fine-tune {ep} ep", fontsize=9)
            ax.set_xlabel("MACs kept (fraction)")
            ax.set_ylabel("test accuracy")
    handles, labels = axes[0][0].get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    fig.legend(unique.values(), unique.keys(), loc="lower center", ncol=min(5, len(unique)), fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    todo = cells(args)
    if args.speed:
        time_cells(args, todo)
        return 0
    speed_path = results / f"{args.name}_speed.json"
    record = results / f"{args.name}.json"
    try:
        previous = json.loads(record.read_text()) if record.exists() else {}
    except ValueError as e:
        sys.exit(f"structured: {record} is not valid JSON ({e}); restore it (git checkout) before rewriting it")
    rows, dense, befores = [], {}, {}
    for i, (network, method, widths, fraction, seed) in enumerate(todo):
        folder = cell_folder(args, network, method, widths, fraction, seed)
        done = cell_done(args, folder, method)
        if args.report and not done:
            continue
        if method == "gfs-scratch" and not done and not (
                cell_folder(args, network, "gfs", widths, fraction, seed) / "result.json").exists():
            print(f"[{i + 1}/{len(todo)}] {network} gfs-scratch {widths} {fraction} seed {seed}: not run, its GFS "
                  f"cell has not finished (run the grid again once it has)", flush=True)
            continue
        if network not in befores and not done and method != "gfs-scratch":
            dense_dir, data_cfg = dense_run(network, args)
            same_dense(network, dense_dir, previous.get("dense", {}))
            befores[network] = measure(load_model(dense_dir)[0], load_bundle(data_cfg, 0))
        tc = time.perf_counter()
        rows += run_cell(network, method, widths, fraction, seed, args, befores.get(network))
        if not done:
            print(f"[{i + 1}/{len(todo)}] {network} {method} {widths} {fraction} seed {seed}: "
                  f"{time.perf_counter() - tc:.0f} s (total {time.perf_counter() - t0:.0f} s)", flush=True)
    # the result files hold every finished cell of the whole grid, not only this invocation's (a stage of the
    # chain runs one seed; it used to overwrite the tables with that seed alone)
    # (and every fine-tune budget: a stage may run only the 5-epoch fine-tunes at new learning rates)
    whole, rows = _whole_grid(args), []
    whole.finetune_lrs = [DEFAULT_LR]
    for network, method, widths, fraction, seed in cells(whole):
        if cell_done(whole, cell_folder(args, network, method, widths, fraction, seed), method):
            rows += run_cell(network, method, widths, fraction, seed, whole, None)
    grid = cells(whole)
    rows += recorded_rows(previous.get("cells", []), rows, grid)
    order = {c: i for i, c in enumerate(grid)}  # fresh and recorded rows in grid order, whatever their source
    rows.sort(key=lambda r: (order[(r["network"], r["method"], r["widths"], r["macs_target"], r["seed"])],
                             r["finetune_epochs"], -1 if r["finetune_lr"] is None else r["finetune_lr"]))
    speed = json.loads(speed_path.read_text()) if speed_path.exists() else {}
    for r in rows:
        key = f"{r['network']}/{cell_folder(args, r['network'], r['method'], r['widths'], r['macs_target'], r['seed']).name}"
        r.update({k: speed.get(key, {}).get(k, r.get(k)) for k in ("speedup_b1", "speedup_b64")})
    for network in whole.networks:
        folder = Path(args.work) / network / "dense" / "result.json"
        if folder.exists():
            dense[network] = json.loads(folder.read_text())
        elif network in previous.get("dense", {}):
            dense[network] = previous["dense"][network]
    with open(results / f"{args.name}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    summary = summarize(rows)
    setup = {k: v for k, v in vars(whole).items() if k not in ("work", "results", "report", "shard", "speed")}
    setup["networks"] = {n: network_setup(n, args) for n in whole.networks}
    setup["finetune_lrs"] = sorted({r["finetune_lr"] for r in rows if r["finetune_lr"] is not None})
    (results / f"{args.name}.json").write_text(json.dumps(
        {"setup": setup, "dense": {n: {k: d[k] for k in ("model", "width", "data", "test_acc", "val_acc", "macs",
                                                          "params")} for n, d in dense.items()},
         "summary": summary, "cells": rows}, indent=1) + "\n")
    table = (markdown(summary, dense) + "\n" + markdown_lr(summary) + "\n"
             + "\n".join(markdown_budget(summary, f, len(whole.seeds)) for f in whole.fractions))
    (results / f"{args.name}.md").write_text(table + "\n")
    if rows:
        plot(published_lr(summary), results / f"{args.name}.png")
    print(table)
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
