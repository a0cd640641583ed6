"""Export a run's network: a compact subnetwork file, a safetensors file or ONNX (``netsift export``).

Default output paths, next to the source: ``RUN_DIR/model.nsc`` (compact), ``RUN_DIR/dense.safetensors`` +
``dense.json`` (safetensors) and ``RUN_DIR/model.onnx`` (onnx); for a compact file ``X.nsc`` as the source,
``X.safetensors`` + ``X.json`` or ``X.onnx``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import NetsiftError
from ..masks import COMPACT_SUFFIX as SUFFIX

if TYPE_CHECKING:
    from torch import nn

FORMATS = ("compact", "safetensors", "onnx")


def default_out(src: Path, fmt: str) -> Path:
    """Where ``export`` writes when ``--out`` is not given."""
    ext = {"compact": SUFFIX, "safetensors": ".safetensors", "onnx": ".onnx"}[fmt]
    if src.is_file():
        return src.with_suffix(ext)
    return src / ("dense.safetensors" if fmt == "safetensors" else f"model{ext}")


def export(src: Any, fmt: str = "compact", out: str | Path | None = None, overwrite: bool = False, *,
           model: nn.Module | None = None, input_shape: tuple[int, ...] | None = None) -> dict:
    """Export ``src`` (a run folder, a compact file for safetensors/onnx, or what a pipeline returned) as ``fmt``.

    Args:
        src: a run folder (``compact`` needs one of ``netsift extract``), a compact ``.nsc`` file, the
            :class:`~netsift.results.Result` a pipeline returned (``compact``: the one of ``netsift.extract``), or
            an ``nn.Module`` (safetensors, onnx).
        fmt: ``compact`` (architecture + init seed + one bit per weight + per-layer scales), ``safetensors``
            (the dense weights + JSON manifest, loads with :func:`netsift.load_model`) or ``onnx``.
        out: the output file (default: next to the source, see the module docstring; required for a network
            held in memory without a run folder).
        overwrite: replace an existing output file.
        model: a fresh instance of your own module, for a run folder or compact file made from it (ONNX, and the
            checks of a compact export).
        input_shape: the shape of one sample, for ONNX where the source does not record it.

    Returns:
        the path written and its size in bytes (``path``, ``bytes`` or ``compact_bytes``, ``dense_bytes``, ...).

    Raises:
        NetsiftError: a missing source, a bad output path, or an output that exists without ``overwrite``.
    """
    if fmt not in FORMATS:
        raise NetsiftError(f"unknown export format {fmt!r}; choose from: {', '.join(FORMATS)}")
    from ..masks.compact import write_compact
    from ..saved import export_source

    from ..results import Result

    if isinstance(src, Result) and out is None and src.run_dir:
        src = src.run_dir  # its run folder: the default output goes next to it
    if not isinstance(src, (str, Path)):
        return _export_object(src, fmt, out, overwrite, model, input_shape)
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
            return write_compact(src, out, model)
        return export_source(src, fmt, out, model, input_shape)


def _export_object(src: Any, fmt: str, out: str | Path | None, overwrite: bool, model, input_shape) -> dict:
    """Export a result or module held in memory (no run folder to write next to: ``out`` is required)."""
    from ..saved import export_object

    if out is None:
        raise NetsiftError("give the output file (out=...) to export a network held in memory")
    out = Path(out)
    targets = [out.with_suffix(".safetensors"), out.with_suffix(".json")] if fmt == "safetensors" else [out]
    for t in {out, *targets}:
        if t.is_symlink() or t.is_dir():
            raise NetsiftError(f"--out {t} is a {'symbolic link' if t.is_symlink() else 'folder'}; give a file name")
    existing = [str(t) for t in targets if t.exists()]
    if existing and not overwrite:
        raise NetsiftError(f"{existing[0]} exists; pass --overwrite to replace it")
    return export_object(src, fmt, out, model, input_shape)


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
