"""Where Gumbel masks win: gumbel + Smart Rescale (``--density F``) against edge-popup at the same density.

The map: densities {0.5, 0.2, 0.1, 0.05, 0.02} x LeNet-300-100 widths {x1, x2, x4} on the full Fashion-MNIST
training split (54,000 images, 6,000 held out for validation), plus a Conv-2 column (densities {0.5, 0.1, 0.05})
at the widest width the CPU budget allows; 3 seeds; test accuracy at the best validation epoch. Every cell runs
through the public pipeline, ``netsift.extract(..., out=run_folder, resume=True)``, so a number here is what
``netsift extract --method M --density F --width W --seed S ...`` gives with the same settings (the recipe's
flags are in each cell's JSON line, ``extract_kwargs``).

    export PYTHONPATH=src OMP_NUM_THREADS=1
    python benchmarks/masks_map.py --quick                 # smoke test on digits (a minute; writes under tmp/)
    nohup nice -n 10 python benchmarks/masks_map.py > runs/masks_map/worker0.log 2>&1 &      # the grid
    python benchmarks/masks_map.py --list                  # cells, done or not, in run order
    python benchmarks/masks_map.py --report                # table, heat map and curves from what has finished
    python benchmarks/masks_map.py --sweep edge-popup-lr   # a recipe sweep (validation accuracy only)

``--shard I/N`` runs only the cells i with i % N == I; each cell is locked while it runs (``seed<s>.lock`` beside
its run folder), so two workers never run the same cell. Resumable at two levels: a finished cell is one JSON
line of ``<out>.jsonl`` (a rerun skips it); a cell cut short resumes from its last epoch checkpoint in its run
folder (``netsift.extract(resume=True)``: bit for bit on the same machine and thread count).

Cells run one network and width at a time, cheapest first, low densities first, the three seeds of a density
and both methods of a seed back to back (:data:`BLOCKS`): a partial run holds 3-seed verdicts for what it reached.

Convergence (per cell, from its per-epoch ``metrics.jsonl`` as written by ``netsift.masks.stats.MaskStats``):
the validation curve is *flat* from the first epoch whose best-so-far validation accuracy is within
``FLAT_TOL`` of the run's best, provided the run then went on for at least ``max(5, 20%)`` of its epochs
without beating it by more; gumbel's masks are *decided* from the first epoch after which fewer than 5% of
σ(m̂) stay in (0.1, 0.9). The converged budget is the later of the two (edge-popup: the flat epoch); a cell
where either never happens is reported as not converged at its cap. Budget-check cells rerun a few seed-0
cells at twice the budget (:data:`BUDGET_CHECKS`): what doubling it adds is the direct evidence for the cap.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from masks_long import append_row, read_rows  # noqa: E402  (one JSON line per cell, locked appends)

import netsift  # noqa: E402
from netsift.config import DataConfig  # noqa: E402
from netsift.errors import NetsiftError  # noqa: E402

METHODS = ("gumbel", "edge-popup")
LENET_WIDTHS = (1.0, 2.0, 4.0)
LENET_DENSITIES = (0.02, 0.05, 0.1, 0.2, 0.5)
CONV_WIDTH = 0.25
CONV_DENSITIES = (0.05, 0.1, 0.5)
SEEDS = (0, 1, 2)
EPOCHS = {"lenet300": 30, "conv2": 30}
"""Budget (epochs) of every cell; see the module docstring and docs/masks.md for the evidence behind it."""
BUDGET_CHECKS = (("lenet300", 1.0, 0.05, METHODS), ("lenet300", 1.0, 0.5, METHODS),
                 ("lenet300", 2.0, 0.5, ("gumbel",)), ("lenet300", 4.0, 0.5, ("gumbel",)),
                 ("lenet300", 4.0, 0.2, ("gumbel",)), ("lenet300", 4.0, 0.1, ("gumbel",)),
                 ("conv2", None, 0.5, ("gumbel",)))
"""Seed-0 cells also run at twice the budget, right after their network's block: ``(arch, width, density,
methods)``, width ``None`` for Conv-2's ``--conv-width``. LeNet x1 at 0.05 and 0.5, both methods: the evidence
for the cap, chosen before the map ran. The others are the cells where gumbel's masks were still more than 5%
undecided at 30 epochs (the map's own report), gumbel only: edge-popup's validation accuracy was still rising at
30 epochs in every cell and rose again at 60 in both x1 checks, so a gumbel result at 60 epochs that stays behind
edge-popup's at 30 settles the cell's answer."""
BATCH = 128
FLAT_TOL = 0.003
"""Validation accuracy within 0.3 point (18 of 6,000 images) of the best counts as flat."""
UNDECIDED_MAX = 0.05

# ------------------------------------------------------------------------------------------------ recipes
# A recipe is what a cell passes to netsift.extract beyond (model, data, method, density, width, seed, epochs).
# Recipes live in masks_map_recipes.json beside this script, read afresh before every cell, so a choice made
# by a sweep while the grid runs reaches the cells not yet started. Every choice there is made on validation
# accuracy only (benchmarks/results/masks_map_sweep.*); each cell's JSON line names its recipe and holds the
# exact keyword arguments it ran with. A method with no entry for a density (neither the density nor
# "default") is not decided yet: the worker defers those cells and comes back to them.

RECIPES_FILE = Path(__file__).resolve().parent / "masks_map_recipes.json"
RECIPE = "r1"


def load_recipes() -> dict:
    for attempt in range(10):  # the file may be being rewritten (edit it by writing a copy and renaming it)
        try:
            return json.loads(RECIPES_FILE.read_text())["recipes"]
        except (json.JSONDecodeError, FileNotFoundError):
            if attempt == 9:
                raise
            time.sleep(3)
    raise AssertionError("unreachable")


def recipe_kwargs(recipe: str, method: str, density: float) -> dict | None:
    """The extract keyword arguments of ``recipe`` for ``method`` at ``density`` (``None``: not decided yet)."""
    spec = load_recipes()[recipe][method]
    entry = spec.get(f"{density:g}", spec.get("default"))
    if entry is None:
        return None
    return {k: v for k, v in entry.items() if not k.startswith("why")}


# -------------------------------------------------------------------------------------------------- cells


BLOCKS = (("lenet300", 1.0), ("lenet300", 2.0), ("lenet300", 4.0), ("conv2", None))
"""Run order: one network and width at a time, cheapest first (an epoch costs ~5 CPU-s at lenet300 x1, ~11 at x2,
~23 at x4, ~34 for Conv-2 x0.25); within a block density-major, low densities first, the three seeds of a density
back to back, both methods of a cell back to back. A partial run therefore holds 3-seed verdicts (the ones the
moonshot needs, density <= 0.1, first) for the widths it reached, rather than one seed of everything."""


def cells(args) -> list[dict]:
    """Every cell of the map in run order (see :data:`BLOCKS`)."""
    out = []
    for arch, width in BLOCKS:
        if arch not in args.archs or (arch == "lenet300" and width not in args.widths):
            continue
        width = args.conv_width if width is None else width
        for d in (LENET_DENSITIES if arch == "lenet300" else CONV_DENSITIES):
            if d not in args.densities:
                continue
            for seed in args.seeds:
                for m in METHODS:
                    out.append({"arch": arch, "width": width, "density": d, "method": m, "seed": seed,
                                "epochs": args.epochs[arch]})
    wanted = {(a, args.conv_width if w is None else w, d, m) for a, w, d, methods in BUDGET_CHECKS for m in methods}
    checks = [{**c, "epochs": 2 * c["epochs"]} for c in out if c["seed"] == 0
              and (c["arch"], c["width"], c["density"], c["method"]) in wanted]
    if args.budget_check:
        out = checks
    else:  # right after their network's block: the evidence for the budget comes early
        for block in sorted({(c["arch"], c["width"]) for c in checks}, reverse=True):
            last = max(i for i, c in enumerate(out) if (c["arch"], c["width"]) == block)
            out = out[:last + 1] + [c for c in checks if (c["arch"], c["width"]) == block] + out[last + 1:]
    return [{**c, "recipe": args.recipe} for c in out]


def _kwargs_tag(c: dict) -> str:
    """``lr0.3-rescalesmart``: a sweep cell's own settings, as they appear in its key and folder name."""
    return "-".join(f"{k.replace('_', '')}{v:g}" if isinstance(v, float) else f"{k.replace('_', '')}{v}"
                    for k, v in sorted((c.get("kwargs") or {}).items()))


def _d(density: float | None) -> str:
    return "emergent" if density is None else f"{density:g}"


def _hash(kw: dict) -> str:
    return hashlib.sha256(json.dumps(kw, sort_keys=True).encode()).hexdigest()[:8]


def key(c: dict) -> str:
    """A cell's identity. Sweep cells: their sweep and settings. Map cells: the exact ``netsift.extract``
    arguments (a row's own, a cell's from the current recipe), so a recipe change reruns only the cells whose
    arguments it changes, and a finished cell counts for every recipe that gives it the same arguments."""
    head = f"{c['arch']}|w{c['width']:g}|{c['method']}|d{_d(c['density'])}|e{c['epochs']}"
    if c.get("kwargs"):
        return f"{c['recipe']}|{head}|{_kwargs_tag(c)}|s{c['seed']}"
    return f"{head}|{_hash(c.get('extract_kwargs') or extract_kwargs(c))}|s{c['seed']}"


def run_dir(c: dict, args) -> Path:
    if c.get("kwargs"):
        return (Path(args.runs) / c["recipe"] / f"{c['arch']}-w{c['width']:g}-e{c['epochs']}"
                / f"{c['method']}-d{_d(c['density'])}-{_kwargs_tag(c)}" / f"seed{c['seed']}")
    return (Path(args.runs) / "map" / f"{c['arch']}-w{c['width']:g}-e{c['epochs']}"
            / f"{c['method']}-d{_d(c['density'])}-{_hash(extract_kwargs(c))}" / f"seed{c['seed']}")


def data_for(args):
    """What the cells pass as ``data``: the name (the full split, as the CLI) or a DataConfig with a subset."""
    if args.train_subset is None and args.data_dir is None:
        return args.data
    return DataConfig(args.data, data_dir=args.data_dir, train_subset=args.train_subset)


def extract_kwargs(c: dict, args=None, extra: dict | None = None) -> dict:
    """Everything but ``out``/``resume`` that the cell passes to ``netsift.extract``."""
    kw = {"method": c["method"], "density": c["density"], "width": c["width"], "seed": c["seed"],
          "epochs": c["epochs"], "batch_size": BATCH, "patience": 0}
    if not c.get("kwargs"):
        kw.update(recipe_kwargs(c["recipe"], c["method"], c["density"]) or {})
    kw.update(extra or c.get("kwargs") or {})
    return kw


def series_of(path: Path) -> dict:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    keys = ("val_acc", "train_loss", "train_acc", "mask_density", "undecided", "mask_changed", "epoch_s", "tau",
            "lr")
    return {k: [r.get(k) for r in rows] for k in keys}


def run_cell(c: dict, args, extra: dict | None = None) -> dict:
    """Run (or resume) one cell through ``netsift.extract`` and return its JSON line."""
    t0 = time.perf_counter()
    folder = run_dir(c, args)
    kw = extract_kwargs(c, args, extra)
    resume = (folder / "config.json").is_file()
    if not resume and folder.exists():
        shutil.rmtree(folder)  # killed before its config was written: nothing to keep
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        r = netsift.extract(c["arch"], data_for(args), out=folder, resume=resume, progress=True, **kw)
    except NetsiftError as e:
        # corrupt: killed between the two files of a checkpoint; "--resume: setting": the folder was written by a
        # netsift without a setting added since (the cell's own arguments are the same: they name the folder)
        if not resume or ("corrupt" not in str(e) and "--resume: setting" not in str(e)):
            raise
        print(f"  cannot resume {folder} ({e}); restarting the cell", flush=True)
        shutil.rmtree(folder)
        r = netsift.extract(c["arch"], data_for(args), out=folder, resume=False, progress=True, **kw)
    result = json.loads((folder / "result.json").read_text())
    row = {**c, "extract_kwargs": kw, "data": args.data, "train_subset": args.train_subset,
           "test_acc": r.test_acc, "val_acc": r.val_acc, "density_out": r.density,
           "best_epoch": result["best_epoch"], "epochs_run": result["epochs_run"],
           "mask_lr": result["mask_lr"], "rescale": result["rescale"],
           "layer_density": [x["density"] for x in result["layers"]],
           "scales": [x.get("scale") for x in result["layers"]],
           "cell_wall_s": round(time.perf_counter() - t0, 1), "resumed": resume,
           "threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "torch": torch.__version__, "run_dir": str(folder), "series": series_of(folder / "metrics.jsonl")}
    for stem in ("checkpoint", "best", "model"):  # keep result/config/metrics and the mask bits (subnet.*)
        for suffix in (".json", ".safetensors"):
            (folder / f"{stem}{suffix}").unlink(missing_ok=True)
    return row


def cell_lock(c: dict, args) -> int | None:
    """An exclusive lock on the cell, or ``None`` when another worker holds it."""
    import fcntl

    path = run_dir(c, args).with_suffix(".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _decided(c: dict) -> bool:
    return bool(c.get("kwargs")) or recipe_kwargs(c["recipe"], c["method"], c["density"]) is not None


def run_cells(todo: list[dict], log: Path, args, extra_of=None) -> None:
    """Run every cell of ``todo`` not yet in ``log`` (one JSON line each), skipping cells another worker holds;
    cells whose recipe is not decided yet are deferred until it is (checked once a minute)."""
    shard, nshards = (int(x) for x in args.shard.split("/"))
    queue = [c for i, c in enumerate(todo) if i % nshards == shard]
    n = len(queue)
    print(f"{len(todo)} cells, shard {shard}/{nshards}: {n}; threads {torch.get_num_threads()}", flush=True)
    deferred: list[dict] = []
    while queue or deferred:
        ready = [c for c in deferred if _decided(c)]  # decided meanwhile: they go first, in run order
        if ready:
            deferred = [c for c in deferred if c not in ready]
            queue = ready + queue
        if not queue:
            time.sleep(60)
            continue
        c = queue.pop(0)
        if not _decided(c):
            print(f"{c['arch']} x{c['width']:g} {c['method']} d{c['density']:g} s{c['seed']}: no recipe for this "
                  "density yet, deferred", flush=True)
            deferred.append(c)
            continue
        if key(c) in {key(r) for r in read_rows(log)}:
            continue
        _run_locked(c, log, args, extra_of, f"[{len({key(r) for r in read_rows(log)})}/{n} done]")


def _run_locked(c: dict, log: Path, args, extra_of, tag: str) -> None:
    lock = cell_lock(c, args)
    if lock is None:
        print(f"{tag} {key(c)} is running in another worker: skipped", flush=True)
        return
    try:
        print(f"{tag} {key(c)} start {time.strftime('%H:%M:%S')}", flush=True)
        row = run_cell(c, args, extra_of(c) if extra_of else None)
        append_row(log, row)
    finally:
        os.close(lock)
    und = row["series"]["undecided"][-1]
    print(f"{tag} {key(c)} test {row['test_acc']:.4f} val {row['val_acc']:.4f} best epoch "
          f"{row['best_epoch']}/{row['epochs_run']}" + (f" undecided {und:.3f}" if und is not None else "")
          + f" {row['cell_wall_s']:.0f}s", flush=True)


# ------------------------------------------------------------------------------------------- convergence


def flat_epoch(val: list[float], tol: float = FLAT_TOL) -> int | None:
    """1-based first epoch whose best-so-far validation is within ``tol`` of the run's best, if the run then
    went on for at least max(5, 20%) of its epochs (else ``None``: still rising at the cap)."""
    if not val:
        return None
    best, run_max = max(val), -1.0
    for i, v in enumerate(val):
        run_max = max(run_max, v)
        if run_max >= best - tol:
            return i + 1 if len(val) - (i + 1) >= max(5, math.ceil(0.2 * len(val))) else None
    return None


def decided_epoch(undecided: list, limit: float = UNDECIDED_MAX) -> int | None:
    """1-based first epoch from which the undecided share stays below ``limit`` (``None`` if it never does)."""
    if not undecided or any(u is None for u in undecided):
        return None
    e = None
    for i in range(len(undecided) - 1, -1, -1):
        if undecided[i] < limit:
            e = i + 1
        else:
            break
    return e


def convergence(row: dict) -> dict:
    """Flat epoch, decided epoch (gumbel) and the converged budget of one cell (``None``: not converged)."""
    s = row["series"]
    flat = flat_epoch(s["val_acc"])
    decided = decided_epoch(s["undecided"]) if row["method"] == "gumbel" else None
    if row["method"] == "gumbel":
        budget = max(flat, decided) if flat is not None and decided is not None else None
    else:
        budget = flat
    und = s["undecided"][-1] if s.get("undecided") else None
    return {"flat_epoch": flat, "decided_epoch": decided, "converged_epoch": budget,
            "undecided_final": und, "converged": budget is not None}


# ------------------------------------------------------------------------------------------------ sweeps
# Recipe sweeps: lenet300 x1, seed 0, on a training subset (the validation split is still 10% of the full one,
# the test split is not looked at to choose anything). Each entry: (method, density, extract keyword arguments).

SWEEP_SUBSET = 18000
SWEEP_EPOCHS = 20


def _ep_lr_sweep() -> list[tuple[str, float, dict]]:
    """edge-popup: lr {0.1 (published), 0.3, 1} x rescale {none (published), smart} at every density, and lr 3
    with smart rescale (lr 1 was the best at the edge of the grid at low densities). The two lowest densities'
    lr-3 runs come first: the map's first cells need them."""
    first = [("edge-popup", d, {"lr": 3.0, "rescale": "smart"}) for d in (0.02, 0.05)]
    grid = [("edge-popup", d, {"lr": lr, "rescale": rs}) for d in LENET_DENSITIES for rs in ("none", "smart")
            for lr in (0.1, 0.3, 1.0)]
    return first + grid + [("edge-popup", d, {"lr": 3.0, "rescale": "smart"}) for d in (0.1, 0.2, 0.5)]


def _gumbel_sweep() -> list[tuple[str, float, dict]]:
    """gumbel + Smart Rescale with --density: the scale's lr (--scale-lr) first, then the mask lr {300, 1000
    (default), 3000} and the temperature anneal (--tau-end 0.3 and 3). (A first version also started the scales
    at 1/sqrt(target density): at density 0.02 that collapsed to 17.9% validation, because gumbel samples at
    σ(m̂) ≈ 0.5, not at the target, while its logits are still near 0; --scale-init now uses σ(logit init)
    for gumbel.)"""
    ds = (0.02, 0.1, 0.5)
    out = [("gumbel", d, {"lr": 1000.0}) for d in ds]
    out += [("gumbel", d, {"lr": 1000.0, "scale_lr": 0.01}) for d in ds]
    out += [("gumbel", d, {"lr": lr}) for d in ds for lr in (300.0, 3000.0)]
    out += [("gumbel", d, {"lr": 1000.0, "tau_end": t}) for d in ds for t in (0.3, 3.0)]
    return out


def _gumbel_sweep_2() -> list[tuple[str, float, dict]]:
    """Second round (after the first: a lower mask lr, a faster scale and a temperature annealed up to 3 each
    helped at low density): the first two together, with the anneal, and a faster scale still."""
    out = [("gumbel", d, {"lr": 300.0, "scale_lr": 0.01}) for d in (0.02, 0.1, 0.5)]
    out += [("gumbel", d, {"lr": 1000.0, "scale_lr": 0.03}) for d in (0.02, 0.1, 0.5)]
    out += [("gumbel", 0.02, {"lr": 100.0, "scale_lr": 0.01})]
    out += [("gumbel", d, {"lr": 300.0, "scale_lr": 0.01, "tau_end": 3.0}) for d in (0.02, 0.1, 0.5)]
    return out


def _round3_sweep() -> list[tuple[str, float, dict]]:
    """Densities 0.2 and 0.5 for the map (the first rounds settled the low densities): edge-popup published
    (lr 0.1, no rescale), with Smart Rescale, and with the low densities' winners (smart, scale lr 0.01, lr 0.3 and
    1); gumbel at 0.2 with the settings that won at 0.1 and 0.5 (lr 1000 at 0.5: the first round); and the
    emergent density of gumbel started at keep probability 0.1 and 0.25 (--logit-init -2.2 and -1.1)."""
    out = []
    for d in (0.2, 0.5):
        out += [("edge-popup", d, kw) for kw in ({"lr": 0.1, "rescale": "none"}, {"lr": 0.1, "rescale": "smart"},
                                                 {"lr": 0.3, "rescale": "smart", "scale_lr": 0.01},
                                                 {"lr": 1.0, "rescale": "smart", "scale_lr": 0.01})]
    out += [("gumbel", 0.2, kw) for kw in ({"lr": 1000.0}, {"lr": 1000.0, "scale_lr": 0.01},
                                           {"lr": 300.0, "scale_lr": 0.01})]
    # Zhou et al.'s way to other densities: the logit init (sigmoid bias), emergent density, netsift's defaults
    out += [("gumbel", None, {"logit_init": x}) for x in (-2.2, -1.1)]
    return out


def _ep_scale_sweep() -> list[tuple[str, float, dict]]:
    """edge-popup with smart rescale at its chosen lr 1: the same scale knobs as gumbel's."""
    base = {"lr": 1.0, "rescale": "smart"}
    return [("edge-popup", d, {**base, **kw}) for d in (0.02, 0.05, 0.1)
            for kw in ({"scale_init": "inv-sqrt-density"}, {"scale_lr": 0.01})]


def _gumbel_budget_sweep() -> list[tuple[str, float | None, dict]]:
    """The mask lr at 100 epochs on the full split, emergent density: lr 300, the budget rule's value
    (1000 · 30 / 100); lr 50 and 1000 at the same budget are in masks_long.jsonl."""
    return [("gumbel", None, {"lr": 300.0})]


SWEEPS = {
    "edge-popup-lr": {"cells": _ep_lr_sweep, "subset": SWEEP_SUBSET, "epochs": SWEEP_EPOCHS, "seeds": (0,)},
    "gumbel": {"cells": _gumbel_sweep, "subset": SWEEP_SUBSET, "epochs": SWEEP_EPOCHS, "seeds": (0,)},
    "gumbel-2": {"cells": _gumbel_sweep_2, "subset": SWEEP_SUBSET, "epochs": SWEEP_EPOCHS, "seeds": (0,)},
    "edge-popup-scale": {"cells": _ep_scale_sweep, "subset": SWEEP_SUBSET, "epochs": SWEEP_EPOCHS, "seeds": (0,)},
    "round3": {"cells": _round3_sweep, "subset": SWEEP_SUBSET, "epochs": SWEEP_EPOCHS, "seeds": (0,)},
    "gumbel-budget-0": {"cells": _gumbel_budget_sweep, "subset": None, "epochs": 100, "seeds": (0,),
                        "as": "gumbel-budget"},  # its first seed alone
    "gumbel-budget": {"cells": _gumbel_budget_sweep, "subset": None, "epochs": 100, "seeds": (0, 1)},
}


def sweep_cells(name: str, args) -> list[dict]:
    spec = SWEEPS[name]
    return [{"arch": "lenet300", "width": 1.0, "density": d, "method": m, "seed": seed, "epochs": spec["epochs"],
             "recipe": f"sweep-{spec.get('as', name)}", "kwargs": kw}
            for seed in spec["seeds"] for m, d, kw in spec["cells"]()]


def sweep_report(rows: list[dict]) -> str:
    """Per sweep, method and density: every setting's best validation accuracy; the chosen one in bold."""
    lines = ["| sweep | method | density | seed | setting | val acc % (best epoch) | test acc % | undecided at end |",
             "|---|---|---|---|---|---|---|---|"]
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["recipe"], r["method"], _d(r["density"]), r["seed"]), []).append(r)
    for (rec, m, d, seed), rs in sorted(groups.items()):
        best = max(rs, key=lambda r: r["val_acc"])
        for r in sorted(rs, key=lambda r: json.dumps(r["kwargs"], sort_keys=True)):
            und = r["series"]["undecided"][-1]
            setting = ", ".join(f"{k} {v}" for k, v in sorted(r["kwargs"].items()))
            mark = "**" if r is best else ""
            lines.append(f"| {rec[6:]} | {m} | {d} | {seed} | {mark}{setting}{mark} | {100 * r['val_acc']:.2f} "
                         f"({r['best_epoch']}) | {100 * r['test_acc']:.2f} | "
                         f"{'–' if und is None else f'{100 * und:.1f}%'} |")
    return "\n".join(lines) + "\n"


def choose(rows: list[dict], recipe: str, densities: list[float]) -> dict:
    """Write into ``recipe`` (masks_map_recipes.json, atomically) the best-validation sweep setting of each method
    at each of ``densities`` (sweep rows of lenet300 x1, seed 0, on the sweep budget); returns the entries."""
    chosen = {}
    for m in METHODS:
        for d in densities:
            rs = [r for r in rows if r.get("kwargs") and r["method"] == m and r["density"] == d
                  and r["epochs"] == SWEEP_EPOCHS and r["train_subset"] == SWEEP_SUBSET and r["seed"] == 0]
            if not rs:
                continue
            rs.sort(key=lambda r: -r["val_acc"])
            fmt = lambda r: f"{', '.join(f'{k} {v}' for k, v in sorted(r['kwargs'].items()))} {100 * r['val_acc']:.2f}"  # noqa: E731
            chosen[(m, d)] = {**rs[0]["kwargs"], "why": (
                f"sweeps (lenet300 x1, {SWEEP_SUBSET // 1000}k training subset, {SWEEP_EPOCHS} epochs, seed 0), best "
                f"validation: {fmt(rs[0])} (then: {'; '.join(fmt(r) for r in rs[1:4])})")}
    data = json.loads(RECIPES_FILE.read_text())
    for (m, d), entry in chosen.items():
        data["recipes"][recipe][m][f"{d:g}"] = entry
    tmp = RECIPES_FILE.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    os.replace(tmp, RECIPES_FILE)
    for (m, d), entry in chosen.items():
        print(f"{recipe} {m} {d:g}: {entry['why']}")
    return chosen


# ------------------------------------------------------------------------------------------------ report


def _ms(xs: list[float]) -> tuple[float | None, float | None]:
    xs = [x for x in xs if x is not None]
    if not xs:
        return None, None
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else None)


