"""How much faster are 2 processes than 1 on this machine, for pure compute with no communication at all?

Each process runs the same fixed number of dense forward passes (VGG11 x0.25, batch 128, 1x28x28, 1 thread,
inference mode). Runs alternate: 1 process alone, then 2 identical processes at once, ``--repeats`` times.
The ceiling is 2 x (time of 1 alone) / (time of the 2 together): the best speed-up any 2-process split of
the work could reach here (``scale_out.py``'s GFS and training ratios are to be read against it).

    PYTHONPATH=src .venv/bin/python benchmarks/cpu_ceiling.py    # ~1 min; on a quiet machine
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def work(passes: int) -> None:
    import torch

    sys.path.insert(0, str(ROOT / "src"))
    from netsift.models import build_model

    torch.set_num_threads(1)
    model = build_model("vgg11", 1, 28, 10, 0.25).eval()
    x = torch.randn(128, 1, 28, 28)
    with torch.inference_mode():
        model(x)
        t0 = time.perf_counter()
        for _ in range(passes):
            model(x)
    print(time.perf_counter() - t0)


def run(n: int, passes: int) -> list[float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", str(passes)], stdout=subprocess.PIPE, text=True,
                              env=env) for _ in range(n)]
    return [float(p.communicate()[0].strip().splitlines()[-1]) for p in procs]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--passes", type=int, default=60)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cpu_ceiling.json"))
    args = p.parse_args()
    if args.worker:
        work(args.worker)
        return 0
    alone, together = [], []
    for _ in range(args.repeats):
        alone += run(1, args.passes)
        together += run(2, args.passes)
    ceiling = 2 * statistics.median(alone) / statistics.median(together)
    out = {"benchmark": "cpu_ceiling", "model": "vgg11 x0.25, batch 128, 1x28x28, 1 thread", "passes": args.passes,
           "repeats": args.repeats, "alone_s": alone, "together_s": together, "two_process_ceiling": ceiling,
           "cpus": os.cpu_count(), "load_at_end": list(os.getloadavg())}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"1 process alone: {statistics.median(alone):.2f} s; each of 2 together: {statistics.median(together):.2f} s;"
          f" 2-process ceiling x{ceiling:.2f} (written {args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
