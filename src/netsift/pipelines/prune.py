"""``netsift.prune``: select the channels worth keeping, remove the rest physically, fine-tune, measure."""

from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import distributed, rundir
from ..checkpoint import load_checkpoint, save_checkpoint
from ..config import TrainConfig
from ..data import DataBundle
from ..errors import NetsiftError
from ..measure import count_macs, count_params, evaluate, measure
from ..models import manifest_of, prunable_layers
from ..progress import observed
from ..results import Result
from ..schema import SELECTION_STATE
from ..selection import METHODS, PruneConfig, finetune_defaults
from ..selection.pruner import plan_channels, prune_channels
from ..training import distill_loss, fit, has_batch_norm, recalibrate_bn
from .common import (TRAIN_FIELDS, arch_of, bundle_for, check_classes, check_seed, check_weights, check_width,
                     data_config, image_side, is_run_folder, load_weights, network_for, split_options)

PRUNE_FIELDS = {f.name for f in dataclasses.fields(PruneConfig)} - {"options", "method", "macs"}
METHOD_OPTIONS = {name for spec in METHODS.values() for name in spec.options}


def split_holdout(bundle: DataBundle, n: int) -> tuple[DataBundle, tuple[torch.Tensor, torch.Tensor]]:
    """Hold the last ``n`` training images out (as tensors, for the tolerance); the rest feeds the greedy steps."""
    size = bundle.size("train")
    n = min(n, size // 2)
    rest = bundle.subset("train", torch.arange(size - n))
    held = bundle.subset("train", torch.arange(size - n, size))
    return rest, held.tensors("train")


def _source(model: Any, data: Any, data_seed: int | None, seed: int, width: float, image_size: int | None = None):
    """(network, data, data_seed, source folder) of what is being pruned: a run folder, a module or a zoo name.

    From a run folder, ``image_size`` (when given) must be the run's own."""
    if not is_run_folder(model):
        if isinstance(model, (str, Path)) and ("/" in str(model) or Path(model).exists()):
            if not Path(model).exists():
                raise NetsiftError(f"checkpoint {model} does not exist")
            raise NetsiftError(f"{model} is not a run folder with a saved network (model.json missing)")
        if data is None:
            raise NetsiftError("give the data to prune on")
        return model, data, seed if data_seed is None else data_seed, None
    net, manifest = rundir.load_model(model)
    saved = rundir.read_run_config(model) if (Path(model) / rundir.CONFIG).is_file() else {}
    saved_data, saved_seed = saved.get("data"), saved.get("data_seed", saved.get("seed", 0))
    if data is None:
        if not isinstance(saved_data, dict) or "data" not in saved_data or saved_data["data"] == "custom":
            raise NetsiftError(f"{model} does not record a built-in data set; pass the data")
        from ..config import DataConfig

        try:
            data = DataConfig(**saved_data)
        except TypeError as e:
            raise NetsiftError(f"{model}/config.json has malformed data settings: {e}") from None
    elif isinstance(saved_data, dict) and saved_data.get("data") not in (None, "custom"):
        _check_same_data(model, saved_data, data)
    if image_size is not None and isinstance(saved_data, dict) and saved_data.get("data") not in (None, "custom"):
        _check_same_data(model, saved_data, {"image_size": image_size})
    return net, data, saved_seed if data_seed is None else data_seed, str(model)


def _check_same_data(run: Any, saved: dict, data: Any) -> None:
    """Refuse data that differs from what the source run trained on (its folder may move: ``data_dir`` may)."""
    from ..config import DataConfig

    given = {"data": data} if isinstance(data, str) else dataclasses.asdict(data) if isinstance(data, DataConfig) \
        else data if isinstance(data, dict) and set(data) == {"image_size"} else None
    if given is None:
        return  # a bundle or your own loaders: your call
    for key, value in given.items():
        if key in ("data_dir", "download") or (key not in saved and key != "image_size"):
            continue
        if value != saved.get(key):
            raise NetsiftError(f"{run} was trained with {key}={saved[key]!r}, not {value!r}; leave the data settings "
                               "out to use the run's (only --data-dir may differ)")


@observed
@distributed.guard
def prune(model: nn.Module | str | Path, data: Any = None, method: str = "gfs", macs: float | None = None, *,
          example_input: torch.Tensor | None = None, finetune: TrainConfig | None = None,
          ignored_layers: list | None = None, layer_density: dict | None = None, seed: int = 0,
          data_seed: int | None = None, width: float = 1.0, out: str | Path | bool | None = None,
          overwrite: bool = False, resume: bool = False, force: bool = False, progress: bool | None = None,
          source_measure: dict | None = None, log_with: str | list[str] | None = None, image_size: int | None = None,
          weights: str | Path | None = None, **options: Any) -> Result:
    """Select channels of a trained network, remove the others for real, fine-tune, and measure.

    Args:
        model: an ``nn.Module`` Torch-Pruning can trace, a run folder of ``netsift train``, or a zoo name
            (random init: GFS's guarantee holds for random networks too).
        data: a data-set name, a :class:`~netsift.data.DataBundle`, or a dict of ``DataLoader``\\ s / data sets;
            for a run folder, default the run's own data and split.
        method: ``gfs``, ``backward``, ``l1``, ``taylor``, ``bn-scale`` or ``random`` (``netsift.selection.METHODS``).
        macs: keep this fraction of the MACs (default: stop each layer by the accuracy ``tolerance``).
        example_input: one input batch for tracing (default: a sample of the data's shape).
        finetune: fine-tune loop settings (default: the published recipe, ``finetune_defaults()``).
        ignored_layers: layers (modules or names) whose output channels are kept, as in Torch-Pruning.
        layer_density: ``{layer: kept fraction of its channels}``; the MACs budget is shared by the other groups.
        seed: seeds the greedy minibatches, candidate subsets, random rankings and the fine-tune.
        data_seed: seeds the train/validation split (default: the source run's, else ``seed``).
        out, overwrite, force: the run folder (see :func:`netsift.train`); ``out`` may not be the source run.
        resume: continue the interrupted run in ``out``: the channel groups it finished are not selected again,
            and the fine-tune continues from its last epoch, ending with the same network as an uninterrupted run.
        progress: report progress on stderr: the selection (one line per channel group in a log file, bars in a
            terminal) and the fine-tune (see :func:`netsift.train`); ``None``: on unless the caller turned it off.
        source_measure: a measurement of the unpruned network to reuse (``measure(model, bundle)``).
        log_with: experiment trackers for the fine-tune (see :func:`netsift.train`).
        image_size: feed the images resized to this side in px (see :func:`netsift.train`); a run folder's own
            size is used by default, and a different one is refused.
        weights: a local state-dict file the network named by ``model`` starts from (see :func:`netsift.train`;
            not with a run folder or a module).
        options: :class:`~netsift.selection.PruneConfig` fields (``finetune_epochs``, ``tolerance``,
            ``round_to``, ``candidates``, ``bn_batch_stats``, ``recalibrate_bn``, ``distill``, ...), fine-tune
            loop fields (``lr``, ``batch_size``, ...) and the method's own options (``replacement``).

    Returns:
        a :class:`~netsift.results.Result`: ``.model`` is the pruned network (plain, smaller modules).
    """
    t0 = time.perf_counter()
    seed = check_seed(seed)
    check_width(width)
    shared, loop, own = split_options(options, PRUNE_FIELDS, TRAIN_FIELDS, METHOD_OPTIONS)
    cfg = PruneConfig(method=method, macs=macs, **shared, options=own)
    ft = dataclasses.replace(finetune or TrainConfig(**{k: v for k, v in finetune_defaults().items()}), **loop)
    ft = dataclasses.replace(ft, epochs=max(1, cfg.finetune_epochs)).resolved(**finetune_defaults())
    distributed.share_policy()  # NETSIFT_SHARE_PREFIX: refused now, not mid-selection
    distributed.setup(ft.cpu)  # under torchrun / accelerate launch: join the other processes
    if out is not None and out is not False and out is not True:
        rundir.precheck(out, overwrite=overwrite, resume=resume, force=force,
                        sources=[model] if isinstance(model, (str, Path)) else [])
    source_model, data, data_seed, source = _source(model, data, data_seed, seed, width, image_size)
    data_seed = check_seed(data_seed, "data_seed")
    weights_path = check_weights(weights, source_model)
    bundle = bundle_for(data, data_seed, image_size=image_size)
    manifest = manifest_of(source_model) if isinstance(source_model, nn.Module) else None
    if manifest and "in_channels" in manifest:
        have = (manifest["in_channels"], manifest["image_size"], manifest["num_classes"])
        want = (bundle.in_channels, bundle.image_size, bundle.num_classes)
        if have != want:
            raise NetsiftError(f"{source} was trained on inputs (channels, size, classes) = {have}, but the data "
                               f"{bundle.name} has {want}")
    net = network_for(source_model, bundle, seed, width)
    loaded = load_weights(net, weights_path) if weights_path else None
    check_classes(net, bundle)
    cfg = cfg.resolved(has_batch_norm(net))
    shape = bundle.input_shape
    if example_input is not None and tuple(example_input.shape[1:]) != tuple(shape):
        raise NetsiftError(f"example_input has sample shape {tuple(example_input.shape[1:])}, the data {shape}")
    net.eval()
    plan = plan_channels(net, shape, cfg, ignored_layers, layer_density)
    config_json = rundir.run_config("prune", cfg.method, seed, data_seed, rundir.describe_model(net),
                                    data_config(bundle), dataclasses.asdict(ft), prune=dataclasses.asdict(cfg),
                                    source=source, weights=loaded)
    with rundir.open_run(out, config_json, overwrite=overwrite, resume=resume, force=force, sources=[source],
                         resume_ignores=("train.epochs", "prune.finetune_epochs")) as run:
        run_dir = run.path if run is not None else None
        before = source_measure or measure(net, bundle)
        select_bundle, holdout = split_holdout(bundle, cfg.holdout)
        layer_ft = None
        if cfg.layer_finetune > 0:
            # a fraction of an epoch of the whole data: each of the N processes takes a minibatch per step
            images = cfg.layer_finetune * select_bundle.size("train")
            steps = max(1, int(images / (ft.batch_size * distributed.world_size())))
            ft_layer = dataclasses.replace(ft, epochs=1, max_steps=steps)
            layer_ft = lambda m: fit(m, select_bundle, ft_layer, None, seed=seed, desc="layer fine-tune")  # noqa: E731
        teacher = copy.deepcopy(net) if cfg.distill else None
        stream = select_bundle.batches("train", cfg.select_batch, seed)
        state = SelectionState(run_dir, cfg.method, stream, keep_model=layer_ft is not None)
        hooks = state.hooks(plan, net) if run_dir is not None else {}
        if run_dir is not None and resume:
            hooks["done"] = state.load(plan, net)
        pruned_out = prune_channels(plan, stream, holdout, seed=seed, progress=progress is not False,
                                    layer_finetune=layer_ft,
                                    **hooks)
        pruned = pruned_out.model
        recalibrated = recalibrate_bn(pruned, select_bundle.batches("train", cfg.select_batch, seed + 1),
                                      cfg.recalibrate_bn)
        if cfg.reinit:
            _reinit(pruned, seed)
        selected = evaluate(pruned, distributed.eval_loader(bundle, "test", 512), sharded=True)
        finetune_s, fitted = 0.0, None
        if cfg.finetune_epochs > 0:
            loss_fn = distill_loss(teacher, ft.label_smoothing) if teacher is not None else None
            t_ft = time.perf_counter()
            fitted = fit(pruned, bundle, ft, run_dir, seed=seed, resume=resume, desc=f"fine-tune {cfg.method}",
                         loss_fn=loss_fn, log_with=log_with)
            finetune_s = time.perf_counter() - t_ft
        pruned.eval()
        after = measure(pruned, bundle, latency_threads=cfg.latency_threads, source=net, source_macs=before["macs"])
        after["density"] = _prunable_weights(pruned) / _prunable_weights(net)

        def save() -> None:
            rundir.save_model(run_dir, pruned)
            if cfg.onnx:
                from ..onnx_export import export_onnx

                export_onnx(pruned, shape, run_dir / "model.onnx")

        if run_dir is not None:
            distributed.on_main(save, "saving the pruned model")
        arch, w = arch_of(net)
        result = {"command": "prune", "method": cfg.method, "model": arch, "width": w, "data": bundle.name,
                  "image_size": image_side(bundle), "weights": loaded, "seed": seed, "data_seed": data_seed, **after,
                  "source": source, "macs_target": cfg.macs,
                  "tolerance": cfg.tolerance, "source_test_acc": before["test_acc"], "source_macs": before["macs"],
                  "source_params": before["params"], "test_acc_selected": selected["acc"],
                  "finetuned": fitted is not None, "finetune_epochs": cfg.finetune_epochs,
                  "epochs_run": len(fitted.history) if fitted else 0,
                  "best_epoch": fitted.best_epoch if fitted else None,
                  "train_images_per_s": fitted.images_per_s if fitted else None,
                  "recalibrated_bn": recalibrated, "selection_s": pruned_out.selection_s, "finetune_s": finetune_s,
                  "groups": pruned_out.selection.info, "wall_s": time.perf_counter() - t0,
                  "groups_skipped": [s.as_dict() for s in plan.skipped],
                  **({"selection_estimate_s": pruned_out.estimate.seconds,
                      "selection_passes": pruned_out.estimate.passes} if pruned_out.estimate else {})}
        result = distributed.on_main(lambda: rundir.write_result(run, result), "writing result.json")
        return Result.from_dict(result, model=pruned)


class SelectionState:
    """``selection.safetensors`` + ``selection.json``: the channel groups finished so far, saved after each one.

    With them, ``--resume`` skips the finished groups and continues the selection exactly where it stopped: the
    state after the last finished group (the candidate generator, the global RNG, the minibatch stream and, with
    a per-layer fine-tune, the network's weights) is restored before the next group starts.
    """

    STEM = "selection"

    def __init__(self, run_dir: Path | None, method: str, stream, keep_model: bool):
        self.run_dir, self.method, self.stream, self.keep_model = run_dir, method, stream, keep_model
        self.tensors: dict[str, torch.Tensor] = {}
        self.meta: dict = {}

    def hooks(self, plan, net: nn.Module) -> dict:
        """``on_group_done`` / ``on_resume`` for :func:`~netsift.selection.pruner.prune_channels`."""
        return {"on_group_done": lambda ctx, gi: self.save(ctx, plan, net), "on_resume": self.restore}

    def save(self, ctx, plan, net: nn.Module) -> None:
        if not rundir.is_main_process():
            return
        groups = [{"group": plan.groups[gi].name, "kept": r.kept, "rescale": r.rescale, "info": r.info}
                  for gi, r in sorted(ctx.records.items())]
        tensors = {"generator": ctx.generator.get_state(), "rng.torch": torch.get_rng_state()}
        if self.keep_model:
            tensors.update({f"model.{k}": v for k, v in net.state_dict().items()})
        meta = {"method": self.method, "groups": groups, "stream": self.stream.state(), "model_state": self.keep_model}
        save_checkpoint(self.run_dir / self.STEM, tensors, meta)

    def load(self, plan, net: nn.Module) -> dict:
        """The groups a resumed run finished (by index); the network gets their weights back when they changed."""
        from ..selection.base import GroupRecord

        if not (self.run_dir / f"{self.STEM}.json").is_file():
            return {}
        self.tensors, self.meta = load_checkpoint(self.run_dir / self.STEM, "selection state", SELECTION_STATE)
        where = self.run_dir / f"{self.STEM}.json"
        names = [g.name for g in plan.groups]
        saved = self.meta["groups"]
        if self.meta["method"] != self.method or len(saved) > len(names) or \
                [g["group"] for g in saved] != names[:len(saved)]:
            raise NetsiftError(f"{where} belongs to another selection (method or channel groups differ)")
        if "generator" not in self.tensors or "rng.torch" not in self.tensors:
            raise NetsiftError(f"{where}: its tensors lack the random generator states")
        done = {}
        for gi, g in enumerate(saved):
            size = plan.groups[gi].size
            if not g["kept"] or any(i >= size for i in g["kept"]):
                raise NetsiftError(f"{where}: group {g['group']} keeps channels outside its {size}")
            done[gi] = GroupRecord(g["kept"], g["rescale"], g["info"])
        if self.meta["model_state"] != self.keep_model:
            raise NetsiftError(f"{where} was saved with another --layer-finetune setting")
        if self.keep_model:
            state = {k[len("model."):]: v for k, v in self.tensors.items() if k.startswith("model.")}
            try:
                net.load_state_dict(state)
            except RuntimeError as e:
                raise NetsiftError(f"{where}: its weights do not fit the network: {str(e).splitlines()[0]}") from None
        return done

    def restore(self, ctx) -> None:
        """Continue from the state saved after the last finished group."""
        try:
            ctx.generator.set_state(self.tensors["generator"])
            torch.set_rng_state(self.tensors["rng.torch"])
        except (RuntimeError, TypeError, ValueError) as e:
            raise NetsiftError(f"selection state in {self.run_dir} is corrupt: {e}") from None
        self.stream.restore(self.meta["stream"])


def _prunable_weights(model: nn.Module) -> int:
    return sum(m.weight.numel() for _, m in prunable_layers(model))


def _reinit(model: nn.Module, seed: int) -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in model.modules():
            if hasattr(m, "reset_parameters") and m is not model:
                m.reset_parameters()


__all__ = ["prune", "split_holdout", "count_macs", "count_params"]
