"""``netsift export``: write a run's network as a compact subnetwork file, a safetensors file or ONNX.

The pipeline is :func:`netsift.pipelines.export.export` (``netsift.export`` in Python); this module parses and
prints.
"""

from __future__ import annotations

import argparse

from ..masks import COMPACT_SUFFIX as SUFFIX

FORMATS = ("compact", "safetensors", "onnx")
"""The formats of :func:`netsift.pipelines.export.export`, declared here so that ``--help`` needs no torch."""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export", help="write a run's network as a compact file, safetensors or ONNX",
        description="Export a run's network. compact: the subnetwork of a random network as architecture + init "
                    f"seed + one bit per weight + per-layer scales ({SUFFIX}, needs a run of `netsift extract`); "
                    "safetensors: the dense weights + JSON manifest (loads with netsift.load_model); "
                    "onnx: for any run folder with model.safetensors. The source may also be a compact file. A run "
                    "of your own module: --module FILE.py:NAME builds it (ONNX needs it).")
    p.add_argument("path", metavar="RUN_DIR", help=f"run folder (or, for safetensors/onnx, a {SUFFIX} compact file)")
    p.add_argument("--format", default="compact", choices=FORMATS, help="output format (default: compact)")
    p.add_argument("--out", metavar="FILE", help=f"output file (default: RUN_DIR/model{SUFFIX}, RUN_DIR/dense.safetensors "
                                                 "or RUN_DIR/model.onnx)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--module", metavar="FILE.py:NAME", help="your own nn.Module class (or a function returning one), "
                                                           "for a run or compact file made from it: needed for ONNX, "
                                                           "and checks a compact export bit for bit")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..pipelines import export
    from ..progress import stage

    from ..saved import import_module_class

    model = import_module_class(args.module) if args.module else None
    with stage(f"exporting {args.path} as {args.format}", summary_after=None):  # "netsift export: done" follows
        r = export(args.path, args.format, args.out, args.overwrite, model=model)
    if args.format == "compact":
        print(f"wrote {r.path}: {r.bytes:,} bytes ({r.codec}, density {r.density:.4f}) vs "
              f"{r.dense_bytes:,} bytes as float32 safetensors: {r.ratio:.1f}x smaller")
    else:
        print(f"wrote {r.path}: {r.bytes:,} bytes (float32 safetensors state: {r.dense_bytes:,} bytes)")
    return 0