def grid_rows(rows: list[dict], recipe: str, epochs: dict = EPOCHS) -> list[dict]:
    """The map's rows that ran with exactly the arguments ``recipe`` gives their cell now, at the map's budget
    (budget-check rows, sweep rows and rows of superseded recipe entries left out)."""
    out = []
    for r in rows:
        if r.get("kwargs") or r["epochs"] != epochs.get(r["arch"]):
            continue
        cell = {k: r[k] for k in ("arch", "width", "density", "method", "seed", "epochs")}
        if _decided({**cell, "recipe": recipe}) and extract_kwargs({**cell, "recipe": recipe}) == r["extract_kwargs"]:
            out.append(r)
    return out


def verdict(g: dict, e: dict) -> str:
    """Does gumbel beat edge-popup here? ``yes``/``no`` only where |difference| > 2 x the larger std."""
    if g["n"] < 2 or e["n"] < 2:
        return f"n/a ({min(g['n'], e['n'])} seed)"
    diff, sd = g["test_mean"] - e["test_mean"], max(g["test_std"], e["test_std"])
    if diff > 2 * sd:
        return "yes"
    if diff < -2 * sd:
        return "no"
    return "not significant"


def summarize(rows: list[dict], recipe: str, epochs: dict = EPOCHS) -> list[dict]:
    """One entry per (arch, width, density): both methods' mean ± std, convergence and the verdict."""
    groups: dict = {}
    for r in grid_rows(rows, recipe, epochs):
        groups.setdefault((r["arch"], r["width"], r["density"]), {}).setdefault(r["method"], []).append(r)
    out = []
    for (arch, width, density), by_method in groups.items():
        entry = {"arch": arch, "width": width, "density": density}
        for m in METHODS:
            rs = sorted(by_method.get(m, []), key=lambda r: r["seed"])
            conv = [convergence(r) for r in rs]
            mean, sd = _ms([r["test_acc"] for r in rs])
            budgets = [c["converged_epoch"] for c in conv]
            entry[m] = {"n": len(rs), "seeds": [r["seed"] for r in rs], "test_mean": mean, "test_std": sd or 0.0,
                        "test": [r["test_acc"] for r in rs], "val_mean": _ms([r["val_acc"] for r in rs])[0],
                        "converged_epoch": max(budgets) if budgets and None not in budgets else None,
                        "converged_n": sum(b is not None for b in budgets),
                        "flat_epoch": [c["flat_epoch"] for c in conv], "decided_epoch": [c["decided_epoch"] for c in conv],
                        "undecided_final": _ms([c["undecided_final"] for c in conv])[0],
                        "best_epoch": [r["best_epoch"] for r in rs], "epochs": rs[0]["epochs"] if rs else None,
                        "extract_kwargs": rs[0]["extract_kwargs"] if rs else None}
        g, e = entry["gumbel"], entry["edge-popup"]
        if g["n"] and e["n"]:
            paired = {r: a - b for r, a in zip(g["seeds"], g["test"]) for r2, b in zip(e["seeds"], e["test"])
                      if r == r2}
            entry["diff_mean"] = g["test_mean"] - e["test_mean"]
            entry["diff_paired_std"] = statistics.stdev(paired.values()) if len(paired) > 1 else None
            entry["verdict"] = verdict(g, e)
        out.append(entry)
    order = {"lenet300": 0, "conv2": 1}
    return sorted(out, key=lambda x: (order[x["arch"]], x["width"], -x["density"]))


