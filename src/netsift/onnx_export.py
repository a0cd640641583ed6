"""ONNX export of a (pruned) network, checked against onnxruntime when it is installed."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
from torch import nn

from .errors import NetsiftError


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], path: str | Path, check: bool = True,
                opset: int = 17) -> Path:
    """Write ``model`` (eval mode, dynamic batch size) as ONNX to ``path``; return the path.

    With ``check``, the exported graph is run with onnxruntime on a random batch and compared with PyTorch.

    Raises:
        NetsiftError: the export fails, or onnxruntime's outputs differ from PyTorch's.
    """
    path = Path(path)
    model = copy.deepcopy(model).cpu().eval()
    x = torch.randn(2, *input_shape)
    from .checkpoint import clean_stale_temps

    if path.parent.is_dir():
        clean_stale_temps(path)  # what killed exports of this file left behind
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"  # written and checked beside, then renamed into place
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.onnx.export(model, (x,), str(tmp), input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=opset,
                              dynamo=False)
        except OSError as e:
            raise NetsiftError(f"cannot write {path}: {e.strerror or e}") from None
        except Exception as e:  # the exporter raises many exception types
            raise NetsiftError(f"ONNX export failed: {str(e).splitlines()[0]}") from None
        if check:
            _check(model, tmp, path, input_shape)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _check(model: nn.Module, tmp: Path, path: Path, input_shape: tuple[int, ...]) -> None:
    try:
        import onnxruntime as ort
    except ImportError:
        return
    sess = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    x = torch.randn(3, *input_shape)
    got = torch.from_numpy(sess.run(None, {"input": x.numpy()})[0])
    with torch.no_grad():
        want = model(x)
    if not torch.allclose(got, want, atol=1e-3, rtol=1e-3):
        raise NetsiftError(f"ONNX export of {path} does not match PyTorch (max diff "
                           f"{float((got - want).abs().max()):.3g})")
