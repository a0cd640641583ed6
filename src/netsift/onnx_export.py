"""ONNX export of a (pruned) network, checked against onnxruntime when it is installed.

The current exporter (``torch.onnx.export(..., dynamo=True)``, torch.export-based) is tried first; where it fails
(or its graph does not match PyTorch in onnxruntime) the legacy TorchScript exporter is the fallback, checked the
same way. Either way the batch dimension is dynamic and the file is written beside the target and renamed into
place only once it was checked.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from . import progress
from .errors import NetsiftError

EXPORTERS = ("auto", "dynamo", "legacy")
"""``auto``: the current exporter, the legacy one where it fails; or one of them only."""


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], path: str | Path, check: bool = True,
                opset: int = 18, exporter: str = "auto") -> Path:
    """Write ``model`` (eval mode, dynamic batch size) as ONNX to ``path``; return the path.

    With ``check``, the exported graph is run with onnxruntime on a random batch and compared with PyTorch.
    ``exporter``: see :data:`EXPORTERS`; the one used is recorded as ``export_onnx.last_exporter``.

    Raises:
        NetsiftError: every exporter tried fails, or onnxruntime's outputs differ from PyTorch's (one line naming
            the exporters' errors).
    """
    if exporter not in EXPORTERS:
        raise NetsiftError(f"unknown ONNX exporter {exporter!r}; choose from: {', '.join(EXPORTERS)}")
    path = Path(path)
    model = copy.deepcopy(model).cpu().eval()
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    x = torch.randn(2, *input_shape, dtype=dtype)
    from .checkpoint import clean_stale_temps

    if path.parent.is_dir():
        clean_stale_temps(path)  # what killed exports of this file left behind
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"  # written and checked beside, then renamed into place
    tried = ["dynamo", "legacy"] if exporter == "auto" else [exporter]
    errors = []
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise NetsiftError(f"cannot write {path}: {e.strerror or e}") from None
        for name in tried:
            try:
                with progress.stage(f"exporting ONNX ({name} exporter)"):
                    _EXPORT[name](model, x, tmp, opset)
                if check:
                    _check(model, tmp, path, input_shape, dtype)
            except NetsiftError as e:
                errors.append(f"{name}: {e}")
                continue
            except OSError as e:
                raise NetsiftError(f"cannot write {path}: {e.strerror or e}") from None
            except Exception as e:  # the exporters raise many exception types
                errors.append(f"{name}: {type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}")
                continue
            os.replace(tmp, path)
            export_onnx.last_exporter = name
            return path
        raise NetsiftError("ONNX export failed: " + "; ".join(errors))
    finally:
        tmp.unlink(missing_ok=True)


export_onnx.last_exporter = None


def _dynamo(model: nn.Module, x: torch.Tensor, out: Path, opset: int) -> None:
    batch = torch.export.Dim("batch", min=1, max=2**20)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (x,), dynamo=True, input_names=["input"], output_names=["logits"],
                                    dynamic_shapes=({0: batch},), opset_version=opset, verbose=False,
                                    optimize=True)
        program.save(str(out))


def _legacy(model: nn.Module, x: torch.Tensor, out: Path, opset: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its deprecation notice: the current exporter was tried first
        torch.onnx.export(model, (x,), str(out), input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=min(opset, 17),
                          dynamo=False)


_EXPORT = {"dynamo": _dynamo, "legacy": _legacy}


def _check(model: nn.Module, tmp: Path, path: Path, input_shape: tuple[int, ...], dtype: torch.dtype) -> None:
    try:
        import onnxruntime as ort
    except ImportError:
        return
    try:
        sess = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime cannot load what the exporter wrote
        raise NetsiftError(f"onnxruntime cannot load it: {(str(e).strip().splitlines() or [''])[0]}") from None
    x = torch.randn(3, *input_shape, dtype=dtype)  # another batch size than the export's: the batch is dynamic
    got = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
    with torch.no_grad():
        want = model(x)
    if got.shape != want.shape or not torch.allclose(got.to(want.dtype), want, atol=1e-3, rtol=1e-3):
        diff = float((got.to(want.dtype) - want).abs().max()) if got.shape == want.shape else float("nan")
        raise NetsiftError(f"ONNX export of {path} does not match PyTorch in onnxruntime (max diff {diff:.3g})")
