"""``netsift prune``: select channels of a trained network, remove the rest physically, fine-tune, measure."""

from __future__ import annotations

import argparse

from ..config import DataConfig, TrainConfig, add_flags, from_args
from ..selection.pipeline import PruneConfig, finetune_defaults, prune
from . import add_run_flags, format_table


def add_parser(sub) -> None:
    p = sub.add_parser(
        "prune", help="select channels of a trained network and remove the others",
        description="Select the channels worth keeping (GFS or a rival), remove the rest for real, fine-tune, and "
                    "write result.json, model.safetensors + model.json (and model.onnx with --onnx).")
    p.add_argument("--checkpoint", metavar="RUN_DIR", help="run folder written by `netsift train`")
    p.add_argument("--model", help="prune this architecture without a checkpoint (random init; tv:<name> too), "
                                   "or check that the checkpoint holds it")
    p.add_argument("--width", type=float, default=1.0, help="width multiplier with --model (default: 1.0)")
    add_flags(p, PruneConfig)
    add_flags(p, DataConfig)
    add_flags(p, TrainConfig, defaults=finetune_defaults(), skip=("epochs", "patience"))
    add_run_flags(p, resume=False)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    cfg = from_args(PruneConfig, args)
    data_cfg = from_args(DataConfig, args)
    train_cfg = from_args(TrainConfig, args, epochs=max(1, cfg.finetune_epochs))
    result = prune(cfg, data_cfg, train_cfg, args.checkpoint, args.model, args.width, args.seed, args.out,
                   args.overwrite)
    row = {"stage": "before", "test_acc": result["before"]["test_acc"], "macs": result["before"]["macs"],
           "params": result["before"]["params"], "lat_b1_ms": result["before"]["latency_ms"]["b1_ms"],
           "lat_b64_ms": result["before"]["latency_ms"]["b64_ms"]}
    rows = [row, {"stage": f"{result['method']} selected", "test_acc": result["test_acc_selected"],
                  "macs": result["macs"], "params": result["params"]},
            {"stage": "fine-tuned", "test_acc": result["test_acc"], "macs": result["macs"], "params": result["params"],
             "lat_b1_ms": result["latency_ms"]["b1_ms"], "lat_b64_ms": result["latency_ms"]["b64_ms"]}]
    print(format_table(rows, ["stage", "test_acc", "macs", "params", "lat_b1_ms", "lat_b64_ms"]))
    print(f"MACs x{result['macs_fraction']:.3f}, speed-up b64 x{result['speedup_b64']:.2f}, "
          f"selection {result['selection_s']:.1f} s; run saved in {result['run_dir']}")
    return 0
