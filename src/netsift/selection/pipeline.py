"""The prune pipeline: load, select channels, remove them physically, fine-tune, measure, save.

:func:`prune` is what ``netsift prune`` runs and what the benchmarks call; every step of it lives in its own
module (groups, scoring, methods, budget, removal) and the fine-tune is the shared training loop.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoint import atomic_write_json
from ..config import DataConfig, ModelConfig, TrainConfig, opt
from ..data import DataBundle, make_loader
from ..errors import NetsiftError, check_density, choose
from ..measure import count_macs, count_params, evaluate, latency, prunable_layers
from ..runs import (build_for, load_bundle, load_model, measure_model, model_manifest, prepare_out_dir, save_model,
                    write_result)
from ..surgery import module_sizes
from ..training import fit
from . import METHODS
from .base import SelectionContext
from .budget import MacsModel, allocate
from .groups import build_graph, find_groups
from .removal import remove_channels


@dataclass
class PruneConfig:
    """Settings of ``netsift prune``."""

    method: str = opt("gfs", "selection method", tuple(METHODS))
    macs: float | None = opt(None, "keep this fraction of the MACs, in (0, 1] (default: stop by --tolerance)")
    tolerance: float | None = opt(None, "stop each layer once held-out accuracy is >= (1 - T) x its start (default 0.02)")
    round_to: int = opt(1, "with --macs: keep a multiple of N channels in every group (8 or 16 suits CPU vector "
                           "kernels; groups narrower than 2N round to single channels)")
    candidates: int = opt(50, "candidates scored per greedy step (0: all)")
    epsilon: float | None = opt(None, "derive the candidates per step from epsilon: (N/k) log(1/eps)")
    replacement: bool = opt(False, "gfs: theory variant with replacement (multiset, Frank-Wolfe step 1/(n+1))")
    select_batch: int = opt(128, "images in the fresh minibatch of each greedy step")
    holdout: int = opt(1000, "training images held out to check the tolerance")
    layer_finetune: float = opt(0.0, "fine-tune this fraction of an epoch after each layer (published: 0.1)")
    finetune_epochs: int = opt(1, "epochs of fine-tuning after removal (0: none)")
    distill: bool = opt(False, "fine-tune with distillation from the original network")
    reinit: bool = opt(False, "ablation: re-initialise the pruned architecture before fine-tuning")
    bn_batch_stats: bool = opt(False, "greedy methods: score with each candidate's minibatch BN statistics "
                                      "(as fine-tuning will see them) instead of the running ones")
    recalibrate_bn: int = opt(0, "after removal, re-estimate BN running statistics on N training minibatches")
    rescale: str = opt("auto", "fold the N/n rescale into the weights at removal (auto: as the method selected)",
                       ("auto", "on", "off"))
    onnx: bool = opt(False, "also export the pruned network as model.onnx")
    latency_threads: int = opt(1, "CPU threads for the latency measurement (0: torch's default)")

    def __post_init__(self):
        choose(self.method, METHODS, "method")
        choose(self.rescale, ("auto", "on", "off"), "--rescale")
        if self.macs is not None and self.tolerance is not None:
            raise NetsiftError("give --macs or --tolerance, not both")
        if self.macs is not None:
            check_density(self.macs, "--macs")
        elif self.tolerance is None:
            self.tolerance = 0.02
        if self.tolerance is not None and not 0.0 <= self.tolerance < 1.0:
            raise NetsiftError(f"--tolerance must be in [0, 1), got {self.tolerance}")
        if self.epsilon is not None and not 0.0 < self.epsilon < 1.0:
            raise NetsiftError(f"--epsilon must be in (0, 1), got {self.epsilon}")
        for name in ("candidates", "holdout", "finetune_epochs", "latency_threads", "recalibrate_bn"):
            if getattr(self, name) < 0:
                raise NetsiftError(f"--{name.replace('_', '-')} must be non-negative, got {getattr(self, name)}")
        if self.round_to < 1:
            raise NetsiftError(f"--round-to must be at least 1, got {self.round_to}")
        if self.select_batch <= 0:
            raise NetsiftError(f"--select-batch must be positive, got {self.select_batch}")
        if not 0.0 <= self.layer_finetune <= 10.0:
            raise NetsiftError(f"--layer-finetune must be in [0, 10] epochs, got {self.layer_finetune}")
        if self.replacement and self.method != "gfs":
            raise NetsiftError("--replacement applies to --method gfs only")


def finetune_defaults() -> dict:
    """The published fine-tune recipe (SGD Nesterov 0.9, cosine, label smoothing 0.1, weight decay 4e-5)."""
    return {"lr": 0.01, "nesterov": True, "momentum": 0.9, "label_smoothing": 0.1, "weight_decay": 4e-5,
            "schedule": "cosine", "batch_size": 128}


def split_holdout(bundle: DataBundle, n: int) -> tuple[DataBundle, tuple[Tensor, Tensor]]:
    """Hold the last ``n`` training images out (normalised tensors); the rest feeds the greedy minibatches."""
    train = bundle.train
    if not hasattr(train, "subset"):
        raise NetsiftError(f"{bundle.name}: selection needs an in-memory training set")
    n = min(n, len(train) // 2)
    rest = dataclasses.replace(bundle, train=train.subset(torch.arange(len(train) - n)))
    held = dataclasses.replace(bundle, train=train.subset(torch.arange(len(train) - n, len(train))))
    xs, ys = zip(*make_loader(held, "train", 1024)) if n else ((torch.zeros(0, *bundle.input_shape),), (torch.zeros(0, dtype=torch.long),))
    return rest, (torch.cat(xs), torch.cat(ys))


def distill_loss(teacher: nn.Module, label_smoothing: float, temperature: float = 4.0,
                 alpha: float = 0.5):
    """``loss_fn(logits, y, x)``: cross-entropy mixed with the KL divergence to the teacher's soft labels."""
    teacher.eval()

    def loss_fn(logits: Tensor, y: Tensor, x: Tensor) -> Tensor:
        with torch.no_grad():
            t = teacher(x)
        ce = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
        kl = F.kl_div(F.log_softmax(logits / temperature, 1), F.softmax(t / temperature, 1), reduction="batchmean")
        return (1 - alpha) * ce + alpha * temperature ** 2 * kl

    return loss_fn


