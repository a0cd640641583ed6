"""``netsift train``: dense training of a zoo model (the starting point of pruning, and the dense baseline)."""

from __future__ import annotations

import argparse

from ..config import TRAIN_FALLBACKS, DataConfig, ModelConfig, TrainConfig, add_flags, from_args
from . import add_run_flags, format_table, print_weights, run_options


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a dense network", description="Train a dense network and save it as a run.")
    add_flags(p, ModelConfig)
    add_flags(p, DataConfig)
    add_flags(p, TrainConfig, default_help={k: str(v) for k, v in TRAIN_FALLBACKS.items()})
    add_run_flags(p)
    p.set_defaults(run=run)


def zoo_model(model_cfg: ModelConfig, data_cfg: DataConfig, seed: int, data_seed: int | None):
    """The architecture name, or the network itself when it needs more than a name (published weights)."""
    if not model_cfg.pretrained:
        return model_cfg.model
    from ..data import load_bundle
    from ..models import build_for

    bundle = load_bundle(data_cfg, seed if data_seed is None else data_seed)
    return build_for(model_cfg.model, bundle.input_shape, bundle.num_classes, model_cfg.width, seed, pretrained=True)


def run(args: argparse.Namespace) -> int:
    from ..pipelines import Source, TrainSpec, execute

    model_cfg, data_cfg = from_args(ModelConfig, args), from_args(DataConfig, args)
    source = Source(zoo_model(model_cfg, data_cfg, args.seed, args.data_seed), data_cfg, model_cfg.width,
                    model_cfg.weights)
    result = execute(TrainSpec(source, from_args(TrainConfig, args), run_options(args)))
    print_weights(result)
    print(format_table([result], ["model", "data", "test_acc", "val_acc", "params", "macs", "best_epoch", "wall_s"]))
    print(f"run saved in {result.run_dir}")
    return 0