def _cell(s: dict) -> str:
    if not s["n"]:
        return "–"
    sd = f" ± {100 * s['test_std']:.2f}" if s["n"] > 1 else ""
    return f"{100 * s['test_mean']:.2f}{sd} ({s['n']})"


def _budget(s: dict) -> str:
    if not s["n"]:
        return "–"
    if s["converged_epoch"] is None:
        return f"not converged ({s['n'] - s['converged_n']}/{s['n']} seeds) at {s['epochs']}"
    return f"{s['converged_epoch']} / {s['epochs']}"


def markdown(summary: list[dict]) -> str:
    lines = ["| model | width | density | gumbel test % (seeds) | edge-popup test % (seeds) | gumbel − edge-popup "
             "(points) | gumbel converged epoch / cap | gumbel undecided at end | edge-popup flat epoch / cap | "
             "gumbel beats edge-popup? |", "|---|---|---|---|---|---|---|---|---|---|"]
    for x in summary:
        g, e = x["gumbel"], x["edge-popup"]
        diff = "–" if "diff_mean" not in x else f"{100 * x['diff_mean']:+.2f}" + (
            f" ± {100 * x['diff_paired_std']:.2f}" if x.get("diff_paired_std") is not None else "")
        und = "–" if g["undecided_final"] is None else f"{100 * g['undecided_final']:.1f}%"
        lines.append(f"| {x['arch']} | ×{x['width']:g} | {x['density']:g} | {_cell(g)} | {_cell(e)} | {diff} | "
                     f"{_budget(g)} | {und} | {_budget(e)} | {x.get('verdict', '–')} |")
    return "\n".join(lines) + "\n"


