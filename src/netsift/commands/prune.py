"""``netsift prune``: select channels of a trained network, remove the rest physically, fine-tune, measure."""

from __future__ import annotations

import argparse
import dataclasses
import math

from ..config import DataConfig, TrainConfig, add_flags, add_method_options, from_args, method_args
from ..errors import NetsiftError
from ..selection import METHODS, PruneConfig, finetune_defaults
from . import add_run_flags, format_table, out_arg, print_weights


def add_parser(sub) -> None:
    p = sub.add_parser(
        "prune", help="select channels of a trained network and remove the others",
        description="Select the channels worth keeping ("
                    + "; ".join(f"{n}: {m.summary}" for n, m in METHODS.items()) + "), remove the rest for real, "
                    "fine-tune, and write result.json, model.safetensors + model.json (and model.onnx with --onnx).")
    p.add_argument("--checkpoint", metavar="RUN_DIR", help="run folder written by `netsift train` (its data set, "
                                                          "subset and split are used unless --data is given)")
    p.add_argument("--model", help="prune this architecture without a checkpoint (random init; tv:<name> and timm:<name> too), "
                                   "or check that the checkpoint holds it")
    p.add_argument("--width", type=float, default=1.0, help="width multiplier with --model (default: 1.0)")
    p.add_argument("--weights", metavar="FILE", help="with --model: start from the state dict in this local file "
                                                     "(.safetensors, or a torch.save file read with weights_only; "
                                                     "classifier, stem and ViT positions are adapted) (default: none)")
    add_flags(p, PruneConfig, skip=("options",))
    add_method_options(p, METHODS, "method options")
    add_flags(p, DataConfig, defaults={f: None for f in ("data", "val_fraction", "train_subset", "download")},
              default_help={"data": "the checkpoint's, else digits", "val_fraction": "the checkpoint's, else 0.1",
                            "train_subset": "the checkpoint's, else all", "download": "off",
                            "image_size": "the checkpoint's, else the data set's own"})
    add_flags(p, TrainConfig, defaults=finetune_defaults(), skip=("epochs", "patience"))
    add_run_flags(p, data_seed_default="the checkpoint's, else --seed")
    p.set_defaults(run=run)


DATA_FLAGS = ("data", "data_dir", "val_fraction", "train_subset", "download", "image_size")
"""The data settings a checkpoint run records and ``prune`` takes as flags."""


def _run_data(run_dir: str, given: dict) -> DataConfig:
    """The checkpoint run's data settings with the given flags on top (the pipeline refuses any that differ)."""
    from ..rundir import CONFIG, read_json_if
    from ..schema import RUN_CONFIG

    saved = (read_json_if(f"{run_dir}/{CONFIG}", RUN_CONFIG) or {}).get("data")
    base = {k: v for k, v in saved.items() if k in DATA_FLAGS} \
        if isinstance(saved, dict) and saved.get("data") not in (None, "custom") else {}
    return DataConfig(**{**base, **given})


def run(args: argparse.Namespace) -> int:
    from ..config import ModelConfig
    from ..pipelines import prune
    from ..rundir import load_model

    if args.checkpoint is None and args.model is None:
        raise NetsiftError("give --checkpoint RUN_DIR (a netsift train run) or --model NAME")
    if not (math.isfinite(args.width) and 0 < args.width <= 64):
        raise NetsiftError(f"--width must be in (0, 64], got {args.width}")
    cfg = from_args(PruneConfig, args, options=method_args(args, METHODS))
    given = {k: getattr(args, k) for k in DATA_FLAGS if getattr(args, k) is not None}
    data = None
    if args.checkpoint is None:
        data = DataConfig(**{"data": "digits", **given})
    elif given:
        data = _run_data(args.checkpoint, given)
    source = args.checkpoint
    if source is not None and args.model is not None:
        _, manifest = load_model(source)
        if manifest["model"] != args.model:
            raise NetsiftError(f"--checkpoint {source} holds a {manifest['model']}, not a {args.model}")
    elif source is None:
        ModelConfig(args.model, args.width, weights=args.weights)  # validates the name, width and weights path
        source = args.model
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("method", "macs", "options")}
    finetune = from_args(TrainConfig, args, epochs=max(1, cfg.finetune_epochs))
    result = prune(source, data, cfg.method, cfg.macs, finetune=finetune, seed=args.seed, data_seed=args.data_seed,
                   width=args.width, out=out_arg(args), overwrite=args.overwrite, resume=args.resume,
                   force=args.force, log_with=args.log_with, weights=args.weights, **settings, **cfg.options)
    rows = [{"stage": "before", "test_acc": result.source_test_acc, "macs": result.source_macs,
             "params": result.source_params, "lat_b1_ms": result.source_latency_b1_ms,
             "lat_b64_ms": result.source_latency_b64_ms},
            {"stage": f"{result.method} selected", "test_acc": result.test_acc_selected, "macs": result.macs,
             "params": result.params, **({} if result.finetuned else {"lat_b1_ms": result.latency_b1_ms,
                                                                      "lat_b64_ms": result.latency_b64_ms})}]
    if result.finetuned:
        rows.append({"stage": f"fine-tuned {result.finetune_epochs} ep", "test_acc": result.test_acc,
                     "macs": result.macs, "params": result.params, "lat_b1_ms": result.latency_b1_ms,
                     "lat_b64_ms": result.latency_b64_ms})
    print_weights(result)
    print(format_table(rows, ["stage", "test_acc", "macs", "params", "lat_b1_ms", "lat_b64_ms"]))
    note = f"; {result.latency_note}" if result.latency_note else ""
    speed = f"speed-up b64 x{result.speedup_b64:.2f} (timed interleaved{note}), " if result.speedup_b64 else ""
    print(f"MACs x{result.macs_fraction:.3f}, {speed}selection {result.selection_s:.1f} s; run saved in "
          f"{result.run_dir}")
    return 0
