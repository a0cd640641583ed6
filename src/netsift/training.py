"""The one training loop every command uses (dense training, mask learning, fine-tuning).

It runs on Hugging Face Accelerate (CPU, one or more GPUs, mixed precision), trains one or more parameter
groups each with its own optimizer, evaluates on the validation split after every epoch, keeps the best
weights, stops early on a patience, appends per-epoch metrics to ``metrics.jsonl`` and writes an atomic
checkpoint after every epoch so that ``resume=True`` continues bit for bit where an interrupted run stopped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from . import distributed, memory
from . import progress as _progress
from .checkpoint import atomic_write_bytes, flatten_state, load_checkpoint, save_checkpoint, unflatten_state
from .config import TrainConfig
from .data import DataBundle
from .errors import NetsiftError
from .measure import check_labels, evaluate, run_model
from .tracking import Trackers
from .rundir import ARTIFACTS, artifact
from .schema import BEST_CHECKPOINT, TRAIN_CHECKPOINT

CHECKPOINT, BEST, METRICS = ARTIFACTS["checkpoint"].stem, ARTIFACTS["best"].stem, ARTIFACTS["metrics"].files[0]


@dataclass
class OptimGroup:
    """Parameters trained by one optimizer; unset settings fall back to the :class:`TrainConfig`."""

    name: str
    params: list[nn.Parameter]
    optimizer: str | None = None
    lr: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    nesterov: bool | None = None
    schedule: str | None = None


class Callback:
    """Hooks into :func:`fit`. Override what you need; ``on_epoch_end`` may add metrics to the epoch's row."""

    def on_epoch_start(self, epoch: int) -> None:  # noqa: D102
        pass

    def on_step_end(self, step: int, loss: float) -> None:  # noqa: D102
        pass

    def before_validation(self, model: nn.Module) -> None:
        """Called after an epoch's last step, before the validation pass (the model is the unwrapped one)."""

    def on_epoch_end(self, epoch: int, metrics: dict) -> None:  # noqa: D102
        pass

    def state_dict(self) -> dict:
        """JSON-serialisable state saved in checkpoints (tensors allowed)."""
        return {}

    def load_state_dict(self, state: dict) -> None:  # noqa: D102
        pass


@dataclass
class FitResult:
    """What :func:`fit` returns: the per-epoch history and the best validation point."""

    history: list[dict] = field(default_factory=list)
    best_val_acc: float = -1.0
    best_epoch: int = -1
    stopped_early: bool = False
    wall_s: float = 0.0
    images_per_s: float = 0.0


def lr_factor(schedule: str, step: int, total_steps: int, steps_per_epoch: int, cfg: TrainConfig) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based)."""
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(1, total_steps)))
    epoch = step // max(1, steps_per_epoch)
    if cfg.step_every:
        return cfg.gamma ** (epoch // cfg.step_every)
    return cfg.gamma ** sum(epoch >= m for m in (cfg.epochs // 2, (3 * cfg.epochs) // 4))


def build_optimizer(group: OptimGroup, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The torch optimizer for one group."""
    kind = group.optimizer or cfg.optimizer
    lr = group.lr if group.lr is not None else cfg.lr
    wd = group.weight_decay if group.weight_decay is not None else cfg.weight_decay
    if kind == "adam":
        return torch.optim.Adam(group.params, lr=lr, weight_decay=wd)
    momentum = group.momentum if group.momentum is not None else cfg.momentum
    nesterov = (group.nesterov if group.nesterov is not None else cfg.nesterov) and momentum > 0
    return torch.optim.SGD(group.params, lr=lr, momentum=momentum, weight_decay=wd, nesterov=nesterov)