def moonshot(summary: list[dict]) -> dict:
    """Cells with density ≤ 0.1 where gumbel significantly beats edge-popup, against the whole grid's count."""
    low = [x for x in summary if x["density"] <= 0.1]
    expected = len(LENET_WIDTHS) * sum(d <= 0.1 for d in LENET_DENSITIES) + sum(d <= 0.1 for d in CONV_DENSITIES)
    wins = sum(x.get("verdict") == "yes" for x in low)
    three = sum(x["gumbel"]["n"] >= 3 and x["edge-popup"]["n"] >= 3 for x in low)
    return {"low_density_cells_in_grid": expected, "with_both_methods": sum("verdict" in x for x in low),
            "with_3_seeds": three, "gumbel_wins": wins, "met": wins >= math.ceil(expected / 2)}


def _columns(summary: list[dict]) -> list[tuple[str, float]]:
    return sorted({(x["arch"], x["width"]) for x in summary}, key=lambda c: (c[0] != "lenet300", c[1]))


def plot_heatmap(summary: list[dict], path: Path) -> None:
    """Density × width, colour = gumbel − edge-popup (points), annotated with the mean, the paired seeds' std
    and the number of seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cols = sorted(set(_columns(summary)) | {("lenet300", w) for w in LENET_WIDTHS} | {("conv2", CONV_WIDTH)},
                  key=lambda c: (c[0] != "lenet300", c[1]))
    dens = sorted(set(LENET_DENSITIES) | {x["density"] for x in summary}, reverse=True)
    grid = np.full((len(dens), len(cols)), np.nan)
    text = [["" for _ in cols] for _ in dens]
    for x in summary:
        if "diff_mean" not in x:
            continue
        i, j = dens.index(x["density"]), cols.index((x["arch"], x["width"]))
        grid[i, j] = 100 * x["diff_mean"]
        sd = x.get("diff_paired_std")
        n = min(x["gumbel"]["n"], x["edge-popup"]["n"])
        text[i][j] = (f"{grid[i, j]:+.2f}" + (f"\n± {100 * sd:.2f}" if sd is not None else "") + f"\nn={n}"
                      + {"yes": "\ngumbel wins", "no": "\nedge-popup wins"}.get(x.get("verdict"), ""))
    lim = max(1.0, float(np.nanmax(np.abs(grid)))) if np.isfinite(grid).any() else 1.0
    fig, ax = plt.subplots(figsize=(2.3 * len(cols) + 2, 1.15 * len(dens) + 1.6))
    im = ax.imshow(grid, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
    for i in range(len(dens)):
        for j in range(len(cols)):
            planned = cols[j][0] == "lenet300" or dens[i] in CONV_DENSITIES
            ax.text(j, i, text[i][j] or ("not yet" if planned else "–"), ha="center", va="center", fontsize=8,
                    color="black" if not text[i][j] or abs(grid[i, j]) < 0.6 * lim else "white")
    ax.set_xticks(range(len(cols)), [f"{a} ×{w:g}" for a, w in cols])
    ax.set_yticks(range(len(dens)), [f"{d:g}" for d in dens])
    ax.set_ylabel("density (kept fraction)")
    fig.colorbar(im, ax=ax, label="gumbel − edge-popup (test points)")
    ax.set_title("Fashion-MNIST: gumbel + Smart Rescale − edge-popup, same density\n"
                 "mean ± std of the paired (same-seed) differences, n seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(summary: list[dict], path: Path) -> None:
    """Test accuracy against density, one panel per network and width, both methods (mean ± std)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = _columns(summary)
    fig, axes = plt.subplots(1, len(cols), figsize=(4.2 * len(cols), 3.8), squeeze=False)
    for ax, (arch, width) in zip(axes[0], cols):
        xs = sorted((x for x in summary if x["arch"] == arch and x["width"] == width), key=lambda x: x["density"])
        for m, color in zip(METHODS, ("tab:blue", "tab:orange")):
            pts = [(x["density"], x[m]) for x in xs if x[m]["n"]]
            if not pts:
                continue
            ax.errorbar([d for d, _ in pts], [100 * s["test_mean"] for _, s in pts],
                        yerr=[100 * s["test_std"] for _, s in pts], marker="o", capsize=3, color=color,
                        label=f"{m} (seeds: {'/'.join(str(s['n']) for _, s in pts)})")
        ax.set_xscale("log")
        ax.set_xticks([0.02, 0.05, 0.1, 0.2, 0.5], ["0.02", "0.05", "0.1", "0.2", "0.5"])
        ax.set_xlabel("density")
        ax.set_ylabel("test accuracy % (best validation epoch)")
        ax.set_title(f"{arch} ×{width:g}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def budget_checks(rows: list[dict], recipe: str, epochs: dict = EPOCHS) -> list[dict]:
    """Budget-check cells (twice the map's epochs) beside the same cell at the map's budget."""
    base = {(r["arch"], r["width"], r["method"], r["density"], r["seed"]): r
            for r in grid_rows(rows, recipe, epochs)}
    out = []
    for r in rows:
        if r.get("kwargs") or r["epochs"] == epochs[r["arch"]]:
            continue
        b = base.get((r["arch"], r["width"], r["method"], r["density"], r["seed"]))
        same = lambda kw: {k: v for k, v in kw.items() if k != "epochs"}  # noqa: E731
        if b is not None and same(b["extract_kwargs"]) == same(r["extract_kwargs"]):
            out.append({"arch": r["arch"], "width": r["width"], "method": r["method"], "density": r["density"],
                        "seed": r["seed"], "epochs": (b["epochs"], r["epochs"]),
                        "val": (b["val_acc"], r["val_acc"]), "test": (b["test_acc"], r["test_acc"]),
                        "best_epoch": (b["best_epoch"], r["best_epoch"]),
                        "converged_epoch": (convergence(b)["converged_epoch"], convergence(r)["converged_epoch"]),
                        "undecided_final": (convergence(b)["undecided_final"], convergence(r)["undecided_final"])})
    return out


def report(rows: list[dict], out: Path, args) -> dict:
    recipe = args.recipe
    summary = summarize(rows, recipe, args.epochs)
    shot = moonshot(summary)
    checks = budget_checks(rows, recipe, args.epochs)
    total = sum(c["epochs"] == args.epochs[c["arch"]]
                for c in cells(argparse.Namespace(**{**vars(args), "budget_check": False})))
    done = len(grid_rows(rows, recipe, args.epochs))
    lines = [f"Recipe {recipe}; {done} of {total} map cells finished"
             + (" (**partial**)" if done < total else "") + ".\n", markdown(summary)]
    lines.append(f"\nMoonshot (gumbel significantly ahead on at least half of the {shot['low_density_cells_in_grid']}"
                 f" cells with density ≤ 0.1): {shot['gumbel_wins']} wins among {shot['with_both_methods']} cells "
                 f"measured ({shot['with_3_seeds']} with 3 seeds): "
                 f"{'met' if shot['met'] else 'not met (so far)' if done < total else 'not met'}.\n")
    lines.append("\nRecipe of the measured cells (the `netsift.extract` keyword arguments beyond model, data, method, "
                 "density, width, seed):\n\n| method | density | arguments |\n|---|---|---|")
    used = {}
    for x in summary:
        for m in METHODS:
            kw = x[m]["extract_kwargs"]
            if kw:
                used.setdefault((m, x["density"]), {k: v for k, v in kw.items()
                                                     if k not in ("method", "density", "width", "seed")})
    for (m, d), kw in sorted(used.items()):
        lines.append(f"| {m} | {d:g} | {', '.join(f'{k}={v}' for k, v in sorted(kw.items()))} |")
    if checks:
        lines.append("\nBudget check (seed 0): the same cell at twice the budget.\n\n| cell | epochs | val % | test % "
                     "| best epoch | converged epoch | gumbel undecided at end |\n|---|---|---|---|---|---|---|")
        pair = lambda v, f: " → ".join("–" if x is None else f(x) for x in v)  # noqa: E731
        for c in checks:
            lines.append(f"| {c['arch']} ×{c['width']:g} {c['method']} d {c['density']:g} | {c['epochs'][0]} → "
                         f"{c['epochs'][1]} | {100 * c['val'][0]:.2f} → {100 * c['val'][1]:.2f} | "
                         f"{100 * c['test'][0]:.2f} → {100 * c['test'][1]:.2f} | {c['best_epoch'][0]} → "
                         f"{c['best_epoch'][1]} | {pair(c['converged_epoch'], lambda x: str(x))} | "
                         f"{pair(c['undecided_final'], lambda x: f'{100 * x:.1f}%')} |")
    text = "\n".join(lines) + "\n"
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps({"recipe": recipe, "recipes": load_recipes(), "epochs": args.epochs,
                                                    "cells_done": done, "cells_total": total, "moonshot": shot,
                                                    "summary": summary, "budget_checks": checks}, indent=1) + "\n")
    if summary:
        plot_heatmap(summary, out.parent / f"{out.name}_heatmap.png")
        plot_curves(summary, out.parent / f"{out.name}_curves.png")
    print(text)
    return {"summary": summary, "moonshot": shot}


