"""``netsift.evaluate``: rebuild a saved network (run folder or compact file) and measure it again on its data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import progress as _progress
from .. import rundir
from ..checks import check_finite_model, checked
from ..config import DataConfig
from ..data import load_bundle
from ..errors import NetsiftError
from ..masks.compact import read_compact, rebuild
from ..measure import measure
from ..results import Result


@checked  # wrong argument types are one line
def evaluate(path: str | Path, data: str | None = None, data_dir: str | None = None,
             latency_threads: int | None = None, progress: bool | None = None,
             image_size: int | None = None) -> Result:
    """Measure the network saved in run folder or compact file ``path`` on its own data (or ``data``).

    The images are resized as the run recorded (``image_size`` overrides it; the network must take the size).

    ``progress``: report the slow steps (measurement, latency timing) on stderr (``None``: as the caller).

    Returns:
        a :class:`~netsift.results.Result` (``command`` ``evaluate``) with the measurements of
        :func:`netsift.measure.measure`, ``.model`` (the network), ``arch``, ``data``, ``run_dir`` (``path``)
        and ``saved_test_acc`` (what the run recorded, to compare).
    """
    with _progress.session(progress):
        path = Path(path)
        if not path.exists():
            raise NetsiftError(f"no such run folder or file: {path}")
        given = {"data": data, "data_dir": data_dir, "image_size": image_size}
        if path.is_file():
            model, manifest, cfg, seed, saved_acc = _compact(path, given)
        else:
            saved = rundir.read_run(path)
            if not saved.config:
                raise NetsiftError(f"{path} is not a run folder ({rundir.CONFIG} missing)")
            model, manifest = rundir.load_model(path)
            cfg, seed, saved_acc = saved.data_config(given), saved.data_seed, saved.test_acc
        check_finite_model(model, f"the network in {path}")  # no silent NaN accuracy
        bundle = load_bundle(cfg, seed)
        want = (manifest["in_channels"], manifest["image_size"], manifest["num_classes"])
        if (bundle.in_channels, bundle.image_size, bundle.num_classes) != want:
            raise NetsiftError(f"data {cfg.data} ({bundle.in_channels}x{bundle.image_size}px, {bundle.num_classes} "
                               f"classes) does not fit the saved model ({want[0]}x{want[1]}px, {want[2]} classes)")
        fields = {"command": "evaluate", "run_dir": str(path), "model": manifest["model"], "data": cfg.data,
                  **measure(model, bundle, latency_threads=latency_threads), "saved_test_acc": saved_acc}
        return Result.from_dict(fields, model=model)


def _compact(path: Path, given: dict[str, Any]) -> tuple:
    """(network, manifest, data settings, split seed, recorded test accuracy) of a compact file."""
    subnet = read_compact(path)
    model = rebuild(subnet, str(path))
    saved = subnet.info.get("data_config") or subnet.info.get("data")
    if not saved and not given["data"]:
        raise NetsiftError(f"{path} does not record its data set; pass --data")
    saved = saved if isinstance(saved, dict) else {"data": saved or given["data"]}
    try:
        values = {k: v for k, v in saved.items() if k in rundir.DATA_KEYS}
        cfg = DataConfig(**{**values, **{k: v for k, v in given.items() if v is not None}})
    except TypeError as e:
        raise NetsiftError(f"saved data settings are malformed: {e}") from None
    return model, subnet.manifest, cfg, subnet.info.get("seed", 0), subnet.info.get("test_acc")
