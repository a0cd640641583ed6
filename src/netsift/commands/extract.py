"""``netsift extract``: learn a weight mask over a frozen random network and save the extracted subnetwork."""

from __future__ import annotations

import argparse
import dataclasses

from ..config import DataConfig, ModelConfig, TrainConfig, add_flags, add_method_options, from_args, method_args
from ..masks import EXTRACT_DEFAULTS, METHODS, MaskConfig
from . import add_run_flags, format_table, out_arg, print_weights


def _per_method(key: str) -> str:
    return ", ".join(f"{name} {spec.defaults[key]}" for name, spec in METHODS.items() if key in spec.defaults)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "extract", help="learn which weights of a frozen random network to keep",
        description="Freeze a randomly initialised network, learn a mask over its weights ("
                    + "; ".join(f"{n}: {m.summary}" for n, m in METHODS.items()) + "), and write result.json, the "
                    "extracted network (model.safetensors + model.json) and the mask (subnet.safetensors + "
                    "subnet.json). --lr, --weight-decay and --schedule are the mask optimizer's.")
    add_flags(p, MaskConfig, skip=("options",), default_help={"rescale": _per_method("rescale"),
                                                              "density": "emergent for gumbel and supermask, as published; "
                                                                         + _per_method("density")})
    add_method_options(p, METHODS, "method options")
    add_flags(p, ModelConfig, skip=("pretrained",))
    add_flags(p, DataConfig)
    add_flags(p, TrainConfig, defaults=EXTRACT_DEFAULTS,
              default_help={k: _per_method(k) for k in ("lr", "weight_decay", "schedule")})
    p.add_argument("--recalibrate-bn", type=int, default=20, metavar="N",
                   help="re-estimate batch-norm statistics under the extracted mask on N training minibatches, "
                        "before every validation and at the end (no-op without batch norm) (default: 20)")
    add_run_flags(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..pipelines import extract

    mask = from_args(MaskConfig, args, options=method_args(args, METHODS))
    model_cfg = from_args(ModelConfig, args)
    shared = {k: v for k, v in dataclasses.asdict(mask).items() if k in ("rescale", "scale_lr", "scale_init")}
    result = extract(model_cfg.model, from_args(DataConfig, args), mask.method, mask.density, init=mask.init,
                     config=from_args(TrainConfig, args), seed=args.seed, data_seed=args.data_seed,
                     width=model_cfg.width, recalibrate_bn_batches=args.recalibrate_bn, out=out_arg(args),
                     overwrite=args.overwrite, resume=args.resume, force=args.force, log_with=args.log_with,
                     weights=model_cfg.weights, **shared, **mask.options)
    print_weights(result)
    print(format_table([result], ["method", "model", "data", "test_acc", "val_acc", "density", "params", "wall_s"]))
    print(f"run saved in {result.run_dir}")
    return 0
