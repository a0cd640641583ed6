"""``netsift.train``: dense training (the starting point of pruning, and the ceiling of the comparisons)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from torch import nn

from ..checks import checked
from .. import distributed, rundir
from ..config import TrainConfig
from ..measure import check_threads, measure
from ..progress import observed
from ..results import Result
from ..training import fit
from .common import (TRAIN_FIELDS, arch_of, bundle_for, check_classes, check_seed, check_weights, check_width,
                     data_config, image_side, load_weights, network_for, split_options)


@checked  # issue 22: wrong argument types (nested configs too) are one line
@observed
@distributed.guard
def train(model: nn.Module | str, data: Any, config: TrainConfig | None = None, *, seed: int = 0,
          data_seed: int | None = None, width: float = 1.0, out: str | Path | None = None, overwrite: bool = False,
          resume: bool = False, force: bool = False, latency_threads: int | None = 1,
          progress: bool | None = None, log_with: str | list[str] | None = None, image_size: int | None = None,
          weights: str | Path | None = None, **options: Any) -> Result:
    """Train ``model`` on ``data`` with the shared loop; keep the best validation epoch.

    Args:
        model: an ``nn.Module``, or a zoo name (``"conv4"``, ``"tv:resnet18"``) built for the data from ``seed``.
        data: a data-set name, a :class:`~netsift.data.DataBundle`, or ``{"train": ..., "val": ..., "test": ...}``
            of ``DataLoader``\\ s or data sets (``val`` optional: carved from train).
        config: loop settings; or give them as keyword ``options`` (``epochs=5, lr=0.1, ...``).
        seed: seeds the initialisation of a zoo model, the batch order and the augmentation.
        data_seed: seeds the train/validation split (default: ``seed``).
        width: width multiplier of a zoo model.
        out: run folder to write (config, metrics, checkpoints, model, result.json); ``True``: a folder under
            ``runs/`` named by a hash of the settings; ``None`` writes nothing.
        overwrite, resume: replace a non-empty ``out`` (the new run is built beside it and replaces it when it
            finishes), or continue the interrupted run in it.
        force: with ``overwrite``, replace a folder even when it holds files that are not a netsift run.
        latency_threads: threads for the latency measurement (``None``: skip it; 0: torch's default).
        progress: report progress on stderr (bars in a terminal, one line per epoch in a log file; ``None``:
            on unless the caller turned it off, see :mod:`netsift.progress`).
        log_with: experiment trackers (``"tensorboard"``, ``"csv"``, ``"wandb"``, ...; see
            :mod:`netsift.tracking`) that get the settings and every epoch's metrics; logs in ``out/logs``.
        image_size: feed the images resized to ``image_size`` x ``image_size`` px (1-1024; bilinear, batch by
            batch, the same for train, validation and test); recorded in ``config.json``, so ``prune`` and
            ``evaluate`` of the run use it too.
        weights: a local state-dict file (``.safetensors``, or a ``torch.save`` file read with ``weights_only``)
            the zoo / ``tv:`` network named by ``model`` starts from (see
            :func:`netsift.models.torchvision_models.load_weights_file`); its name and SHA-256 go to
            ``config.json`` and ``result.json``.

    Returns:
        a :class:`~netsift.results.Result`: ``.model`` is the trained network.
    """
    t0 = time.perf_counter()
    seed = check_seed(seed)
    data_seed = check_seed(seed if data_seed is None else data_seed, "data_seed")
    check_width(width)
    check_threads(latency_threads, "latency_threads")
    (loop,) = split_options(options, TRAIN_FIELDS)
    cfg = (dataclasses.replace(config, **loop) if config else TrainConfig(**loop)).resolved()
    distributed.setup(cfg.cpu)  # under torchrun / accelerate launch: join the other processes
    if out is not None and out is not False and out is not True:
        rundir.check_output_file(out, "train", overwrite)  # issue 22: no '', no folder of runs
        rundir.precheck(out, overwrite=overwrite, resume=resume, force=force)
    weights_path = check_weights(weights, model)
    bundle = bundle_for(data, data_seed, image_size=image_size)
    net = network_for(model, bundle, seed, width)
    loaded = load_weights(net, weights_path) if weights_path else None
    check_classes(net, bundle)
    config_json = rundir.run_config("train", "dense", seed, data_seed, rundir.describe_model(net),
                                    data_config(bundle), dataclasses.asdict(cfg), weights=loaded)
    with rundir.open_run(out, config_json, overwrite=overwrite, resume=resume, force=force) as run:
        arch, w = arch_of(net)
        fitted = fit(net, bundle, cfg, run and run.path, seed=seed, resume=resume, desc=f"train {arch}",
                     log_with=log_with)
        if run is not None:
            distributed.on_main(lambda: rundir.save_model(run.path, net), "saving the model")
        result = {"command": "train", "method": "dense", "model": arch, "width": w, "data": bundle.name,
                  "image_size": image_side(bundle), "seed": seed, "data_seed": data_seed,
                  **measure(net, bundle, latency_threads=latency_threads), "weights": loaded,
                  "epochs_run": len(fitted.history), "best_epoch": fitted.best_epoch,
                  "stopped_early": fitted.stopped_early, "train_images_per_s": fitted.images_per_s,
                  "wall_s": time.perf_counter() - t0}
        result = distributed.on_main(lambda: rundir.write_result(run, result), "writing result.json")
        return Result.from_dict(result, model=net)
