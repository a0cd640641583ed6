"""``netsift export``: write a run's network as a compact subnetwork file, a safetensors file or ONNX.

Default output paths, next to the source: ``RUN_DIR/model.nsc`` (compact), ``RUN_DIR/dense.safetensors`` +
``dense.json`` (safetensors) and ``RUN_DIR/model.onnx`` (onnx); for a compact file ``X.nsc`` as the source,
``X.safetensors`` + ``X.json`` or ``X.onnx``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import NetsiftError
from ..masks import COMPACT_SUFFIX as SUFFIX

if TYPE_CHECKING:
    from torch import nn

FORMATS = ("compact", "safetensors", "onnx")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export", help="write a run's network as a compact file, safetensors or ONNX",
        description="Export a run's network. compact: the subnetwork of a random network as architecture + init "
                    f"seed + one bit per weight + per-layer scales ({SUFFIX}, needs a run of `netsift extract`); "
                    "safetensors: the dense weights + JSON manifest (loads with netsift.load_model); "
                    "onnx: for any run folder with model.safetensors. The source may also be a compact file.")
    p.add_argument("path", metavar="RUN_DIR", help=f"run folder (or, for safetensors/onnx, a {SUFFIX} compact file)")
    p.add_argument("--format", default="compact", choices=FORMATS, help="output format (default: compact)")
    p.add_argument("--out", metavar="FILE", help=f"output file (default: RUN_DIR/model{SUFFIX}, RUN_DIR/dense.safetensors "
                                                 "or RUN_DIR/model.onnx)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(run=run)


def default_out(src: Path, fmt: str) -> Path:
    """Where ``export`` writes when ``--out`` is not given."""
    ext = {"compact": SUFFIX, "safetensors": ".safetensors", "onnx": ".onnx"}[fmt]
    if src.is_file():
        return src.with_suffix(ext)
    return src / ("dense.safetensors" if fmt == "safetensors" else f"model{ext}")


def load_source(src: Path) -> tuple[nn.Module, dict]:
    """The network and manifest of a run folder (``model.safetensors``) or of a compact file."""
    from ..masks.compact import read_compact, rebuild
    from ..rundir import load_model

    if src.is_file():
        subnet = read_compact(src)
        return rebuild(subnet, str(src)), subnet.manifest
    return load_model(src)


def export(src: str | Path, fmt: str, out: str | Path | None = None, overwrite: bool = False) -> dict:
    """Export ``src`` (run folder or compact file) as ``fmt``; returns the paths written and their sizes."""
    from ..masks.compact import dense_bytes, write_compact
    from ..rundir import save_model

    src = Path(src)
    if not src.exists():
        raise NetsiftError(f"no such run folder or file: {src}")
    out = Path(out) if out else default_out(src, fmt)
    targets = [out.with_suffix(".safetensors"), out.with_suffix(".json")] if fmt == "safetensors" else [out]
    if fmt == "safetensors" and "." in out.with_suffix("").name:
        raise NetsiftError(f"--out {out}: name the safetensors file without extra dots, e.g. dense.safetensors")
    existing = [str(t) for t in targets if t.exists()]
    if existing and not overwrite:
        raise NetsiftError(f"{existing[0]} exists; pass --overwrite to replace it")
    if fmt == "compact":
        if src.is_file():
            raise NetsiftError(f"{src} is a file: compact export needs a run folder of `netsift extract`")
        return write_compact(src, out)
    model, manifest = load_source(src)
    if fmt == "safetensors":
        save_model(out.parent, model, manifest, name=out.with_suffix("").name)
    else:
        from ..onnx_export import export_onnx

        export_onnx(model, (manifest["in_channels"], manifest["image_size"], manifest["image_size"]), out)
    return {"path": str(targets[0]), "bytes": targets[0].stat().st_size, "dense_bytes": dense_bytes(model)}


def run(args: argparse.Namespace) -> int:
    from ..progress import stage

    with stage(f"exporting {args.path} as {args.format}", summary_after=None):  # "netsift export: done" follows
        r = export(args.path, args.format, args.out, args.overwrite)
    if args.format == "compact":
        print(f"wrote {r['path']}: {r['compact_bytes']:,} bytes ({r['codec']}, density {r['density']:.4f}) vs "
              f"{r['dense_bytes']:,} bytes as float32 safetensors: {r['ratio']:.1f}x smaller")
    else:
        print(f"wrote {r['path']}: {r['bytes']:,} bytes (float32 safetensors state: {r['dense_bytes']:,} bytes)")
    return 0