def _rng_state() -> tuple[dict, dict]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda{i}"] = s
    np_state = np.random.get_state()
    meta = {"python": _jsonable(random.getstate()), "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}
    return tensors, meta


def _jsonable(x):
    return [_jsonable(v) for v in x] if isinstance(x, (tuple, list)) else x


def _set_rng_state(tensors: dict, meta: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda"))]
        if states:
            torch.cuda.set_rng_state_all(states)
    py = meta["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = meta["numpy"]
    np.random.set_state((np_state[0], np.array(np_state[1], dtype=np.uint32), *np_state[2:]))


def default_loss(label_smoothing: float) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """Cross-entropy on the logits (the input ``x`` is unused)."""
    return lambda logits, y, x: nn.functional.cross_entropy(logits, y, label_smoothing=label_smoothing)


def fit(model: nn.Module, bundle: DataBundle, cfg: TrainConfig, run_dir: str | Path | None = None,
        groups: Sequence[OptimGroup] | None = None, callbacks: Iterable[Callback] = (), seed: int = 0,
        resume: bool = False, desc: str = "train",
        loss_fn: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None, progress: bool | None = None,
        log_with: str | Sequence[str] | None = None) -> FitResult:
    """Train ``model`` on ``bundle``'s training split and leave it holding the best validation weights.

    Args:
        model: the network; only parameters named in ``groups`` (default: all with ``requires_grad``) train.
        bundle: data, from :func:`netsift.data.load_data`.
        cfg: loop settings (epochs, optimizer, schedule, patience, ...).
        run_dir: folder for ``metrics.jsonl`` and checkpoints; ``None`` keeps everything in memory.
        groups: parameter groups, each with its own optimizer and learning rate.
        callbacks: hooks called at epoch and step boundaries.
        seed: seeds the batch order, augmentation and any sampling in the model.
        resume: continue from ``run_dir``'s checkpoint.
        desc: label of the progress report (a bar in a terminal, one line per epoch in a log file).
        loss_fn: ``loss_fn(logits, y, x)``; default cross-entropy with the config's label smoothing.
        progress: report progress (``None``: as the caller's :func:`netsift.progress.session`).
        log_with: experiment trackers (``"tensorboard"``, ``"csv"``, ... see :mod:`netsift.tracking`) that
            get the loop's settings and every epoch's metrics; logs in ``run_dir/logs``.

    Raises:
        NetsiftError: a non-finite loss, or a missing or corrupt checkpoint when resuming.
    """
    trackers = Trackers(log_with, run_dir)  # unknown or missing tracker packages fail here, before any work
    with _progress.session(progress), _progress.scope():
        try:
            return _fit(model, bundle, cfg, run_dir, groups, callbacks, seed, resume, desc, loss_fn, trackers)
        finally:
            trackers.finish()


def epoch_line(desc: str, row: dict, epochs: int, report: "_progress.Task") -> str:
    """The progress line of a finished epoch: loss, accuracies, lr, throughput, elapsed time and ETA."""
    val = row.get("val_acc")
    val = "" if val is None or val != val else f", val acc {val:.4f}"
    extra = "".join(f", {k} {v:.4f}" for k, v in row.items() if k in ("mask_density",) and isinstance(v, float))
    return (f"{desc} epoch {row['epoch']}/{epochs}: train loss {row['train_loss']:.4f}, train acc "
            f"{row['train_acc']:.4f}{val}{extra}, lr {row['lr']:.4g}, {row['images_per_s']:,.0f} img/s, "
            f"{report.timing()}")


def _fit(model, bundle, cfg, run_dir, groups, callbacks, seed, resume, desc, loss_fn, trackers) -> FitResult:
    loop = _Loop(model, bundle, cfg.resolved(), run_dir, groups, list(callbacks), seed, desc, loss_fn, trackers)
    start_epoch = loop.start(resume)
    for epoch in range(start_epoch, loop.cfg.epochs):
        row, epoch_time = loop.train_epoch(epoch)
        if loop.record(epoch, loop.validate(epoch, row, epoch_time)):
            break
    return loop.finish()


class _Loop:
    """One run of the training loop: its set-up (:meth:`start`), epochs (:meth:`train_epoch`, :meth:`validate`,
    :meth:`record`) and end (:meth:`finish`)."""

    def __init__(self, model, bundle, cfg, run_dir, groups, callbacks, seed, desc, loss_fn, trackers):
        from accelerate import Accelerator

        self.bundle, self.cfg, self.callbacks, self.seed, self.desc, self.trackers = (bundle, cfg, callbacks, seed,
                                                                                      desc, trackers)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.accelerator = accelerator = Accelerator(cpu=cfg.cpu or not torch.cuda.is_available(),
                                                     mixed_precision=cfg.mixed_precision,
                                                     **trackers.accelerator_kwargs())
        if self.run_dir is not None and accelerator.is_main_process:  # only the main process writes the run folder
            self.run_dir.mkdir(parents=True, exist_ok=True)
        if groups is None:
            groups = [OptimGroup("all", [p for p in model.parameters() if p.requires_grad])]
        self.groups = [g for g in groups if g.params]
        if not self.groups:
            raise NetsiftError("nothing to train: the model has no trainable parameters")
        optimizers = [build_optimizer(g, cfg) for g in self.groups]
        for opt in optimizers:
            for pg in opt.param_groups:
                pg["peak_lr"] = pg["lr"]
        self.trained = [p for g in self.groups for p in g.params]
        prepared = accelerator.prepare(model, *optimizers)
        self.model, self.optimizers = prepared[0], list(prepared[1:])
        self.loss_fn = loss_fn or default_loss(cfg.label_smoothing)
        self.train_loader = bundle.loader("train", cfg.batch_size, shuffle=True, augment=cfg.augment, seed=seed,
                                          num_shards=accelerator.num_processes,
                                          shard_index=accelerator.process_index)
        memory.check_training(self.net, bundle.input_shape, self.train_loader, self.optimizers)
        val_batch = memory.fitting_batch(self.net, bundle.input_shape,
                                         min(max(cfg.batch_size, 256), max(bundle.size("val"), 1)))
        self.val_loader = distributed.eval_loader(bundle, "val", val_batch)  # this process's share
        steps = len(self.train_loader) if not cfg.max_steps else min(cfg.max_steps, len(self.train_loader))
        self.steps_per_epoch = distributed.min_int(steps)  # shards may differ by a batch: same steps everywhere
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.result = FitResult()
        self.step, self.best_state, self.since_best = 0, None, 0
        self.images_seen, self.train_time = 0, 0.0

    @property
    def net(self) -> nn.Module:
        """The network itself (not Accelerate's wrapper)."""
        return self.accelerator.unwrap_model(self.model)

    def start(self, resume: bool) -> int:
        """Restore a checkpoint (``resume``) or seed a fresh run; begin the progress report. Returns the first
        epoch to train."""
        start_epoch, run_dir = 0, self.run_dir
        if distributed.broadcast(resume and run_dir is not None and (artifact(run_dir, "checkpoint").with_suffix(".json")).exists()):
            start_epoch, self.step, self.best_state, self.since_best = _restore(
                run_dir, self.accelerator, self.model, self.optimizers, self.callbacks, self.result)
        else:
            torch.manual_seed(self.seed)
            random.seed(self.seed)
            np.random.seed(self.seed % 2**32)
            if run_dir is not None and distributed.is_main():
                artifact(run_dir, "metrics").unlink(missing_ok=True)
        self.t_start = time.perf_counter()
        self.trackers.start(self.accelerator, {"desc": self.desc, "seed": self.seed, **dataclasses.asdict(self.cfg)})
        self.report = _progress.begin(self.desc, self.steps_per_epoch * max(0, self.cfg.epochs - start_epoch), "step",
                                      enabled=None if self.accelerator.is_main_process else False)
        return start_epoch

    def train_epoch(self, epoch: int) -> tuple[dict, float]:
        """One epoch of optimizer steps; its loss, accuracy and image counts over every process, and its time."""
        cfg, accelerator = self.cfg, self.accelerator
        for cb in self.callbacks:
            cb.on_epoch_start(epoch)
        self.model.train()
        self.train_loader.set_epoch(epoch)
        distributed.seed_rank(self.seed, epoch)  # processes > 0: their own random stream (masks, dropout)
        t0 = time.perf_counter()
        loss_sum, correct, seen = 0.0, 0, 0
        self.report.set(epoch=f"{epoch + 1}/{cfg.epochs}")
        for i, (x, y) in enumerate(self.train_loader):
            if i >= self.steps_per_epoch:
                break
            x, y = x.to(accelerator.device), y.to(accelerator.device)
            loss, logits = self._step(epoch, i, x, y)
            loss_sum += loss * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
            for cb in self.callbacks:
                cb.on_step_end(self.step, loss)
            self.report.update(1, loss=loss_sum / seen)
        epoch_time = time.perf_counter() - t0
        bad = [n for n, t in [*self.net.named_parameters(), *self.net.named_buffers()]
               if t.is_floating_point() and not torch.isfinite(t).all()]
        if bad:
            raise NetsiftError(f"{bad[0]} became non-finite in epoch {epoch + 1}; lower the learning rate "
                               "(the last good checkpoint is kept)")
        loss_sum, correct, seen = distributed.sum_counts(loss_sum, correct, seen)  # the epoch over all processes
        seen = int(seen)
        self.train_time += epoch_time
        self.images_seen += seen
        return {"train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1), "seen": seen}, epoch_time

    def _step(self, epoch: int, i: int, x: Tensor, y: Tensor) -> tuple[float, Tensor]:
        """One optimizer step (the learning rate of the schedule, the loss checked); its loss and logits."""
        cfg = self.cfg
        for opt, g in zip(self.optimizers, self.groups):
            factor = lr_factor(g.schedule or cfg.schedule, self.step, self.total_steps, self.steps_per_epoch, cfg)
            for pg in opt.param_groups:
                pg["lr"] = pg["peak_lr"] * factor
        with self.accelerator.autocast():
            logits = run_model(self.model, x)
            check_labels(y, logits)  # every batch: a label past the outputs is one line, not a traceback
            loss = self.loss_fn(logits, y, x)
        if not torch.isfinite(loss):
            raise NetsiftError(f"loss became {loss.item()} at epoch {epoch + 1}, step {i + 1}; "
                               "lower the learning rate (the last good checkpoint is kept)")
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        self.accelerator.backward(loss)
        for opt in self.optimizers:
            opt.step()
        _check_step(self.trained, self.net, epoch, i)
        self.step += 1
        return loss.item(), logits

    def validate(self, epoch: int, train: dict, epoch_time: float) -> dict:
        """The epoch's metrics row: its training figures and the validation accuracy of the network as it is."""
        distributed.sync_buffers(self.net)  # every process validates the main one's network
        for cb in self.callbacks:
            cb.before_validation(self.net)
        val = evaluate(self.net, self.val_loader, self.accelerator.device, sharded=True) \
            if self.bundle.size("val") else {"acc": float("nan"), "loss": float("nan")}
        seen = train["seen"]
        row = {"epoch": epoch + 1, "step": self.step, "train_loss": train["train_loss"],
               "train_acc": train["train_acc"], "val_loss": val["loss"], "val_acc": val["acc"],
               "lr": self.optimizers[0].param_groups[0]["lr"], "epoch_s": round(epoch_time, 3),
               "images_per_s": round(seen / max(epoch_time, 1e-9), 1)}
        for cb in self.callbacks:
            cb.on_epoch_end(epoch, row)
        return row

    def record(self, epoch: int, row: dict) -> bool:
        """Log the epoch, keep the best weights, write metrics and checkpoints; whether the patience ends the run."""
        result, cfg, run_dir = self.result, self.cfg, self.run_dir
        result.history.append(row)
        self.report.log(epoch_line(self.desc, row, cfg.epochs, self.report))
        self.trackers.log(row, epoch + 1)
        improved = not (row["val_acc"] <= result.best_val_acc)  # NaN validation (no val split) counts as better
        if improved:
            result.best_val_acc, result.best_epoch, self.since_best = row["val_acc"], epoch + 1, 0
            self.best_state = {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()}
        else:
            self.since_best += 1
        stop = bool(cfg.patience) and self.since_best >= cfg.patience
        if self.accelerator.is_main_process and run_dir is not None:
            with open(artifact(run_dir, "metrics"), "a") as f:
                f.write(json.dumps(row) + "\n")
            if improved:
                save_checkpoint(artifact(run_dir, "best"), self.best_state, {"epoch": epoch + 1, "val_acc": row["val_acc"]})
            _save(run_dir, self.accelerator, self.model, self.optimizers, self.callbacks, epoch + 1, self.step,
                  result, self.since_best, stop)
        if stop:
            result.stopped_early = True
        return stop

    def finish(self) -> FitResult:
        """End the report and leave the network holding the best validation weights."""
        self.report.end()
        result = self.result
        result.wall_s = time.perf_counter() - self.t_start
        result.images_per_s = self.images_seen / self.train_time if self.train_time else 0.0
        if self.best_state is not None:
            self.net.load_state_dict(self.best_state)
        return result


def _check_step(params: list[nn.Parameter], model: nn.Module, epoch: int, i: int) -> None:
    """Stop the run at the first optimizer step that leaves a trained parameter NaN or infinite."""
    if not params or bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):
        return
    names = {id(p): n for n, p in model.named_parameters()}
    bad = next((names.get(id(p), "a parameter") for p in params if not torch.isfinite(p).all()), "a parameter")
    raise NetsiftError(f"{bad} became non-finite at epoch {epoch + 1}, step {i + 1}; lower the learning rate "
                       "(the last good checkpoint is kept)")


def _save(run_dir: Path, accelerator, model, optimizers, callbacks, epoch, step, result, since_best, stopped):
    tensors = {f"model.{k}": v for k, v in accelerator.unwrap_model(model).state_dict().items()}
    opt_meta = [flatten_state(f"opt{i}", opt.state_dict(), tensors) for i, opt in enumerate(optimizers)]
    cb_meta = [flatten_state(f"cb{i}", cb.state_dict(), tensors) for i, cb in enumerate(callbacks)]
    rng_tensors, rng_meta = _rng_state()
    tensors.update(rng_tensors)
    meta = {"epoch": epoch, "step": step, "best_val_acc": result.best_val_acc, "best_epoch": result.best_epoch,
            "since_best": since_best, "stopped": stopped, "optimizers": opt_meta, "callbacks": cb_meta,
            "rng": rng_meta, "history": result.history, "processes": distributed.world_size()}
    save_checkpoint(artifact(run_dir, "checkpoint"), tensors, meta)


def _restore(run_dir: Path, accelerator, model, optimizers, callbacks, result: FitResult):
    tensors, meta = load_checkpoint(run_dir / CHECKPOINT, "checkpoint", TRAIN_CHECKPOINT)
    distributed.check_resume(run_dir, meta)
    best_state = None
    if (run_dir / f"{BEST}.json").exists():
        best_state, _ = load_checkpoint(run_dir / BEST, "best checkpoint", BEST_CHECKPOINT)
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    unwrapped = accelerator.unwrap_model(model)
    for what, saved in (("checkpoint", state), ("best checkpoint", best_state)):
        if saved is not None and set(saved) != set(unwrapped.state_dict()):
            raise NetsiftError(f"{what} in {run_dir} does not fit this model (its tensors have other names)")
    if len(meta["optimizers"]) != len(optimizers):
        raise NetsiftError(f"checkpoint in {run_dir} has {len(meta['optimizers'])} optimizers, expected {len(optimizers)}")
    try:
        unwrapped.load_state_dict(state)
        for opt, m in zip(optimizers, meta["optimizers"]):
            opt.load_state_dict(unflatten_state(m, tensors))
        for cb, m in zip(callbacks, meta["callbacks"]):
            cb.load_state_dict(unflatten_state(m, tensors))
        _set_rng_state(tensors, meta["rng"])
    except (RuntimeError, KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise NetsiftError(f"checkpoint in {run_dir} does not fit this run: {why}") from None
    result.history = meta["history"]
    result.best_val_acc, result.best_epoch = meta["best_val_acc"], meta["best_epoch"]
    if result.best_val_acc is None:
        result.best_val_acc = float("nan")
    lines = [json.dumps(r) for r in result.history]
    if distributed.is_main():
        atomic_write_bytes(artifact(run_dir, "metrics"), "".join(line + "\n" for line in lines).encode())
    epoch = meta["epoch"]
    if meta.get("stopped"):
        epoch = 10**9  # the run had already stopped early: nothing left to train
    return epoch, meta["step"], best_state, meta["since_best"]


def distill_loss(teacher: nn.Module, label_smoothing: float, temperature: float = 4.0,
                 alpha: float = 0.5) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """``loss_fn(logits, y, x)``: cross-entropy mixed with the KL divergence to the teacher's soft labels."""
    teacher.eval()

    def loss_fn(logits: Tensor, y: Tensor, x: Tensor) -> Tensor:
        with torch.no_grad():
            t = teacher(x)
        ce = nn.functional.cross_entropy(logits, y, label_smoothing=label_smoothing)
        kl = nn.functional.kl_div(nn.functional.log_softmax(logits / temperature, 1),
                                  nn.functional.softmax(t / temperature, 1), reduction="batchmean")
        return (1 - alpha) * ce + alpha * temperature ** 2 * kl

    return loss_fn


class BNRecalibration(Callback):
    """Re-estimates the batch-norm running statistics before every validation pass (see :func:`recalibrate_bn`).

    For networks whose training forward differs from their evaluation forward (a mask sampled while
    training, the extracted mask when evaluating): the statistics gathered while training describe the wrong
    network.
    """

    def __init__(self, bundle: DataBundle, batches: int, batch_size: int = 128, seed: int = 0):
        self.bundle, self.batches, self.batch_size, self.seed, self.epoch = bundle, batches, batch_size, seed, 0

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch

    def before_validation(self, model: nn.Module) -> None:
        # the batches depend on (seed, epoch) only, so a resumed run recalibrates exactly as an uninterrupted one
        stream = self.bundle.batches("train", self.batch_size, self.seed * 1000003 + self.epoch + 1)
        recalibrate_bn(model, stream, self.batches)


def has_batch_norm(model: nn.Module) -> bool:
    """Whether ``model`` has a batch norm layer that tracks running statistics."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats for m in model.modules())


@torch.no_grad()
def recalibrate_bn(model: nn.Module, next_batch: Callable[[], tuple[Tensor, Tensor]], batches: int) -> int:
    """Re-estimate every batch norm's running statistics (cumulative average over ``batches`` minibatches).

    Everything but the batch norms stays in eval mode (a masked network uses its extracted masks, dropout is
    off). Returns the number of batches used (0 when the model has no batch norm).
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns or batches <= 0:
        return 0
    saved = [m.momentum for m in bns]
    was_training = model.training
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    device = next(model.parameters()).device
    try:
        with _progress.task("recalibrating batch norm", batches, "batch", summary_after=5.0) as report:
            for _ in range(batches):
                model(next_batch()[0].to(device))
                report.update()
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom
        model.train(was_training)
    return batches
