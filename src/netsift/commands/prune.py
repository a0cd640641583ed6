"""``netsift prune``: select channels of a trained network, remove the rest physically, fine-tune, measure."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import DataConfig, ModelConfig, TrainConfig, add_flags, add_method_options, from_args, method_args
from ..errors import NetsiftError
from ..selection import METHODS, PruneConfig, finetune_defaults
from . import add_run_flags, format_table, print_weights, run_options


def add_parser(sub) -> None:
    p = sub.add_parser(
        "prune", help="select channels of a trained network and remove the others",
        description="Select the channels worth keeping ("
                    + "; ".join(f"{n}: {m.summary}" for n, m in METHODS.items()) + "), remove the rest for real, "
                    "fine-tune, and write result.json, model.safetensors + model.json (and model.onnx with --onnx).")
    p.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help="run folder written by `netsift train` (its data "
                                                                 "set, subset and split are used unless --data is "
                                                                 "given), as with eval and export")
    p.add_argument("--checkpoint", metavar="RUN_DIR", help="the same, as a flag")
    add_flags(p, ModelConfig, defaults={"model": None}, skip=("pretrained",),
              default_help={"model": "the checkpoint's; without --checkpoint: prune this architecture at random init"})
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


def run(args: argparse.Namespace) -> int:
    from ..pipelines import PruneSpec, Source, execute

    if args.run_dir is not None and args.checkpoint not in (None, args.run_dir):
        raise NetsiftError(f"two run folders: {args.run_dir} and --checkpoint {args.checkpoint}; give one")
    args.checkpoint = args.checkpoint if args.run_dir is None else args.run_dir
    if args.checkpoint is not None and not Path(args.checkpoint).is_dir():
        what = "is a file, not a run folder" if Path(args.checkpoint).exists() else "does not exist"
        raise NetsiftError(f"run folder {args.checkpoint} {what} (give a folder written by netsift train)")
    if args.checkpoint is None and args.model is None:
        raise NetsiftError("give a run folder (netsift prune RUN_DIR, or --checkpoint RUN_DIR: a netsift train run) "
                           "or --model NAME")
    model_cfg = from_args(ModelConfig, args)
    given = {k: getattr(args, k) for k in DATA_FLAGS if getattr(args, k) is not None}
    if args.checkpoint is None:
        source = Source(model_cfg.model, DataConfig(**{"data": "digits", **given}), model_cfg.width, model_cfg.weights)
    else:
        source = Source(args.checkpoint, given or None, model_cfg.width, model_cfg.weights, arch=model_cfg.model)
    cfg = from_args(PruneConfig, args, options=method_args(args, METHODS))
    result = execute(PruneSpec(source, cfg, from_args(TrainConfig, args), run_options(args)))
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
