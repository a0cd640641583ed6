"""``netsift.extract``: learn a weight mask over a frozen random network and keep the extracted subnetwork."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from torch import nn

from .. import distributed, rundir
from ..config import TrainConfig
from ..errors import NetsiftError
from ..masks import EXTRACT_DEFAULTS, METHODS, MaskConfig, apply_masks, fit_masks, masks_and_scales, train_config
from ..masks import extract as extract_masks
from ..masks.compact import compact_of_run, save_run_subnet
from ..masks.frozen import INIT_SCHEMES, frozen_network, init_frozen, weights_sha256
from ..measure import measure
from ..progress import observed
from ..models import manifest_of
from ..results import Result
from ..training import BNRecalibration, has_batch_norm, recalibrate_bn
from .common import (TRAIN_FIELDS, arch_of, bundle_for, check_classes, check_seed, check_weights, check_width,
                     data_config, image_side, load_weights, network_for, split_options)

MASK_FIELDS = {f.name for f in dataclasses.fields(MaskConfig)} - {"options", "method", "density", "init"}
METHOD_OPTIONS = {name for spec in METHODS.values() for name in spec.options}


@observed
@distributed.guard
def extract(model: nn.Module | str, data: Any, method: str = "gumbel", density: float | None = None, *,
            init: str | None = "signed-constant", config: TrainConfig | None = None, seed: int = 0,
            data_seed: int | None = None, width: float = 1.0, recalibrate_bn_batches: int = 20,
            out: str | Path | bool | None = None, overwrite: bool = False, resume: bool = False,
            force: bool = False, progress: bool | None = None, log_with: str | list[str] | None = None,
            image_size: int | None = None, weights: str | Path | None = None, **options: Any) -> Result:
    """Freeze ``model`` at random weights, learn a ``method`` mask over them, and extract the subnetwork.

    Args:
        model: an ``nn.Module`` (any network of Linear/Conv2d layers), or a zoo name built for the data.
        data: a data-set name, a :class:`~netsift.data.DataBundle`, or a dict of ``DataLoader``\\ s / data sets.
        method: ``gumbel``, ``edge-popup``, ``supermask`` or ``random`` (see ``netsift.masks.METHODS``).
        density: kept fraction of the weights (gumbel: a target, default emergent; edge-popup/random: 0.5).
        init: frozen weight init (``signed-constant`` or ``kaiming-normal``) drawn from ``seed`` for every
            parameter and buffer; ``None`` keeps the module's own weights.
        config: loop settings; ``lr``, ``weight_decay`` and ``schedule`` are the mask optimizer's and default to
            the method's. Give them as keyword ``options`` too (``epochs=20, lr=50``), with the method's own
            options (``tau``, ``parametrization``, ``train_weights``) and ``rescale``, ``scale_lr``.
        seed: seeds the frozen weights, the mask sampling and the batch order.
        data_seed: seeds the train/validation split (default: ``seed``).
        recalibrate_bn_batches: batch-norm statistics are re-estimated on this many training minibatches under
            the extracted mask, before every validation and at the end (networks without batch norm: no-op).
        out, overwrite, resume, force: the run folder (see :func:`netsift.train`).
        progress, log_with: progress on stderr and experiment trackers (see :func:`netsift.train`).
        image_size: feed the images resized to this side in px (see :func:`netsift.train`).
        weights: a local state-dict file the network named by ``model`` is frozen at (see
            :func:`netsift.train`); ``init`` is then not drawn (recorded as ``keep``) and no compact subnet file
            is written (the weights cannot be regenerated from a seed).

    Returns:
        a :class:`~netsift.results.Result`: ``.model`` is the extracted network (plain modules, masked weights
        baked in), ``.density`` its kept fraction of weights.
    """
    t0 = time.perf_counter()
    seed = check_seed(seed)
    data_seed = check_seed(seed if data_seed is None else data_seed, "data_seed")
    check_width(width)
    loop, shared, own = split_options(options, TRAIN_FIELDS, MASK_FIELDS, METHOD_OPTIONS)
    if init is not None and init not in INIT_SCHEMES:
        raise NetsiftError(f"unknown --init {init!r}; choose from: {', '.join(INIT_SCHEMES)}")
    weights_path = check_weights(weights, model)
    if weights_path is not None:
        init = None  # the frozen weights are the file's
    cfg = MaskConfig(method=method, density=density, init=init or "signed-constant", **shared, options=own).resolved()
    base = dataclasses.replace(config, **loop) if config else TrainConfig(**{**EXTRACT_DEFAULTS, **loop})
    train_cfg = train_config(cfg.method, base)
    distributed.setup(train_cfg.cpu)  # under torchrun / accelerate launch: join the other processes
    if isinstance(recalibrate_bn_batches, bool) or not isinstance(recalibrate_bn_batches, int) \
            or not 0 <= recalibrate_bn_batches <= 10**6:
        raise NetsiftError(f"--recalibrate-bn must be an integer in [0, 1,000,000], got {recalibrate_bn_batches!r}")
    if out is not None and out is not False and out is not True:
        rundir.precheck(out, overwrite=overwrite, resume=resume, force=force)
    bundle = bundle_for(data, data_seed, image_size=image_size)
    manifest, loaded = None, None
    if isinstance(model, str):
        net = network_for(model, bundle, seed, width)  # validates the name and the input before anything else
        manifest = manifest_of(net)
        if weights_path is not None:
            loaded = load_weights(net, weights_path)
        else:
            net = frozen_network(manifest, cfg.init, seed)
    else:
        net = network_for(model, bundle, seed)
        if init is not None:
            init_frozen(net, cfg.init, seed)
    check_classes(net, bundle)
    weights_hash = weights_sha256(net)
    config_json = rundir.run_config(
        "extract", cfg.method, seed, data_seed, rundir.describe_model(net), data_config(bundle),
        dataclasses.asdict(train_cfg), mask={**dataclasses.asdict(cfg), "init": init or "keep",
                                             "recalibrate_bn": recalibrate_bn_batches}, weights=loaded)
    with rundir.open_run(out, config_json, overwrite=overwrite, resume=resume, force=force) as run:
        run_dir = run.path if run is not None else None
        masked = apply_masks(net, cfg, seed=seed)
        callbacks = []
        if recalibrate_bn_batches and has_batch_norm(masked):
            callbacks.append(BNRecalibration(bundle, recalibrate_bn_batches, train_cfg.batch_size, seed))
        fitted = fit_masks(masked, bundle, train_cfg, run_dir, seed=seed, resume=resume, callbacks=callbacks,
                           log_with=log_with)
        extracted = extract_masks(masked).cpu()
        recalibrated = recalibrate_bn(extracted, bundle.batches("train", train_cfg.batch_size, seed + 1),
                                      recalibrate_bn_batches)
        # logits and scales are synchronised like weights: every process holds the same mask (checked, not assumed)
        distributed.check_same(distributed.tensors_digest(extracted.state_dict()), "extracted masks and weights")
        measured = measure(extracted, bundle)
        scales = {k: float(v[1]) for k, v in masks_and_scales(masked).items()}
        for row in measured["layers"]:
            row["scale"] = scales.get(row["name"])
        # the subnet contract: frozen weights regenerated from (architecture, init, seed), one bit per weight
        compact = compact_of_run(masked, extracted, manifest, cfg.init if init is not None else None, seed,
                                 bool(cfg.options.get("train_weights")), bundle, data_seed, method=cfg.method,
                                 test_acc=measured["test_acc"])

        def save() -> str | None:
            rundir.save_model(run_dir, extracted, manifest)
            if compact is not None:
                save_run_subnet(run_dir, compact)
                return "subnet.safetensors"
            return None

        subnet = distributed.on_main(save, "saving the model and the mask") if run_dir is not None else None
        arch, w = arch_of(extracted if manifest is None else net)
        result = {"command": "extract", "method": cfg.method, "model": manifest["model"] if manifest else arch,
                  "width": manifest.get("width") if manifest else w, "data": bundle.name,
                  "image_size": image_side(bundle), "weights": loaded, "seed": seed,
                  "data_seed": data_seed, **measured, "init": init or "keep", "rescale": cfg.rescale,
                  "density_target": cfg.density, "mask_lr": train_cfg.lr,
                  "mask_weight_decay": train_cfg.weight_decay, "mask_schedule": train_cfg.schedule,
                  "recalibrated_bn": recalibrated, "epochs_run": len(fitted.history), "best_epoch": fitted.best_epoch,
                  "stopped_early": fitted.stopped_early, "train_images_per_s": fitted.images_per_s,
                  "weights_sha256": weights_hash, "subnet": subnet, "wall_s": time.perf_counter() - t0}
        result = distributed.on_main(lambda: rundir.write_result(run, result), "writing result.json")
        out = Result.from_dict(result, model=extracted)
        out.compact = compact  # netsift.export(result, "compact") without a run folder
        return out
