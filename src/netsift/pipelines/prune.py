"""``netsift.prune``: select the channels worth keeping, remove the rest physically, fine-tune, measure."""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import distributed, memory, rundir
from .. import progress as _progress
from ..checks import checked
from ..config import RUN_FIELDS, RunOptions, TrainConfig
from ..errors import NetsiftError
from ..measure import evaluate
from ..models import prunable_layers
from ..results import Result
from ..selection import METHODS, PruneConfig, finetune_defaults
from ..selection.pruner import REMOVAL_TOLERANCE, Plan, plan_channels, predicted_fraction, prune_channels
from ..selection.state import SelectionState
from ..training import distill_loss, fit, has_batch_norm, recalibrate_bn
from ..runner import SOURCE_FIELDS, Job, Outcome, RunContext, Source, Start, config_of, execute, split_options
from .train import TRAIN_FIELDS, run_options

PRUNE_FIELDS = frozenset(f.name for f in dataclasses.fields(PruneConfig)) - {"options", "method", "macs"}
METHOD_OPTIONS = frozenset(name for spec in METHODS.values() for name in spec.options)


@dataclass
class PruneSpec:
    """A channel-pruning run: the source, the selection settings, the fine-tune loop and the run options.

    ``finetune`` holds the fine-tune loop (its epochs are ``prune.finetune_epochs``, at least 1); the layers of
    ``ignored_layers`` keep their channels; ``layer_density`` fixes some groups' kept fractions;
    ``source_measure`` reuses a measurement of the unpruned network.
    """

    source: Source
    prune: PruneConfig = field(default_factory=PruneConfig)
    finetune: TrainConfig = field(default_factory=lambda: TrainConfig(**finetune_defaults()))
    run: RunOptions = field(default_factory=RunOptions)
    example_input: torch.Tensor | None = None
    ignored_layers: list | None = None
    layer_density: dict | None = None
    source_measure: dict | None = None
    command = "prune"
    reads_runs = True

    def __post_init__(self):
        epochs = max(1, self.prune.finetune_epochs)
        self.finetune = dataclasses.replace(self.finetune, epochs=epochs).resolved(**finetune_defaults())
        distributed.share_policy()  # NETSIFT_SHARE_PREFIX: refused now, not mid-selection
        if self.source.arch is not None and rundir.is_run_folder(self.source.model):
            rundir.read_run(self.source.model).check_arch(self.source.arch)

    @property
    def method(self) -> str:
        """The selection method."""
        return self.prune.method

    @property
    def cpu(self) -> bool:
        """Whether the run stays on the CPU."""
        return self.finetune.cpu

    def prepare(self, start: Start) -> Job:
        """Trace the network, find its channel groups and allocate the budget (before any folder is written)."""
        net, shape = start.net, start.bundle.input_shape
        cfg = self.prune.resolved(has_batch_norm(net))
        if self.example_input is not None and tuple(self.example_input.shape[1:]) != tuple(shape):
            raise NetsiftError(f"example_input has sample shape {tuple(self.example_input.shape[1:])}, the data "
                               f"{shape}")
        net.eval()
        n_train = start.bundle.size("train")  # the selection's largest passes checked before any work
        memory.check_fits(net, shape, max(min(cfg.holdout, n_train // 2), min(cfg.select_batch, n_train)), False,
                          what="a held-out or minibatch pass of the selection")
        plan = plan_channels(net, shape, cfg, self.ignored_layers, self.layer_density)
        sections = {"train": dataclasses.asdict(self.finetune), "prune": dataclasses.asdict(cfg)}
        return Job(net, lambda ctx: self._body(ctx, plan), sections,
                   resume_ignores=("train.epochs", "prune.finetune_epochs"))

    def _body(self, ctx: RunContext, plan: Plan) -> Outcome:
        net, bundle, seed, cfg = ctx.start.net, ctx.start.bundle, ctx.start.seed, plan.cfg
        before = self.source_measure or ctx.measure(net)
        teacher = copy.deepcopy(net) if cfg.distill else None
        pruned, selection = self._select(ctx, plan)
        selected = evaluate(pruned, distributed.eval_loader(bundle, "test", 512), sharded=True)
        finetune_s, fitted = 0.0, None
        if cfg.finetune_epochs > 0:
            loss_fn = distill_loss(teacher, self.finetune.label_smoothing) if teacher is not None else None
            t_ft = time.perf_counter()
            fitted = fit(pruned, bundle, self.finetune, ctx.run_dir, seed=seed, resume=ctx.options.resume,
                         desc=f"fine-tune {cfg.method}", loss_fn=loss_fn, log_with=ctx.options.log_with)
            finetune_s = time.perf_counter() - t_ft
        pruned.eval()
        after = ctx.measure(pruned, latency_threads=cfg.latency_threads, source=net, source_macs=before["macs"])
        after["density"] = _prunable_weights(pruned) / _prunable_weights(net)
        budget = plan.budget
        fields = {**after, "source": ctx.start.source_dir, "macs_target": cfg.macs, "tolerance": cfg.tolerance,
                  "params_target": cfg.params, "latency_target": cfg.latency,
                  "params_fraction": after["params_total"] / before["params_total"],
                  "latency_budget": budget.record if budget is not None else None,
                  "widths": cfg.widths if budget is not None else None,
                  "source_test_acc": before["test_acc"], "source_macs": before["macs"],
                  "source_params": before["params"], "test_acc_selected": selected["acc"],
                  "finetuned": fitted is not None, "finetune_epochs": cfg.finetune_epochs,
                  "epochs_run": len(fitted.history) if fitted else 0,
                  "best_epoch": fitted.best_epoch if fitted else None,
                  "train_images_per_s": fitted.images_per_s if fitted else None,
                  **selection, "finetune_s": finetune_s}
        fields["budget_missed"] = budget_missed(cfg, after["macs_fraction"], fields["params_fraction"],
                                                fields.pop("predicted_fraction", None))
        if fields["budget_missed"] and distributed.is_main():
            _progress.write(f"warning: {fields['budget_missed']}")

        def onnx(run_dir: Path) -> dict:
            from ..onnx_export import export_onnx

            export_onnx(pruned, bundle.input_shape, rundir.artifact(run_dir, "onnx"))
            return {}

        return Outcome(pruned, fields, artifacts=onnx if cfg.onnx else None)

    def _select(self, ctx: RunContext, plan: Plan) -> tuple[nn.Module, dict]:
        """Select the channels (resuming a selection cut short) and remove the others; the network and the
        selection's result fields."""
        net, seed, cfg, run_dir = ctx.start.net, ctx.start.seed, plan.cfg, ctx.run_dir
        select_bundle, holdout = ctx.start.bundle.holdout(cfg.holdout)
        layer_ft = None
        if cfg.layer_finetune > 0:
            # a fraction of an epoch of the whole data: each of the N processes takes a minibatch per step
            images = cfg.layer_finetune * select_bundle.size("train")
            steps = max(1, int(images / (self.finetune.batch_size * distributed.world_size())))
            ft_layer = dataclasses.replace(self.finetune, epochs=1, max_steps=steps)
            layer_ft = lambda m: fit(m, select_bundle, ft_layer, None, seed=seed, desc="layer fine-tune")  # noqa: E731
        stream = select_bundle.batches("train", cfg.select_batch, seed)
        state = SelectionState(run_dir, cfg.method, stream, keep_model=layer_ft is not None)
        hooks = state.hooks(plan, net) if run_dir is not None else {}
        if run_dir is not None and ctx.options.resume:
            hooks["done"] = state.load(plan, net)
            hooks["resumed_widths"] = state.widths if hooks["done"] else None
        out = prune_channels(plan, stream, holdout, seed=seed, progress=ctx.options.progress is not False,
                             layer_finetune=layer_ft, **hooks)
        pruned = out.model
        recalibrated = recalibrate_bn(pruned, select_bundle.batches("train", cfg.select_batch, seed + 1),
                                      cfg.recalibrate_bn)
        if cfg.reinit:
            _reinit(pruned, seed)
        estimate = ({"selection_estimate_s": out.estimate.seconds, "selection_passes": out.estimate.passes}
                    if out.estimate else {})
        if (out.removal_error or 0.0) > REMOVAL_TOLERANCE and distributed.is_main():
            _progress.write(f"warning: the pruned network computes something other than the subnetwork its selection "
                            f"scored (outputs differ by {out.removal_error:.2g} of their size): a layer computes "
                            f"differently on fewer channels (a norm netsift does not recompute over the kept ones) or "
                            f"netsift's channel groups do not fit this network; fine-tune, and report it")
        return pruned, {"recalibrated_bn": recalibrated, "selection_s": out.selection_s,
                        "removal_error": out.removal_error,
                        "predicted_fraction": predicted_fraction(plan, out.selection),  # for budget_missed only
                        "groups": out.selection.info, "groups_skipped": [s.as_dict() for s in plan.skipped],
                        **estimate}


@checked  # wrong argument types (nested configs and keyword options too) are one line
def prune(model: nn.Module | str | Path, data: Any = None, method: str = "gfs", macs: float | None = None, *,
          example_input: torch.Tensor | None = None, finetune: TrainConfig | dict | None = None,
          ignored_layers: list | None = None, layer_density: dict | None = None, source_measure: dict | None = None,
          run: RunOptions | None = None, **options: Any) -> Result:
    """Select channels of a trained network, remove the others for real, fine-tune, and measure.

    Args:
        model: an ``nn.Module`` Torch-Pruning can trace, a run folder of ``netsift train``, or a zoo name
            (random init: GFS's guarantee holds for random networks too).
        data: a data-set name, a :class:`~netsift.data.DataBundle`, or a dict of ``DataLoader``\\ s / data sets;
            for a run folder, default the run's own data and split (a name or data settings complete them).
        method: ``gfs``, ``backward``, ``l1``, ``taylor``, ``bn-scale`` or ``random`` (``netsift.selection.METHODS``).
        macs: keep this fraction of the MACs (default: stop each layer by the accuracy ``tolerance``).
        example_input: one input batch for tracing (default: a sample of the data's shape).
        finetune: fine-tune loop settings (default: the published recipe, ``finetune_defaults()``).
        ignored_layers: layers (modules or names) whose output channels are kept, as in Torch-Pruning.
        layer_density: ``{layer: kept fraction of its channels}``; the MACs budget is shared by the other groups.
        source_measure: a measurement of the unpruned network to reuse (``measure(model, bundle)``).
        run: the run-level settings (see :func:`netsift.train`); ``seed`` seeds the greedy minibatches,
            candidate subsets, random rankings and the fine-tune; ``data_seed`` defaults to the source run's;
            ``out`` may not be the source run; ``resume`` continues an interrupted run: the channel groups it
            finished are not selected again, and the fine-tune continues from its last epoch, ending with the
            same network as an uninterrupted run.
        options: :class:`~netsift.selection.PruneConfig` fields (``finetune_epochs``, ``tolerance``,
            ``round_to``, ``candidates``, ``bn_batch_stats``, ``recalibrate_bn``, ``distill``, ...), fine-tune
            loop fields (``lr``, ``batch_size``, ...), the method's own options (``replacement``), run options,
            and ``width``, ``weights`` (not with a run folder or a module) and ``image_size`` (a run folder's
            own size is used by default, and a different one is refused) as in :func:`netsift.train`.

    Returns:
        a :class:`~netsift.results.Result`: ``.model`` is the pruned network (plain, smaller modules).
    """
    shared, loop, own, given, source = split_options(options, PRUNE_FIELDS, TRAIN_FIELDS, METHOD_OPTIONS, RUN_FIELDS,
                                                     SOURCE_FIELDS)
    cfg = PruneConfig(method=method, macs=macs, **shared, options=own)
    ft = config_of(TrainConfig, finetune_defaults() if finetune is None else finetune, "finetune", **loop)
    return execute(PruneSpec(Source(model, data, **source), cfg, ft, run_options(run, given), example_input,
                             ignored_layers, layer_density, source_measure))


def _prunable_weights(model: nn.Module) -> int:
    return sum(m.weight.numel() for _, m in prunable_layers(model))


def _reinit(model: nn.Module, seed: int) -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in model.modules():
            if hasattr(m, "reset_parameters") and m is not model:
                m.reset_parameters()


def budget_missed(cfg: PruneConfig, macs_fraction: float, params_fraction: float | None,
                  predicted: float | None = None) -> str | None:
    """Why the pruned network is off its MACs or parameter budget by more than 1% of it (``None``: met, or no
    such budget). ``predicted``: what the cost model gave the kept channels; where it agrees with the pruned
    network, the widths could not get closer (coarse units, ``--round-to``, a ``layer_density``); where it does
    not, Torch-Pruning removed channels the cost model does not count."""
    for name, target, got in (("MACs", cfg.macs, macs_fraction), ("parameters", cfg.params, params_fraction)):
        if target is not None and abs(got - target) > 0.01 * target:
            why = (f"the cost model gives these channels {predicted:.3f} too: the widths cannot get closer (channel "
                   f"groups too coarse for the budget, --round-to, or layer_density)"
                   if predicted is not None and abs(predicted - got) <= 0.001 * target
                   else "the cost model and the removal disagree on this network")
            return (f"the pruned network keeps {got:.3f} of its {name}, not the {target:g} asked for (off by more "
                    f"than 1%): {why}")
    return None


__all__ = ["PruneSpec", "prune", "SelectionState"]
