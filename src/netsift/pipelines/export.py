"""Export a run's network: a compact subnetwork file, a safetensors file or ONNX (``netsift export``).

Default output paths, next to the source: ``RUN_DIR/model.nsc`` (compact), ``RUN_DIR/dense.safetensors`` +
``dense.json`` (safetensors) and ``RUN_DIR/model.onnx`` (onnx); for a compact file ``X.nsc`` as the source,
``X.safetensors`` + ``X.json`` or ``X.onnx``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import rundir
from ..checks import checked
from ..errors import NetsiftError
from ..masks import COMPACT_SUFFIX as SUFFIX
from ..masks.compact import write_compact
from ..results import Result
from ..saved import export_object, export_source

if TYPE_CHECKING:
    from torch import nn

FORMATS = ("compact", "safetensors", "onnx")


def default_out(src: Path, fmt: str) -> Path:
    """Where ``export`` writes when ``--out`` is not given."""
    ext = {"compact": SUFFIX, "safetensors": ".safetensors", "onnx": ".onnx"}[fmt]
    if src.is_file():  # a run's own model.nsc: its safetensors export is dense.*, not the run's model.* pair
        own = fmt == "safetensors" and src.stem == "model" and rundir.is_run(src.parent)
        return src.parent / "dense.safetensors" if own else src.with_suffix(ext)
    return src / ("dense.safetensors" if fmt == "safetensors" else f"model{ext}")


@checked  # wrong argument types are one line
def export(src: Any, fmt: str = "compact", out: str | Path | None = None, overwrite: bool = False, *,
           model: nn.Module | None = None, input_shape: tuple[int, ...] | None = None) -> Result:
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
        a :class:`~netsift.results.Result` (``command`` ``export``): ``path`` written, its size ``bytes``, the
        float32 safetensors size ``dense_bytes``; for compact also ``ratio``, ``codec`` and ``density``.

    Raises:
        NetsiftError: a missing source, a bad output path, or an output that exists without ``overwrite``.
    """
    if fmt not in FORMATS:
        raise NetsiftError(f"unknown export format {fmt!r}; choose from: {', '.join(FORMATS)}")
    if isinstance(src, Result) and out is None and src.run_dir:
        src = src.run_dir  # its run folder: the default output goes next to it
    if not isinstance(src, (str, Path)):
        return _export_object(src, fmt, out, overwrite, model, input_shape)
    src = Path(src)
    if not src.exists():
        raise NetsiftError(f"no such run folder or file: {src}")
    out = default_out(src, fmt) if out is None else out
    rundir.check_output_file(out, fmt, overwrite, source=src)  # never a file of a run but its own kind
    out = Path(out)
    if fmt == "compact" and src.is_file():
        raise NetsiftError(f"{src} is a file: compact export needs a run folder of `netsift extract`")
    with _lock_if_run(out.parent):
        if fmt == "compact":
            r = write_compact(src, out, model)
        else:
            r = export_source(src, fmt, out, model, input_shape)
    return _result(fmt, src, r)


def _export_object(src: Any, fmt: str, out: str | Path | None, overwrite: bool, model, input_shape) -> Result:
    """Export a result or module held in memory (no run folder to write next to: ``out`` is required)."""
    if out is None:
        raise NetsiftError("give the output file (out=...) to export a network held in memory")
    rundir.check_output_file(out, fmt, overwrite)  # a folder, a link, a run's own file or an existing file: refused
    return _result(fmt, None, export_object(src, fmt, Path(out), model, input_shape))


def _result(fmt: str, src: Path | None, r: dict) -> Result:
    """The :class:`Result` of an export from what the writer returned."""
    fields = {"path": r["path"], "bytes": r.get("compact_bytes", r.get("bytes")), "dense_bytes": r["dense_bytes"]}
    if fmt == "compact":
        fields.update(ratio=r["ratio"], codec=r["codec"], density=r["density"])
    return Result.from_dict({"command": "export", "format": fmt, "run_dir": str(src) if src else None, **fields})


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
