"""Size of compact subnetwork files vs the float32 safetensors state dict, per model and density.

    python benchmarks/compact_size.py                      # conv2/4/6/8 at 32x32x3, lenet300 at 28x28x1

Masks are drawn i.i.d. at each density (the hardest case for the compressor at that density), so learned
masks compress at least as well unless they are more random than Bernoulli. ``entropy_bytes`` is the
Shannon bound n·H(p)/8 of the mask bits. Writes ``benchmarks/results/compact_size.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from netsift.tables import format_table
from netsift.masks.compact import dense_bytes, from_bytes, header_of, rebuild, subnet_of, to_bytes
from netsift.masks.frozen import frozen_network
from netsift.models import prunable_layers

INIT = {"scheme": "signed-constant", "seed": 0}


def measure(model: str, channels: int, image_size: int, density: float) -> dict:
    manifest = {"model": model, "width": 1.0, "in_channels": channels, "image_size": image_size, "num_classes": 10}
    net = frozen_network(manifest, **INIT)
    gen = torch.Generator().manual_seed(0)
    masks = {n: torch.rand(m.weight.shape, generator=gen) < density for n, m in prunable_layers(net)}
    subnet = subnet_of(manifest, INIT, masks, {n: 1.0 for n in masks})
    t0 = time.perf_counter()
    data = to_bytes(subnet)
    write_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    rebuild(from_bytes(data))
    read_s = time.perf_counter() - t0
    n = sum(m.numel() for m in masks.values())
    p = subnet.density
    entropy = n * (-p * math.log2(p) - (1 - p) * math.log2(1 - p)) / 8
    dense = dense_bytes(net)
    return {"model": model, "input": f"{channels}x{image_size}x{image_size}", "density": round(p, 4),
            "prunable_weights": n, "dense_bytes": dense, "compact_bytes": len(data), "ratio": round(dense / len(data), 2),
            "codec": header_of(data)["codec"], "entropy_bytes": round(entropy), "write_s": round(write_s, 3),
            "rebuild_s": round(read_s, 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["conv2", "conv4", "conv6", "conv8", "lenet300"])
    p.add_argument("--densities", nargs="+", type=float, default=[0.05, 0.3, 0.5])
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "compact_size.json"))
    args = p.parse_args()
    rows = [measure(m, *((1, 28) if m.startswith("lenet") else (3, 32)), d) for m in args.models for d in args.densities]
    print(format_table(rows, ["model", "input", "density", "prunable_weights", "dense_bytes", "compact_bytes", "ratio",
                              "codec", "entropy_bytes", "write_s", "rebuild_s"]))
    Path(args.out).write_text(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                                          "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
