"""``netsift.evaluate``: rebuild a saved network (run folder, compact file, returned result) and measure it on its
data or yours (:mod:`netsift.saved` finds both)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from .. import progress as _progress
from ..checks import check_finite_model, checked
from ..measure import measure
from ..results import Result
from ..saved import eval_bundle, open_network


@checked  # wrong argument types are one line
def evaluate(path: Any, data: Any = None, data_dir: str | None = None, latency_threads: int | None = None,
             progress: bool | None = None, image_size: int | None = None, *, model: nn.Module | None = None,
             images: str | Path | None = None, mean: tuple[float, ...] | None = None,
             std: tuple[float, ...] | None = None, input_shape: tuple[int, ...] | None = None) -> Result:
    """Measure a saved or returned network on its own data, or on the data you give.

    Args:
        path: a run folder, a compact ``.nsc`` file, the :class:`~netsift.results.Result` a pipeline returned, or
            an ``nn.Module`` (then give ``input_shape`` unless it is a zoo network).
        data: a data-set name, a ``DataConfig``, a bundle, or your ``DataLoader``\\ s / data sets as a dict (a
            ``test`` split is enough); default: the data the source records (a built-in data set).
        data_dir: where a built-in data set's files are.
        image_size: resize a built-in data set's images (default: as the run recorded).
        model: a fresh instance of your own module, for a run folder or compact file made from it.
        images: an image folder ``DIR/<class>/*`` to measure on (converted to the network's channels and size,
            pixels in [0, 1], normalised with ``mean``/``std`` when given).
        progress: report the slow steps (measurement, latency timing) on stderr (``None``: as the caller).

    Returns:
        a :class:`~netsift.results.Result` (``command`` ``evaluate``) with the measurements of
        :func:`netsift.measure.measure`, ``.model`` (the network), ``arch``, ``data``, ``run_dir`` (the source)
        and ``saved_test_acc`` (what the source recorded, to compare).
    """
    with _progress.session(progress):
        saved = open_network(path, model, input_shape)
        check_finite_model(saved.model, f"the network in {saved.origin}")  # no silent NaN accuracy
        bundle = eval_bundle(saved, data, data_dir, image_size, images, mean, std)
        fields = {"command": "evaluate", "run_dir": saved.origin, "model": saved.arch, "data": bundle.name,
                  **measure(saved.model, bundle, latency_threads=latency_threads), "saved_test_acc": saved.saved_acc}
        return Result.from_dict(fields, model=saved.model)
