"""CPU latency against MACs for physically pruned networks (how much of the MACs reduction becomes speed).

Latency depends only on the pruned architecture, and with ``--macs`` every method prunes to the same
per-layer widths, so this needs no training: each network is pruned to each MACs fraction (first channels
kept) and timed at batch 1 and 64 in PyTorch eager mode and in onnxruntime (which folds batch norm), dense
and pruned alike, in interleaved rounds (the median over rounds is reported). ``--round-to 1 8`` compares
unconstrained widths with widths rounded to multiples of 8.

    PYTHONPATH=src .venv/bin/python benchmarks/latency_scaling.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from netsift.measure import count_macs, latency  # noqa: E402
from netsift.models import build_model  # noqa: E402
from netsift.onnx_export import export_onnx  # noqa: E402
from netsift.selection.budget import MacsModel, allocate  # noqa: E402
from netsift.selection.groups import find_groups  # noqa: E402
from netsift.selection.removal import remove_channels  # noqa: E402


def ort_latency(model, shape, batch: int, threads: int, repeats: int) -> float:
    """Median onnxruntime latency in ms."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, shape, Path(tmp) / "m.onnx", check=False)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        x = torch.randn(batch, *shape).numpy()
        for _ in range(3):
            sess.run(None, {"input": x})
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            sess.run(None, {"input": x})
            times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["resnet20:0.5", "resnet20:1.0", "vgg11:0.5", "mobilenetv2:0.5"])
    p.add_argument("--fractions", type=float, nargs="+", default=[0.5, 0.3])
    p.add_argument("--round-to", type=int, nargs="+", default=[1, 8],
                   help="kept widths are multiples of N (see prune --round-to); one row per value")
    p.add_argument("--image-size", type=int, default=28)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=10, help="timed passes per round")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds over dense and pruned networks")
    p.add_argument("--no-ort", action="store_true", help="skip onnxruntime")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "latency_scaling.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    shape = (1, args.image_size, args.image_size)
    rows = []
    for spec in args.models:
        name, width = spec.split(":")
        torch.manual_seed(0)
        model = build_model(name, 1, args.image_size, 10, float(width)).eval()
        groups = find_groups(model, shape)
        mm = MacsModel(model, groups, shape)
        nets = {"dense": (model, None, None)}
        for frac in args.fractions:
            for r in args.round_to:
                widths = allocate(mm, frac, r)
                kept = {g.name: list(range(w)) for g, w in zip(groups, widths)}
                nets[(frac, r)] = (remove_channels(model, shape, kept).eval(), widths, None)
        # interleave: every round times every network, so drifts of the machine hit all of them alike
        samples: dict = {k: {"torch_b1": [], "torch_b64": [], "ort_b64": []} for k in nets}
        for _ in range(args.rounds):
            for key, (net, _, _) in nets.items():
                s = samples[key]
                s["torch_b1"].append(latency(net, shape, 1, repeats=3 * args.repeats, threads=args.threads)["median_ms"])
                s["torch_b64"].append(latency(net, shape, 64, repeats=args.repeats, threads=args.threads)["median_ms"])
                if not args.no_ort:
                    s["ort_b64"].append(ort_latency(net, shape, 64, args.threads, args.repeats))
        med = {k: {m: statistics.median(v) for m, v in s.items() if v} for k, s in samples.items()}
        dense_macs = count_macs(model, shape)
        for key, (net, widths, _) in nets.items():
            if key == "dense":
                continue
            frac, r = key
            macs = count_macs(net, shape)
            row = {"model": name, "width": float(width), "macs_target": frac, "round_to": r, "widths": widths,
                   "macs_dense": dense_macs, "macs": macs, "macs_reduction": dense_macs / macs,
                   "dense_ms": med["dense"], "pruned_ms": med[key],
                   **{f"speedup_{m}": med["dense"][m] / med[key][m] for m in med[key]}}
            row["ratio_b64"] = row["speedup_torch_b64"] / row["macs_reduction"]
            if "speedup_ort_b64" in row:
                row["ratio_ort_b64"] = row["speedup_ort_b64"] / row["macs_reduction"]
            rows.append(row)
            ort = (f", onnxruntime b64 x{row['speedup_ort_b64']:.2f} ({row['ratio_ort_b64']:.2f})"
                   if "speedup_ort_b64" in row else "")
            print(f"{name} x{width} MACs {frac:.2f} round-to {r}: MACs red x{row['macs_reduction']:.2f}; speed-up "
                  f"torch b1 x{row['speedup_torch_b1']:.2f}, b64 x{row['speedup_torch_b64']:.2f} "
                  f"({row['ratio_b64']:.2f} of MACs red){ort}", flush=True)
    Path(args.out).write_text(json.dumps({"threads": args.threads, "image_size": args.image_size,
                                         "rounds": args.rounds, "repeats": args.repeats, "rows": rows},
                                         indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
