"""Export a run's network: a compact subnetwork file, a safetensors file or ONNX (``netsift export``).

Default output paths, next to the source: ``RUN_DIR/model.nsc`` (compact), ``RUN_DIR/dense.safetensors`` +
``dense.json`` (safetensors) and ``RUN_DIR/model.onnx`` (onnx); for a compact file ``X.nsc`` as the source,
``X.safetensors`` + ``X.json`` or ``X.onnx``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..checks import check_finite_model, checked
from ..errors import NetsiftError
from ..masks import COMPACT_SUFFIX as SUFFIX
from ..results import Result

if TYPE_CHECKING:
    from torch import nn

FORMATS = ("compact", "safetensors", "onnx")


def default_out(src: Path, fmt: str) -> Path:
    """Where ``export`` writes when ``--out`` is not given."""
    ext = {"compact": SUFFIX, "safetensors": ".safetensors", "onnx": ".onnx"}[fmt]
    if src.is_file():  # a run's own model.nsc: its safetensors export is dense.*, not the run's model.* pair
        own = fmt == "safetensors" and src.stem == "model"
        return src.parent / "dense.safetensors" if own else src.with_suffix(ext)
    return src / ("dense.safetensors" if fmt == "safetensors" else f"model{ext}")


def load_source(src: Path) -> tuple[nn.Module, dict]:
    """The network and manifest of a run folder (``model.safetensors``) or of a compact file."""
    from ..masks.compact import read_compact, rebuild
    from ..rundir import load_model

    if src.is_file():
        subnet = read_compact(src)
        model, manifest = rebuild(subnet, str(src)), subnet.manifest
    else:
        model, manifest = load_model(src)
    check_finite_model(model, f"the network in {src}")  # refused before anything is written
    return model, manifest


@checked  # wrong argument types are one line
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
    from .. import rundir
    from ..masks.compact import dense_bytes, write_compact

    src = Path(src)
    if not src.exists():
        raise NetsiftError(f"no such run folder or file: {src}")
    out = default_out(src, fmt) if out is None else out
    targets = rundir.check_output_file(out, fmt, overwrite, source=src)  # never a file of a run but its own kind
    out = Path(out)
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
                rundir.save_model(out.parent, model, manifest, name=out.with_suffix("").name)
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
