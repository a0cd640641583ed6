"""``netsift.evaluate``: rebuild a saved network (run folder or compact file) and measure it again on its data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..checks import check_finite_model, checked
from .. import rundir
from ..config import DataConfig
from ..data import load_bundle
from ..errors import NetsiftError
from ..masks.compact import read_compact, rebuild
from ..measure import measure
from ..progress import observed
from ..schema import RESULT_FILE


@checked  # issue 22: wrong argument types (nested configs too) are one line
@observed
def evaluate(path: str | Path, data: str | None = None, data_dir: str | None = None,
             latency_threads: int | None = None, progress: bool | None = None,
             image_size: int | None = None) -> dict[str, Any]:
    """Measure the network saved in run folder or compact file ``path`` on its own data (or ``data``).

    The images are resized as the run recorded (``image_size`` overrides it; the network must take the size).

    ``progress``: report the slow steps (measurement, latency timing) on stderr (``None``: as the caller).

    Returns the measurements of :func:`netsift.measure.measure` plus ``model`` (the network), ``arch``,
    ``data``, ``run`` and ``saved_test_acc`` (what the run recorded, to compare).
    """
    path = Path(path)
    if not path.exists():
        raise NetsiftError(f"no such run folder or file: {path}")
    if path.is_file():
        subnet = read_compact(path)
        model = rebuild(subnet, str(path))
        manifest = subnet.manifest
        saved = subnet.info.get("data_config") or subnet.info.get("data")
        if not saved and not data:
            raise NetsiftError(f"{path} does not record its data set; pass --data")
        saved = saved if isinstance(saved, dict) else {"data": saved or data}
        seed, saved_acc = subnet.info.get("seed", 0), subnet.info.get("test_acc")
    else:
        if not (path / rundir.CONFIG).is_file():
            raise NetsiftError(f"{path} is not a run folder ({rundir.CONFIG} missing)")
        config = rundir.read_run_config(path)
        model, manifest = rundir.load_model(path)
        saved = config.get("data")
        if not isinstance(saved, dict) or saved.get("data") in (None, "custom"):
            if not data:
                raise NetsiftError(f"{path} does not record a built-in data set; pass --data")
            saved = {"data": data}
        seed = config.get("data_seed", config.get("seed", 0))
        result = rundir.read_json_if(path / rundir.RESULT, RESULT_FILE)
        saved_acc = result.get("test_acc") if isinstance(result, dict) else None
    check_finite_model(model, f"the network in {path}")  # issue 22: no silent NaN accuracy
    cfg = _data_config(saved, data, data_dir, image_size)
    bundle = load_bundle(cfg, seed)
    want = (manifest["in_channels"], manifest["image_size"], manifest["num_classes"])
    if (bundle.in_channels, bundle.image_size, bundle.num_classes) != want:
        raise NetsiftError(f"data {cfg.data} ({bundle.in_channels}x{bundle.image_size}px, {bundle.num_classes} "
                           f"classes) does not fit the saved model ({want[0]}x{want[1]}px, {want[2]} classes)")
    return {"run": str(path), "arch": manifest["model"], "data": cfg.data,
            **measure(model, bundle, latency_threads=latency_threads), "saved_test_acc": saved_acc, "model": model}


def _data_config(saved: dict, data: str | None, data_dir: str | None, image_size: int | None = None) -> DataConfig:
    known = {"data", "data_dir", "val_fraction", "train_subset", "download", "image_size"}
    given = {"data": data, "data_dir": data_dir, "image_size": image_size}
    try:
        values = {k: v for k, v in saved.items() if k in known}
        return DataConfig(**{**values, **{k: v for k, v in given.items() if v is not None}})
    except TypeError as e:
        raise NetsiftError(f"saved data settings are malformed: {e}") from None
