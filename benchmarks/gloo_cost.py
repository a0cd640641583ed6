"""What a collective costs between 2 processes of this machine (gloo, 1 thread each): the figures behind
``netsift.selection.scoring.SEND_MACS_PER_VALUE`` / ``SEND_MIN_MACS`` (when a greedy step's prefix is worth
computing once and sending rather than computing in every process).

Measures the latency of a small all-reduce and all-gather, the all-gather's throughput at the sizes a prefix
has (0.15-1.6 M float32 values), and one core's convolution throughput (VGG11 x0.25, batch 128, 28x28), and
prints the break-even: MACs per value sent. Writes ``benchmarks/results/gloo_cost.json``.

    PYTHONPATH=src .venv/bin/python benchmarks/gloo_cost.py     # ~30 s; on a quiet machine
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "gloo_cost.json"


def worker() -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    out: dict = {}

    def timed(fn, n: int) -> float:
        for _ in range(max(3, n // 20)):
            fn()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t0) / n

    small = torch.zeros(16, dtype=torch.float64)
    out["all_reduce_small_ms"] = 1e3 * timed(lambda: dist.all_reduce(small), 1000)
    parts = [torch.empty_like(small) for _ in range(2)]
    out["all_gather_small_ms"] = 1e3 * timed(lambda: dist.all_gather(parts, small), 1000)
    out["all_gather"] = []
    for n in (150_000, 400_000, 1_600_000):
        t = torch.randn(n)
        parts = [torch.empty(n) for _ in range(2)]
        s = timed(lambda: dist.all_gather(parts, t), 40)
        out["all_gather"].append({"floats_per_process": n, "ms": 1e3 * s, "gb_per_s": 4 * n / s / 1e9,
                                  "ns_per_float": 1e9 * s / n})
    if rank == 0:
        print(json.dumps(out))
    dist.destroy_process_group()


def conv_rate() -> float:
    """One core's MACs per second on VGG11 x0.25 forward passes (batch 128, 1x28x28)."""
    import torch

    sys.path.insert(0, str(ROOT / "src"))
    from netsift.measure import count_macs
    from netsift.models import build_model

    torch.set_num_threads(1)
    model = build_model("vgg11", 1, 28, 10, 0.25).eval()
    x = torch.randn(128, 1, 28, 28)
    macs = count_macs(model, (1, 28, 28)) * 128
    with torch.inference_mode():
        model(x)
        times = []
        for _ in range(15):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return macs / statistics.median(times)


def main() -> None:
    if "--worker" in sys.argv:
        return worker()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           __file__, "--worker"], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(proc.stderr[-3000:])
    comm = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("{")))
    rate = conv_rate()
    ns_per_float = statistics.median(r["ns_per_float"] for r in comm["all_gather"])
    result = {"benchmark": "gloo_cost", "processes": 2, "threads": 1, **comm, "conv_macs_per_s": rate,
              "break_even_macs_per_value": ns_per_float * 1e-9 * rate,
              "load": [round(v, 2) for v in os.getloadavg()]}
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"all-reduce (small) {comm['all_reduce_small_ms']:.2f} ms, all-gather (small) "
          f"{comm['all_gather_small_ms']:.2f} ms")
    for r in comm["all_gather"]:
        print(f"all-gather {r['floats_per_process']:>9,} floats: {r['ms']:.2f} ms, {r['gb_per_s']:.2f} GB/s, "
              f"{r['ns_per_float']:.1f} ns/float")
    print(f"convolution: {rate / 1e9:.1f} GMAC/s on one core -> sending a value costs "
          f"~{result['break_even_macs_per_value']:.0f} MACs")
    print(f"written {OUT}")


if __name__ == "__main__":
    main()
