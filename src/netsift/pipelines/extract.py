"""``netsift.extract``: learn a weight mask over a frozen random network and keep the extracted subnetwork."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from .. import distributed, rundir
from .. import progress as _progress
from ..checks import checked
from ..config import RUN_FIELDS, RunOptions, TrainConfig
from ..errors import NetsiftError
from ..masks import EXTRACT_DEFAULTS, METHODS, MaskConfig, apply_masks, fit_masks, masks_and_scales, train_config
from ..masks import extract as extract_masks
from ..masks.compact import compact_of_run, save_run_subnet
from ..masks.frozen import INIT_SCHEMES, frozen_network, init_frozen, weights_sha256
from ..models import manifest_of
from ..results import Result
from ..training import BNRecalibration, has_batch_norm, recalibrate_bn
from ..runner import SOURCE_FIELDS, Job, Outcome, RunContext, Source, Start, config_of, execute, split_options
from .train import TRAIN_FIELDS, run_options

MASK_FIELDS = frozenset(f.name for f in dataclasses.fields(MaskConfig)) - {"options", "method", "density", "init"}
METHOD_OPTIONS = frozenset(name for spec in METHODS.values() for name in spec.options)


@dataclass
class ExtractSpec:
    """A mask-learning run: the source, the mask method's settings, the loop's and the run options.

    ``init``: the frozen weight init drawn from the seed (``None``: keep the network's own weights, as with a
    ``--weights`` file).
    """

    source: Source
    mask: MaskConfig = field(default_factory=MaskConfig)
    loop: TrainConfig = field(default_factory=lambda: TrainConfig(**EXTRACT_DEFAULTS))
    run: RunOptions = field(default_factory=RunOptions)
    init: str | None = "signed-constant"
    recalibrate_bn: int = 20
    command = "extract"
    reads_runs = False

    def __post_init__(self):
        if self.init is not None and self.init not in INIT_SCHEMES:
            raise NetsiftError(f"unknown --init {self.init!r}; choose from: {', '.join(INIT_SCHEMES)}")
        if self.source.weights is not None:
            self.init = None  # the frozen weights are the file's
        self.mask = dataclasses.replace(self.mask, init=self.init or self.mask.init).resolved()
        self.loop = train_config(self.mask.method, self.loop)
        n = self.recalibrate_bn
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= 10**6:
            raise NetsiftError(f"--recalibrate-bn must be an integer in [0, 1,000,000], got {n!r}")

    @property
    def method(self) -> str:
        """The mask method."""
        return self.mask.method

    @property
    def cpu(self) -> bool:
        """Whether the run stays on the CPU."""
        return self.loop.cpu

    def prepare(self, start: Start) -> Job:
        """Freeze the network at its random init (a zoo network is rebuilt from its manifest and the seed)."""
        net = start.net
        manifest = manifest_of(net) if isinstance(self.source.model, str) else None
        if self.init is not None:
            net = frozen_network(manifest, self.mask.init, start.seed) if manifest else init_frozen(
                net, self.mask.init, start.seed)
        mask = {**dataclasses.asdict(self.mask), "init": self.init or "keep", "recalibrate_bn": self.recalibrate_bn}
        sections = {"train": dataclasses.asdict(self.loop), "mask": mask}
        return Job(net, lambda ctx: self._body(ctx, net, manifest), sections)

    def _body(self, ctx: RunContext, net: nn.Module, manifest: dict | None) -> Outcome:
        bundle, seed, opts = ctx.start.bundle, ctx.start.seed, ctx.options
        weights_hash = weights_sha256(net)
        masked = apply_masks(net, self.mask, seed=seed)
        callbacks = []
        if self.recalibrate_bn and has_batch_norm(masked):
            callbacks.append(BNRecalibration(bundle, self.recalibrate_bn, self.loop.batch_size, seed))
        fitted = fit_masks(masked, bundle, self.loop, ctx.run_dir, seed=seed, resume=opts.resume,
                           callbacks=callbacks, log_with=opts.log_with)
        extracted = extract_masks(masked).cpu()
        recalibrated = recalibrate_bn(extracted, bundle.batches("train", self.loop.batch_size, seed + 1),
                                      self.recalibrate_bn)
        # logits and scales are synchronised like weights: every process holds the same mask (checked, not assumed)
        distributed.check_same(distributed.tensors_digest(extracted.state_dict()), "extracted masks and weights")
        measured = ctx.measure(extracted)
        empty = [row["name"] for row in measured["layers"]
                 if not int(extracted.get_submodule(row["name"]).weight.count_nonzero())]
        if empty and distributed.is_main():
            _progress.write(f"warning: layer{'s' if len(empty) > 1 else ''} {', '.join(empty)} of the extracted "
                            f"network keep{'' if len(empty) > 1 else 's'} no weight (density "
                            f"{measured['density']:.2g}): {'their' if len(empty) > 1 else 'its'} output is "
                            "constant; raise --density")
        scales = {k: float(v[1]) for k, v in masks_and_scales(masked).items()}
        for row in measured["layers"]:
            row["scale"] = scales.get(row["name"])
        fields = {**measured, "init": self.init or "keep", "rescale": self.mask.rescale,
                  "density_target": self.mask.density, "mask_lr": self.loop.lr,
                  "mask_weight_decay": self.loop.weight_decay, "mask_schedule": self.loop.schedule,
                  "recalibrated_bn": recalibrated, "epochs_run": len(fitted.history),
                  "best_epoch": fitted.best_epoch, "stopped_early": fitted.stopped_early,
                  "train_images_per_s": fitted.images_per_s, "weights_sha256": weights_hash}

        # the subnet contract: frozen weights regenerated from (architecture, init, seed), one bit per weight
        compact = compact_of_run(masked, extracted, manifest, self.mask.init if self.init is not None else None, seed,
                                 bool(self.mask.options.get("train_weights")), bundle, ctx.start.data_seed,
                                 method=self.mask.method, test_acc=measured["test_acc"])

        def subnet(run_dir: Path) -> dict:
            save_run_subnet(run_dir, compact)
            return {"subnet": "subnet.safetensors"}

        return Outcome(extracted, fields, manifest, subnet if compact is not None else None, compact=compact)


@checked  # wrong argument types (nested configs and keyword options too) are one line
def extract(model: nn.Module | str, data: Any, method: str = "gumbel", density: float | None = None, *,
            init: str | None = "signed-constant", config: TrainConfig | dict | None = None,
            recalibrate_bn_batches: int = 20, run: RunOptions | None = None, **options: Any) -> Result:
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
        recalibrate_bn_batches: batch-norm statistics are re-estimated on this many training minibatches under
            the extracted mask, before every validation and at the end (networks without batch norm: no-op).
        run: the run-level settings (see :func:`netsift.train`), or give them as keyword options.
        options: also ``width``, ``image_size`` and ``weights`` (see :func:`netsift.train`): with ``weights``
            the network is frozen at the file's weights; ``init`` is then not drawn (recorded as ``keep``) and no
            compact subnet file is written (the weights cannot be regenerated from a seed).

    Returns:
        a :class:`~netsift.results.Result`: ``.model`` is the extracted network (plain modules, masked weights
        baked in), ``.density`` its kept fraction of weights.
    """
    loop, shared, own, given, source = split_options(options, TRAIN_FIELDS, MASK_FIELDS, METHOD_OPTIONS, RUN_FIELDS,
                                                     SOURCE_FIELDS)
    mask = MaskConfig(method=method, density=density, **shared, options=own)
    loop_cfg = config_of(TrainConfig, EXTRACT_DEFAULTS if config is None else config, "config", **loop)
    return execute(ExtractSpec(Source(model, data, **source), mask, loop_cfg, run_options(run, given), init,
                               recalibrate_bn_batches))