def _latency(model: nn.Module, shape: tuple[int, ...], threads: int) -> dict:
    return {"b1_ms": latency(model, shape, 1, repeats=50, warmup=10, threads=threads or None)["median_ms"],
            "b64_ms": latency(model, shape, 64, repeats=15, warmup=3, threads=threads or None)["median_ms"]}


@torch.no_grad()
def recalibrate_bn(model: nn.Module, next_batch, batches: int) -> None:
    """Re-estimate every batch norm's running statistics (cumulative average over ``batches`` minibatches)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    was_training = model.training
    model.train()
    for _ in range(batches):
        model(next_batch()[0])
    model.train(was_training)
    for m, mom in zip(bns, saved):
        m.momentum = mom


def _prunable_weights(model: nn.Module) -> int:
    return sum(m.weight.numel() for _, m in prunable_layers(model))


def _reinit(model: nn.Module, seed: int) -> None:
    torch.manual_seed(seed)
    for m in model.modules():
        if hasattr(m, "reset_parameters") and m is not model:
            m.reset_parameters()


def measure_before(model: nn.Module, bundle: DataBundle, threads: int) -> dict:
    """Accuracy, MACs, parameters and latency of the network before pruning."""
    return {**measure_model(model, bundle), "latency_ms": _latency(model, bundle.input_shape, threads)}


def load_source(checkpoint: str | None, model_name: str | None, width: float, data_cfg: DataConfig,
                seed: int) -> tuple[nn.Module, dict, DataBundle]:
    """The network to prune (from a run folder, or built fresh) with its manifest and the data."""
    if checkpoint is None and model_name is None:
        raise NetsiftError("give --checkpoint RUN_DIR (a netsift train run) or --model NAME")
    if checkpoint is not None:
        if not Path(checkpoint).exists():
            raise NetsiftError(f"--checkpoint {checkpoint} does not exist")
        model, manifest = load_model(checkpoint)
        if model_name is not None and model_name != manifest["model"]:
            raise NetsiftError(f"--checkpoint {checkpoint} holds a {manifest['model']}, not a {model_name}")
        bundle = load_bundle(data_cfg, seed)
        have = (manifest["in_channels"], manifest["image_size"], manifest["num_classes"])
        want = (bundle.in_channels, bundle.image_size, bundle.num_classes)
        if have != want:
            raise NetsiftError(f"--checkpoint {checkpoint} was trained on inputs (channels, size, classes) = {have}, "
                               f"but --data {data_cfg.data} has {want}")
        return model, manifest, bundle
    model_cfg = ModelConfig(model_name, width)
    bundle = load_bundle(data_cfg, seed)
    model = build_for(model_cfg, bundle, seed)
    return model, model_manifest(model_cfg, bundle), bundle


def prune(cfg: PruneConfig, data_cfg: DataConfig, train_cfg: TrainConfig, checkpoint: str | None = None,
          model_name: str | None = None, width: float = 1.0, seed: int = 0, out: str | Path | None = None,
          overwrite: bool = False, progress: bool = True, data_seed: int | None = None,
          before: dict | None = None) -> dict:
    """Select, remove, fine-tune and measure; write the run folder and return ``result.json``'s contents.

    Every check of the input happens before the output folder is touched. ``data_seed`` (default ``seed``)
    fixes the train/validation split; ``before`` reuses a measurement of the unpruned network
    (:func:`measure_before`) when many runs prune the same one.
    """
    t0 = time.perf_counter()
    model, manifest, bundle = load_source(checkpoint, model_name, width, data_cfg,
                                          seed if data_seed is None else data_seed)
    model.eval()
    shape = bundle.input_shape
    graph = build_graph(model, shape)
    groups = find_groups(model, shape, graph)
    if cfg.method == "bn-scale":
        from .bn_scale import check
        check(graph, groups)
    run_dir = prepare_out_dir(out, overwrite, default_name=f"prune-{cfg.method}")
    config = {"command": "prune", "checkpoint": str(checkpoint) if checkpoint else None, "model": manifest["model"],
              "seed": seed, "prune": dataclasses.asdict(cfg), "data": dataclasses.asdict(data_cfg),
              "finetune": dataclasses.asdict(train_cfg)}
    atomic_write_json(run_dir / "config.json", config)

    before = before or measure_before(model, bundle, cfg.latency_threads)
    before_lat = before["latency_ms"]
    macs_model = MacsModel(model, groups, shape)
    widths = allocate(macs_model, cfg.macs, cfg.round_to) if cfg.macs is not None else None

    select_bundle, holdout = split_holdout(bundle, cfg.holdout)
    from ..data import sample_batches

    layer_ft = None
    if cfg.layer_finetune > 0:
        steps = max(1, int(cfg.layer_finetune * len(select_bundle.train) / train_cfg.batch_size))
        ft_cfg = dataclasses.replace(train_cfg, epochs=1, max_steps=steps)
        layer_ft = lambda m: fit(m, select_bundle, ft_cfg, None, seed=seed, desc="layer fine-tune")  # noqa: E731
    original = {k: v.clone() for k, v in model.state_dict().items()}
    ctx = SelectionContext(model, groups, graph, shape, sample_batches(select_bundle, cfg.select_batch, seed), holdout,
                           widths=widths, tolerance=cfg.tolerance if widths is None else None,
                           candidates=cfg.candidates, epsilon=cfg.epsilon, replacement=cfg.replacement, seed=seed,
                           layer_finetune=layer_ft, progress=progress, bn_batch_stats=cfg.bn_batch_stats)
    t_sel = time.perf_counter()
    selection = METHODS[cfg.method](ctx)
    selection_s = time.perf_counter() - t_sel
    ctx.masker.remove()
    teacher = None
    if cfg.distill:
        import copy
        teacher = copy.deepcopy(model)
        teacher.load_state_dict(original)
    rescale = selection.rescale if cfg.rescale == "auto" else cfg.rescale == "on"
    pruned = remove_channels(model, shape, selection.kept, rescale)
    if cfg.recalibrate_bn:
        recalibrate_bn(pruned, sample_batches(select_bundle, cfg.select_batch, seed + 1), cfg.recalibrate_bn)
    if cfg.reinit:
        _reinit(pruned, seed)
    test_loader = make_loader(bundle, "test", 512)
    selected = evaluate(pruned, test_loader)
    finetune_s, fitted = 0.0, None
    if cfg.finetune_epochs > 0:
        ft = dataclasses.replace(train_cfg, epochs=cfg.finetune_epochs)
        loss_fn = distill_loss(teacher, ft.label_smoothing) if teacher is not None else None
        t_ft = time.perf_counter()
        fitted = fit(pruned, bundle, ft, run_dir, seed=seed, desc=f"fine-tune {cfg.method}", loss_fn=loss_fn)
        finetune_s = time.perf_counter() - t_ft
    pruned.eval()
    after = measure_model(pruned, bundle)
    after_lat = _latency(pruned, shape, cfg.latency_threads)
    save_model(run_dir, pruned, {**manifest, "modules": module_sizes(pruned)})
    if cfg.onnx:
        from ..onnx_export import export_onnx
        export_onnx(pruned, shape, run_dir / "model.onnx")
    params_nz, params_total = count_params(pruned)
    result = {
        "command": "prune", "method": cfg.method, "model": manifest["model"], "data": data_cfg.data, "seed": seed,
        "test_acc": after["test_acc"], "val_acc": after["val_acc"],
        "density": _prunable_weights(pruned) / _prunable_weights(model),
        "params": params_nz, "params_total": params_total, "macs": count_macs(pruned, shape),
        "wall_s": time.perf_counter() - t0, "layers": after["layers"],
        "target_macs_fraction": cfg.macs, "tolerance": cfg.tolerance,
        "macs_fraction": count_macs(pruned, shape) / before["macs"],
        "before": {"test_acc": before["test_acc"], "val_acc": before["val_acc"], "macs": before["macs"],
                   "params": before["params"], "latency_ms": before_lat},
        "test_acc_selected": selected["acc"], "test_acc_finetuned": after["test_acc"],
        "latency_ms": after_lat,
        "speedup_b1": before_lat["b1_ms"] / after_lat["b1_ms"],
        "speedup_b64": before_lat["b64_ms"] / after_lat["b64_ms"],
        "macs_reduction": before["macs"] / count_macs(pruned, shape),
        "latency_threads": cfg.latency_threads or torch.get_num_threads(),
        "selection_s": selection_s, "finetune_s": finetune_s, "reinit": cfg.reinit, "distill": cfg.distill,
        "groups": selection.info, "checkpoint": str(checkpoint) if checkpoint else None, "run_dir": str(run_dir),
        "finetune_best_epoch": fitted.best_epoch if fitted else None,
    }
    return write_result(run_dir, result)
