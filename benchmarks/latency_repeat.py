"""Is the speed-up in result.json reproducible? The same pruned architecture measured N times, as prune does.

Each repetition is one call of ``netsift.measure.measure(pruned, bundle, latency_threads=1, source=dense)``,
the exact protocol behind ``speedup_b1``/``speedup_b64`` in ``result.json`` (dense and pruned timed in
interleaved rounds, median of rounds). The architecture is VGG11 x0.25 (and ResNet-20 x0.5) pruned with l1 to
25% of the MACs on 1x28x28 inputs (random weights: latency depends on the architecture only).

    PYTHONPATH=src .venv/bin/python benchmarks/latency_repeat.py            # ~1-2 min; run on a quiet machine

Writes ``benchmarks/results/latency_repeat.json``: per network the speed-ups of every repetition and their
spread (max - min) / median. Target (issue 9): spread <= 10%.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import netsift  # noqa: E402
from netsift.data import DataBundle, TensorDataset  # noqa: E402
from netsift.measure import count_macs, measure  # noqa: E402
from netsift.models import build_for  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--networks", nargs="+", default=["vgg11:0.25", "resnet20:0.5"])
    p.add_argument("--macs", type=float, default=0.25)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "latency_repeat.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    x = torch.rand(256, 1, 28, 28)
    y = torch.randint(0, 10, (256,))
    bundle = DataBundle("synthetic28", TensorDataset(x, y), TensorDataset(x[:64], y[:64]), TensorDataset(x[:64], y[:64]),
                        (1, 28, 28), 10, (0.5,), (0.25,))
    out = {"macs": args.macs, "repeats": args.repeats, "threads": 1, "torch": torch.__version__, "networks": {}}
    for spec in args.networks:
        arch, width = spec.split(":")
        dense = build_for(arch, (1, 28, 28), 10, float(width), seed=0)
        pruned = netsift.prune(dense, bundle, method="l1", macs=args.macs, finetune_epochs=0, latency_threads=None,
                               progress=False).model
        rows = []
        for i in range(args.repeats):
            t0 = time.perf_counter()
            m = measure(pruned, bundle, latency_threads=1, source=dense)
            rows.append({"speedup_b1": m["speedup_b1"], "speedup_b64": m["speedup_b64"],
                         "latency_b64_ms": m["latency_b64_ms"], "source_latency_b64_ms": m["source_latency_b64_ms"],
                         "round_spread": m["latency_spread"], "wall_s": time.perf_counter() - t0})
            print(f"{spec} #{i + 1}: speed-up b64 x{m['speedup_b64']:.3f}, b1 x{m['speedup_b1']:.3f} "
                  f"(rounds spread {m['latency_spread']:.1%})", flush=True)
        s64 = [r["speedup_b64"] for r in rows]
        s1 = [r["speedup_b1"] for r in rows]
        summary = {"speedup_b64_median": statistics.median(s64),
                   "speedup_b64_spread": (max(s64) - min(s64)) / statistics.median(s64),
                   "speedup_b1_median": statistics.median(s1),
                   "speedup_b1_spread": (max(s1) - min(s1)) / statistics.median(s1),
                   "macs_fraction": count_macs(pruned, (1, 28, 28)) / count_macs(dense, (1, 28, 28))}
        out["networks"][spec] = {"rows": rows, **summary}
        print(f"{spec}: speed-up b64 median x{summary['speedup_b64_median']:.3f}, spread "
              f"{summary['speedup_b64_spread']:.1%}; b1 x{summary['speedup_b1_median']:.3f}, spread "
              f"{summary['speedup_b1_spread']:.1%}", flush=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
