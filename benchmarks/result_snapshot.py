"""Behaviour snapshot: the deterministic fields of result.json for a fixed set of small runs.

A restructuring must leave these identical. The script runs train, extract (every mask method), prune (every
selection method, budget and tolerance modes, GFS with replacement), evaluate and export on the built-in digits
data through the Python API and the CLI, 1 thread, and writes every result.json field that does not measure
time (wall and per-stage seconds, latency, throughput, versions and paths are left out).

    PYTHONPATH=src .venv/bin/python benchmarks/result_snapshot.py --out benchmarks/results/snapshot_before.json
    PYTHONPATH=src .venv/bin/python benchmarks/result_snapshot.py --out /tmp/after.json \
        --compare benchmarks/results/snapshot_before.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import netsift  # noqa: E402
from netsift.cli import main as cli  # noqa: E402

TIMING = ("wall_s", "selection_s", "finetune_s", "train_images_per_s", "latency", "speedup", "run_dir",
          "netsift_version", "torch_version", "machine", "threads", "cpu_capability", "estimate")


def stable(result: dict, work: Path) -> dict:
    """The fields of a result that do not depend on time or place (the work folder reads ``WORK``)."""
    return {k: v.replace(str(work), "WORK") if isinstance(v, str) else v for k, v in result.items()
            if not any(t in k for t in TIMING) and not isinstance(v, torch.nn.Module)}


def runs(work: Path) -> dict:
    out: dict = {}
    common = {"batch_size": 64, "seed": 0}
    out["train_lenet"] = netsift.train("lenet300", "digits", epochs=3, lr=0.05, out=work / "dense", **common)
    out["train_resnet"] = netsift.train("resnet20", "digits", epochs=2, width=0.25, out=work / "dense_r", **common)
    for method, kw in (("gumbel", {}), ("gumbel", {"density": 0.2}), ("edge-popup", {"density": 0.3}),
                       ("supermask", {}), ("random", {"density": 0.4})):
        name = f"extract_{method}_{kw.get('density', 'emergent')}"
        out[name] = netsift.extract("lenet300", "digits", method, epochs=2, out=work / name, **kw, **common)
    out["extract_conv_bn"] = netsift.extract("resnet20", "digits", "gumbel", width=0.25, epochs=1,
                                             out=work / "extract_r", **common)
    for method, src, kw in (("gfs", "dense", {"macs": 0.5}), ("gfs", "dense", {"tolerance": 0.05}),
                            ("gfs", "dense", {"macs": 0.4, "replacement": True}), ("backward", "dense", {"macs": 0.6}),
                            ("l1", "dense", {"macs": 0.5}), ("taylor", "dense_r", {"macs": 0.5}),
                            ("bn-scale", "dense_r", {"macs": 0.5}), ("random", "dense_r", {"macs": 0.5}),
                            ("gfs", "dense_r", {"macs": 0.3, "candidates": 8}),
                            ("l1", "dense_r", {"layer_density": {"layers.0.conv1": 0.5}, "macs": 0.5})):
        name = f"prune_{method}_{src}_{'_'.join(f'{k}{v}' for k, v in kw.items() if k != 'layer_density')}"
        if "layer_density" in kw:
            name += "_ld"
        macs = kw.pop("macs", None)
        out[name] = netsift.prune(work / src, method=method, macs=macs, finetune_epochs=1, out=work / name,
                                  **kw, **{**common, "batch_size": 64})
    own = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    out["prune_own_module"] = netsift.prune(own, "digits", method="gfs", macs=0.5, finetune_epochs=1, seed=0)
    out["eval_gfs"] = netsift.evaluate(work / "prune_gfs_dense_macs0.5")
    # the CLI makes the same runs from the same settings
    code = cli(["prune", "--checkpoint", str(work / "dense"), "--method", "gfs", "--macs", "0.5",
                "--finetune-epochs", "1", "--batch-size", "64", "--out", str(work / "cli_gfs"), "--quiet"])
    assert code == 0, code
    out["cli_prune_gfs"] = json.loads((work / "cli_gfs" / "result.json").read_text())
    code = cli(["extract", "--model", "lenet300", "--method", "edge-popup", "--density", "0.3", "--epochs", "2",
                "--batch-size", "64", "--out", str(work / "cli_ep"), "--quiet"])
    assert code == 0, code
    out["cli_extract_ep"] = json.loads((work / "cli_ep" / "result.json").read_text())
    code = cli(["export", str(work / "extract_gumbel_emergent"), "--format", "compact", "--quiet"])
    assert code == 0, code
    out["compact_bytes"] = {"bytes": (work / "extract_gumbel_emergent" / "model.nsc").stat().st_size}
    return {k: stable(v if isinstance(v, dict) else v.to_dict(), work) for k, v in out.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--compare", help="a snapshot to compare with: every field must be identical")
    args = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        snap = runs(Path(tmp))
    Path(args.out).write_text(json.dumps(snap, indent=1, sort_keys=True, default=str) + "\n")
    print(f"{len(snap)} runs, {sum(len(v) for v in snap.values())} fields -> {args.out}")
    if args.compare:
        ref = json.loads(Path(args.compare).read_text())
        now = json.loads(json.dumps(snap, sort_keys=True, default=str))
        diffs = [(run, key, ref[run].get(key), now.get(run, {}).get(key))
                 for run in ref for key in ref[run] if ref[run].get(key) != now.get(run, {}).get(key)]
        diffs += [(run, None, None, "missing") for run in ref if run not in now]
        for d in diffs:
            print("DIFF", *d)
        print(f"{len(diffs)} differences")
        return 1 if diffs else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
