"""``netsift extract``: learn a weight mask over a frozen random network and save the extracted subnetwork."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ..checkpoint import atomic_write_json, save_checkpoint
from ..config import DataConfig, ModelConfig, TrainConfig, add_flags, from_args
from ..masks import MaskConfig, apply_masks, extract, fit_masks, masks_and_scales
from ..masks.frozen import frozen_network, weights_sha256
from ..models import check_input, prunable_layers
from ..runs import (asdicts, check_resume_config, default_run_name, load_bundle, measure_model, model_manifest,
                    prepare_out_dir, save_model, write_result)
from . import add_run_flags, format_table

TRAIN_DEFAULTS = {"epochs": 10, "batch_size": 128, "weight_decay": 5e-4}
"""Loop defaults of ``extract`` (CPU-scaled; the published runs use up to 100-1000 epochs, see docs/masks.md)."""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "extract", help="learn which weights of a frozen random network to keep",
        description="Freeze a randomly initialised network, learn a mask over its weights (gumbel, edge-popup, "
                    "supermask or a random mask), and write result.json, the extracted network "
                    "(model.safetensors + model.json) and the mask (subnet.safetensors + subnet.json).")
    add_flags(p, MaskConfig)
    add_flags(p, ModelConfig, skip=("pretrained",))
    add_flags(p, DataConfig)
    add_flags(p, TrainConfig, defaults=TRAIN_DEFAULTS)
    add_run_flags(p)
    p.set_defaults(run=run)


def subnet_tensors(masked: torch.nn.Module, extracted: torch.nn.Module, frozen: torch.nn.Module) -> dict:
    """``<layer>.mask`` / ``<layer>.scale`` for every masked layer, plus ``state.<key>`` for every other entry
    of the extracted network's state that differs from the regenerated frozen network's."""
    found = masks_and_scales(masked)
    tensors = {}
    for name, _ in prunable_layers(extracted):
        mask, scale = found[name]
        tensors[f"{name}.mask"], tensors[f"{name}.scale"] = mask.bool(), scale.float().reshape(())
    weights = {f"{name}.weight" for name, _ in prunable_layers(extracted)}
    reference = frozen.state_dict()
    for key, value in extracted.state_dict().items():
        if key not in weights and not torch.equal(value.cpu(), reference[key].cpu()):
            tensors[f"state.{key}"] = value
    return tensors


def extract_run(mask_cfg: MaskConfig, model_cfg: ModelConfig, data_cfg: DataConfig, train_cfg: TrainConfig,
                seed: int = 0, out: str | Path | None = None, overwrite: bool = False, resume: bool = False) -> dict:
    """Run ``netsift extract`` end to end; returns the ``result.json`` contents."""
    t0 = time.perf_counter()
    cfg = mask_cfg.resolved()
    config = {"command": "extract", "method": cfg.method, "seed": seed, "init": cfg.init,
              **asdicts(mask=cfg, model=model_cfg, data=data_cfg, train=train_cfg)}
    bundle = load_bundle(data_cfg, seed)
    manifest = model_manifest(model_cfg, bundle)
    model = frozen_network(manifest, cfg.init, seed)
    check_input(model, bundle.input_shape)
    weights_hash = weights_sha256(model)
    run_dir = prepare_out_dir(out, overwrite, resume, default_run_name("extract", cfg, model_cfg, data_cfg, train_cfg))
    if resume:
        check_resume_config(run_dir, config)
    atomic_write_json(run_dir / "config.json", config)

    masked = apply_masks(model, cfg, seed=seed)
    fitted = fit_masks(masked, bundle, train_cfg, run_dir, seed=seed, resume=resume)
    extracted = extract(masked).cpu()
    save_model(run_dir, extracted, manifest)
    measured = measure_model(extracted, bundle)
    if not cfg.train_weights:  # the subnet contract: frozen weights regenerated from (manifest, init, seed)
        meta = {"manifest": manifest, "init": {"scheme": cfg.init, "seed": seed}, "weights_sha256": weights_hash,
                "method": cfg.method, "data": data_cfg.data, "test_acc": measured["test_acc"]}
        save_checkpoint(run_dir / "subnet", subnet_tensors(masked, extracted, frozen_network(manifest, cfg.init, seed)),
                        meta)
    history = fitted.history
    result = {"command": "extract", "method": cfg.method, "model": model_cfg.model, "data": data_cfg.data,
              "seed": seed, **measured, "wall_s": time.perf_counter() - t0, "init": cfg.init,
              "rescale": cfg.rescale, "density_target": cfg.density, "mask_lr": cfg.mask_lr,
              "scales": {k: float(v[1]) for k, v in masks_and_scales(masked).items()},
              "best_epoch": fitted.best_epoch, "epochs_run": len(history), "stopped_early": fitted.stopped_early,
              "train_images_per_s": fitted.images_per_s, "weights_sha256": weights_hash,
              "subnet": None if cfg.train_weights else "subnet.safetensors", "run_dir": str(run_dir)}
    return write_result(run_dir, result)


def run(args: argparse.Namespace) -> int:
    result = extract_run(from_args(MaskConfig, args), from_args(ModelConfig, args), from_args(DataConfig, args),
                         from_args(TrainConfig, args), args.seed, args.out, args.overwrite, args.resume)
    print(format_table([result], ["method", "model", "data", "test_acc", "val_acc", "density", "params", "wall_s"]))
    print(f"run saved in {result['run_dir']}")
    return 0
