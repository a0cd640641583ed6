"""Export a run's network: a compact subnetwork file, a safetensors file or ONNX (``netsift export``).

Default output paths, next to the source: ``RUN_DIR/model.nsc`` (compact), ``RUN_DIR/dense.safetensors`` +
``dense.json`` (safetensors) and ``RUN_DIR/model.onnx`` (onnx); for a compact file ``X.nsc`` as the source,
``X.safetensors`` + ``X.json`` or ``X.onnx``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import NetsiftError
from ..masks import COMPACT_SUFFIX as SUFFIX
from ..results import Result

if TYPE_CHECKING:
    from torch import nn

FORMATS = ("compact", "safetensors", "onnx")


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


def export(src: str | Path, fmt: str = "compact", out: str | Path | None = None, overwrite: bool = False) -> Result:
    """Export ``src`` (a run folder, or a compact file for safetensors/onnx) as ``fmt``.

    Args:
        src: a run folder (``compact`` needs one of ``netsift extract``) or a compact ``.nsc`` file.
        fmt: ``compact`` (architecture + init seed + one bit per weight + per-layer scales), ``safetensors``
            (the dense weights + JSON manifest, loads with :func:`netsift.load_model`) or ``onnx``.
        out: the output file (default: next to the source, see the module docstring).
        overwrite: replace an existing output file.

    Returns:
        a :class:`~netsift.results.Result` (``command`` ``export``): ``path`` written, its size ``bytes``, the
        float32 safetensors size ``dense_bytes``; for compact also ``ratio``, ``codec`` and ``density``.

    Raises:
        NetsiftError: a missing source, a bad output path, or an output that exists without ``overwrite``.
    """
    if fmt not in FORMATS:
        raise NetsiftError(f"unknown export format {fmt!r}; choose from: {', '.join(FORMATS)}")
    from ..masks.compact import dense_bytes, write_compact
    from ..rundir import save_model

    src = Path(src)
    if not src.exists():
        raise NetsiftError(f"no such run folder or file: {src}")
    out = Path(out) if out else default_out(src, fmt)
    targets = [out.with_suffix(".safetensors"), out.with_suffix(".json")] if fmt == "safetensors" else [out]
    if fmt == "safetensors" and "." in out.with_suffix("").name:
        raise NetsiftError(f"--out {out}: name the safetensors file without extra dots, e.g. dense.safetensors")
    for t in {out, *targets}:
        if t.is_symlink():
            raise NetsiftError(f"--out {t} is a symbolic link; give the real file name")
        if t.is_dir():
            raise NetsiftError(f"--out {t} is a folder; give a file name (e.g. {t / default_out(src, fmt).name})")
    if src.is_dir() and src.resolve() in {t.resolve() for t in targets}:
        raise NetsiftError(f"--out {out} is a file of the run being exported")
    if src.is_dir() and fmt == "safetensors" and out.with_suffix("").name in ("model", "checkpoint", "best", "subnet",
                                                                             "selection"):
        if out.parent.resolve() == src.resolve():
            raise NetsiftError(f"--out {out} would replace the run's own {out.with_suffix('').name} files")
    existing = [str(t) for t in targets if t.exists()]
    if existing and not overwrite:
        raise NetsiftError(f"{existing[0]} exists; pass --overwrite to replace it")
    if fmt == "compact" and src.is_file():
        raise NetsiftError(f"{src} is a file: compact export needs a run folder of `netsift extract`")
    with _lock_if_run(out.parent):
        if fmt == "compact":
            r = write_compact(src, out)
            fields = {"path": r["path"], "bytes": r["compact_bytes"], "dense_bytes": r["dense_bytes"],
                      "ratio": r["ratio"], "codec": r["codec"], "density": r["density"]}
        else:
            model, manifest = load_source(src)
            if fmt == "safetensors":
                save_model(out.parent, model, manifest, name=out.with_suffix("").name)
            else:
                from ..onnx_export import export_onnx

                export_onnx(model, (manifest["in_channels"], manifest["image_size"], manifest["image_size"]), out)
            fields = {"path": str(targets[0]), "bytes": targets[0].stat().st_size, "dense_bytes": dense_bytes(model)}
    return Result.from_dict({"command": "export", "format": fmt, "run_dir": str(src), **fields})


def _lock_if_run(folder: Path):
    """The run folder's lock while an export writes into it (no other netsift process writes it meanwhile)."""
    import contextlib

    from ..rundir import RunLock, is_run

    if not is_run(folder):
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def held():
        lock = RunLock(folder)
        try:
            yield
        finally:
            lock.release()

    return held()
