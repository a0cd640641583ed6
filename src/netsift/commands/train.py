"""``netsift train``: dense training of a zoo model (the starting point of pruning, and the dense baseline)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..checkpoint import atomic_write_json
from ..config import DataConfig, ModelConfig, TrainConfig, add_flags, from_args
from ..runs import (asdicts, build_for, check_resume_config, default_run_name, load_bundle, measure_model,
                    model_manifest, prepare_out_dir, save_model, write_result)
from ..training import fit
from . import add_run_flags, format_table


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a dense network", description="Train a dense network and save it as a run.")
    add_flags(p, ModelConfig)
    add_flags(p, DataConfig)
    add_flags(p, TrainConfig)
    add_run_flags(p)
    p.set_defaults(run=run)


def train(model_cfg: ModelConfig, data_cfg: DataConfig, train_cfg: TrainConfig, seed: int = 0,
          out: str | Path | None = None, overwrite: bool = False, resume: bool = False) -> dict:
    """Train a dense network and write its run folder; returns the ``result.json`` contents."""
    t0 = time.perf_counter()
    config = {"command": "train", "method": "dense", "seed": seed,
              **asdicts(model=model_cfg, data=data_cfg, train=train_cfg)}
    bundle = load_bundle(data_cfg, seed)
    model = build_for(model_cfg, bundle, seed)
    run_dir = prepare_out_dir(out, overwrite, resume, default_run_name("train", model_cfg, data_cfg, train_cfg))
    if resume:
        check_resume_config(run_dir, config)
    atomic_write_json(run_dir / "config.json", config)
    fitted = fit(model, bundle, train_cfg, run_dir, seed=seed, resume=resume, desc=f"train {model_cfg.model}")
    save_model(run_dir, model, model_manifest(model_cfg, bundle))
    result = {"command": "train", "method": "dense", "model": model_cfg.model, "data": data_cfg.data, "seed": seed,
              **measure_model(model, bundle, with_latency=True), "wall_s": time.perf_counter() - t0, "best_epoch": fitted.best_epoch,
              "epochs_run": len(fitted.history), "stopped_early": fitted.stopped_early,
              "train_images_per_s": fitted.images_per_s, "run_dir": str(run_dir)}
    return write_result(run_dir, result)


def run(args: argparse.Namespace) -> int:
    result = train(from_args(ModelConfig, args), from_args(DataConfig, args), from_args(TrainConfig, args),
                   args.seed, args.out, args.overwrite, args.resume)
    print(format_table([result], ["model", "data", "test_acc", "val_acc", "params", "macs", "best_epoch", "wall_s"]))
    print(f"run saved in {result['run_dir']}")
    return 0