# -------------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke test: digits, 2 epochs, 1 seed, tmp outputs")
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    p.add_argument("--archs", nargs="+", default=["lenet300", "conv2"], choices=["lenet300", "conv2"])
    p.add_argument("--widths", type=float, nargs="+", default=list(LENET_WIDTHS), help="lenet300 widths")
    p.add_argument("--densities", type=float, nargs="+", default=sorted(set(LENET_DENSITIES) | set(CONV_DENSITIES)))
    p.add_argument("--conv-width", type=float, default=CONV_WIDTH)
    p.add_argument("--recipe", default=RECIPE, help="a recipe of masks_map_recipes.json")
    p.add_argument("--budget-check", action="store_true", help="run only the seed-0 budget-check cells (2x epochs)")
    p.add_argument("--sweep", choices=list(SWEEPS), help="run a recipe sweep instead of the map")
    p.add_argument("--shard", default="0/1", help="I/N: run only cells i with i %% N == I (a second worker)")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default="benchmarks/results/masks_map")
    p.add_argument("--runs", default="runs/masks_map", help="per-cell run folders")
    p.add_argument("--report", action="store_true", help="only write the tables and plots")
    p.add_argument("--choose", type=float, nargs="+", metavar="DENSITY",
                   help="write the best-validation sweep setting of each method at these densities into the recipe")
    p.add_argument("--list", action="store_true", help="only list the cells in run order and whether they are done")
    args = p.parse_args(argv)
    args.epochs = dict(EPOCHS)
    args.train_subset = None
    if args.quick:
        args.data, args.seeds, args.epochs = "digits", args.seeds[:1], {"lenet300": 2, "conv2": 2}
        args.widths, args.densities = args.widths[:2], [0.5, 0.05]
        args.out, args.runs = "benchmarks/results/tmp/masks_map_quick", "runs/masks_map_quick"
        args.recipe = "defaults"
    shard, nshards = (int(x) for x in args.shard.split("/"))
    if not 0 <= shard < nshards:
        p.error(f"--shard {args.shard}: need 0 <= I < N")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.sweep:
        log = out.parent / f"{out.name}_sweep.jsonl"
        spec = SWEEPS[args.sweep]
        if not args.report:
            args.train_subset = None if args.quick else spec["subset"]
            todo = sweep_cells(args.sweep, args)
            if args.quick:
                todo = [{**c, "epochs": 2} for c in todo[:2]]
            run_cells(todo, log, args)
        text = sweep_report(read_rows(log))
        (out.parent / f"{out.name}_sweep.md").write_text(text)
        print(text)
        return 0
    log = out.with_suffix(".jsonl")
    if args.choose:
        choose(read_rows(out.parent / f"{out.name}_sweep.jsonl"), args.recipe, args.choose)
        return 0
    if args.report:
        report(read_rows(log), out, args)
        return 0
    todo = cells(args)
    if args.list:
        done = {key(r) for r in read_rows(log)}
        for i, c in enumerate(todo):
            print(f"{i:3d} {'done' if key(c) in done else 'todo'} {key(c)}")
        return 0
    run_cells(todo, log, args)
    report(read_rows(log), out, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
