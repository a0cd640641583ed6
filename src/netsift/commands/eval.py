"""``netsift eval RUN_DIR|FILE``: rebuild a saved network (run folder or compact file) and measure it on its data."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..checkpoint import read_json
from ..config import DataConfig
from ..errors import NetsiftError
from ..masks.compact import read_compact, rebuild
from ..measure import latency
from ..runs import load_bundle, load_model, measure_model
from . import format_table


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="re-evaluate a saved run", description="Rebuild a saved network and measure it.")
    p.add_argument("path", metavar="RUN_DIR|FILE", help="a run folder written by train, extract or prune, or a compact "
                                                    "file written by `netsift export`")
    p.add_argument("--data", help="data set to evaluate on (default: the run's)")
    p.add_argument("--data-dir", help="where data files live")
    p.add_argument("--latency", action="store_true", help="also measure CPU latency at batch 1 and 64")
    p.set_defaults(run=run)


def evaluate_run(path: str | Path, data: str | None = None, data_dir: str | None = None) -> dict:
    """Measure the network saved in run folder or compact file ``path`` on its test split; returns measurements."""
    path = Path(path)
    if not path.exists():
        raise NetsiftError(f"no such run folder or file: {path}")
    if path.is_file():
        return evaluate_compact(path, data, data_dir)
    config = read_json(path / "config.json", "run config")
    model, manifest = load_model(path)
    saved = path / "result.json"
    saved_acc = read_json(saved, "result").get("test_acc") if saved.is_file() else None
    return _measure(path, model, manifest, _data_config(config["data"], data, data_dir), config.get("seed", 0),
                    saved_acc)


def evaluate_compact(path: Path, data: str | None = None, data_dir: str | None = None) -> dict:
    """Rebuild the subnetwork of compact file ``path`` and measure it (its data set unless ``data`` is given)."""
    subnet = read_compact(path)
    model = rebuild(subnet, str(path))
    saved = subnet.info.get("data_config") or subnet.info.get("data")
    if not saved and not data:
        raise NetsiftError(f"{path} does not record its data set; pass --data")
    cfg = _data_config(saved if isinstance(saved, dict) else {"data": saved or data}, data, data_dir)
    return _measure(path, model, subnet.manifest, cfg, subnet.info.get("seed", 0), subnet.info.get("test_acc"))


def _data_config(saved: dict, data: str | None, data_dir: str | None) -> DataConfig:
    try:
        return DataConfig(**{**saved, **({"data": data} if data else {}), **({"data_dir": data_dir} if data_dir else {})})
    except TypeError as e:
        raise NetsiftError(f"saved data settings are malformed: {e}") from None


def _measure(path: Path, model, manifest: dict, data_cfg: DataConfig, seed: int, saved_acc: float | None) -> dict:
    bundle = load_bundle(data_cfg, seed)
    if (bundle.in_channels, bundle.image_size, bundle.num_classes) != (
            manifest["in_channels"], manifest["image_size"], manifest["num_classes"]):
        raise NetsiftError(f"data {data_cfg.data} ({bundle.in_channels}x{bundle.image_size}px, {bundle.num_classes} "
                           f"classes) does not fit the saved model ({manifest['in_channels']}x{manifest['image_size']}px, "
                           f"{manifest['num_classes']} classes)")
    result = {"run": str(path), "model": manifest["model"], "data": data_cfg.data, **measure_model(model, bundle),
              "saved_test_acc": saved_acc}
    result["_model"], result["_bundle"] = model, bundle
    return result


def run(args: argparse.Namespace) -> int:
    result = evaluate_run(args.path, args.data, args.data_dir)
    model, bundle = result.pop("_model"), result.pop("_bundle")
    columns = ["model", "data", "test_acc", "saved_test_acc", "val_acc", "density", "params", "macs"]
    if args.latency:
        for bs in (1, 64):
            result[f"latency_ms_b{bs}"] = latency(model, bundle.input_shape, batch_size=bs)["median_ms"]
        columns += ["latency_ms_b1", "latency_ms_b64"]
    print(format_table([result], columns))
    return 0
