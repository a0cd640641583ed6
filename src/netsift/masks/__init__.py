"""Weight subnetworks of frozen random networks: learn which weights to keep, never the weights.

Methods (declared in :data:`METHODS`, :mod:`.methods`; one implementation file each): ``gumbel``
(Gumbel-Softmax with the ASLP parametrisation and Smart Rescale, Dupont et al. 2022; :mod:`.gumbel`),
``edge-popup`` (:mod:`.edge_popup`), ``supermask`` (Zhou et al.; :mod:`.supermask`) and ``random``
(:mod:`.random_mask`). Each is a ``torch.nn.utils.parametrize`` module on the weights of every Linear and
Conv2d layer (:mod:`.base`). A new method is one implementation file plus one :class:`~.methods.MaskMethod`
in :data:`METHODS`.

The building blocks (the pipeline :func:`netsift.extract` strings them together)::

    from netsift.masks import apply_masks, extract, fit_masks
    masked = apply_masks(model, "gumbel")          # freezes the weights, adds one logit per weight
    fit_masks(masked, bundle, epochs=10)           # trains logits (and scales) only
    subnet = extract(masked)                       # plain nn.Module, weights = scale · w ⊙ 1[m̂ ≥ 0]

Importing this package is cheap (the settings and ``--help`` need no torch); torch loads on first use.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._lazy import lazy_exports
from ..config import TrainConfig, check_finite, check_types, method_options, opt
from ..errors import NetsiftError, check_density, choose
from .methods import INIT_SCHEMES, METHODS, RESCALES, SCALE_INITS, MaskMethod, check_scheme

if TYPE_CHECKING:
    from torch import nn

    from ..data import DataBundle
    from ..training import FitResult

EXTRACT_DEFAULTS = {"epochs": 10, "batch_size": 128}
"""Loop defaults of ``extract`` (CPU-scaled; the published runs use up to 100-1000 epochs, see docs/masks.md)."""

COMPACT_SUFFIX = ".nsc"
"""File suffix of the compact subnetwork format (:mod:`.compact`)."""


@dataclass
class MaskConfig:
    """Settings of a weight-mask method (each field is also a ``netsift extract`` flag).

    The mask optimizer's learning rate, weight decay and schedule are the training loop's ``lr``,
    ``weight_decay`` and ``schedule`` (unset: the method's defaults, see :func:`train_config`).
    """

    method: str = opt("gumbel", "mask method", tuple(METHODS))
    density: float | None = opt(None, "fraction of weights to keep; gumbel: a target reached by projecting the "
                                      "logits (beyond the paper)")
    init: str = opt("signed-constant", "frozen weight init", INIT_SCHEMES)
    rescale: str | None = opt(None, "layer scale: none, smart (learned), dynamic (N/sum m)", RESCALES)
    scale_lr: float = opt(1e-3, "learning rate of the smart-rescale scales (SGD, momentum from --momentum)")
    scale_init: str = opt("one", "initial smart-rescale scale: one (published) or inv-sqrt-density, 1/sqrt(d) for "
                                 "the density d the mask starts at (the variance-preserving scale of edge-popup's "
                                 "scaled signed constant)", SCALE_INITS)
    options: dict[str, Any] = field(default_factory=dict, metadata={"help": "the method's own settings"})

    def __post_init__(self):
        check_types(self)
        choose(self.method, METHODS, "method")
        check_scheme(self.init)
        check_finite(self)
        spec = METHODS[self.method]
        if self.density is not None:
            if spec.density == "none":
                raise NetsiftError(f"--density is not available for {self.method} (its density is emergent)")
            self.density = check_density(self.density, "--density")
        if self.rescale is not None:
            choose(self.rescale, RESCALES, "--rescale")
        if not 0 <= self.scale_lr <= 1e3:
            raise NetsiftError(f"--scale-lr must be in [0, 1000], got {self.scale_lr}")
        self.options = method_options(self.method, self.options, METHODS)

    def resolved(self) -> "MaskConfig":
        """A copy with every unset shared setting replaced by the method's default.

        Raises:
            NetsiftError: ``scale_init`` other than ``one`` without a learned scale (``rescale`` smart).
        """
        defaults = METHODS[self.method].defaults
        fill = {k: defaults[k] for k in ("rescale", "density") if getattr(self, k) is None and k in defaults}
        out = dataclasses.replace(self, **fill)
        if out.scale_init != "one" and out.rescale != "smart":
            raise NetsiftError(f"--scale-init {out.scale_init} needs a learned scale (--rescale smart), "
                               f"got --rescale {out.rescale}")
        return out

    def start_density(self) -> float:
        """The density the training masks start at: a logit mask's σ(logit init) (gumbel samples at σ(m̂) even
        with a density target, which only pins the extracted mask), else the target."""
        if self.method in ("gumbel", "supermask") or self.density is None:
            return 1.0 / (1.0 + math.exp(-float(self.options.get("logit_init", 0.0))))
        return self.density


def train_config(method: str, cfg: TrainConfig | None = None, **options: Any) -> TrainConfig:
    """The loop settings of mask learning: ``cfg`` (or ``TrainConfig(**options)``) with the unset ``lr``,
    ``weight_decay`` and ``schedule`` taken from ``method``'s defaults (a budget-dependent lr default, such as
    gumbel's :class:`~.methods.BudgetLR`, is evaluated at ``cfg.epochs``)."""
    choose(method, METHODS, "method")
    cfg = cfg or TrainConfig(**options)
    defaults = {k: v for k, v in METHODS[method].defaults.items() if k in ("lr", "weight_decay", "schedule")}
    if callable(defaults.get("lr")):  # a budget-dependent default (see methods.BudgetLR)
        defaults["lr"] = defaults["lr"](cfg.epochs)
    return cfg.resolved(**defaults)


def apply_masks(model: nn.Module, method: str | MaskConfig = "gumbel", seed: int = 0, **options: Any) -> nn.Module:
    """Freeze ``model``'s parameters and put a ``method`` mask on every Linear/Conv2d weight, in place.

    Args:
        model: any module; its current weights become the frozen weights (see :func:`.frozen.init_frozen`
            for the published random inits).
        method: a method name or a :class:`MaskConfig`.
        seed: seeds score init (edge-popup) and random masks.
        options: :class:`MaskConfig` fields (``density``, ``rescale``, ``init``...) and the method's own
            options (``tau``, ``parametrization``, ``train_weights``).

    Returns:
        ``model``, now masked; ``model.mask_config`` holds the resolved settings.
    """
    if isinstance(method, MaskConfig):
        cfg = method
    else:
        names = {f.name for f in dataclasses.fields(MaskConfig)}
        shared = {k: v for k, v in options.items() if k in names}
        cfg = MaskConfig(method=method, **shared, options={k: v for k, v in options.items() if k not in names})
    from .base import apply as _apply

    cfg = cfg.resolved()
    _apply(model, METHODS[cfg.method].make(cfg, seed))
    if cfg.scale_init == "inv-sqrt-density":
        import torch

        from .base import scale_params

        with torch.no_grad():
            for scale in scale_params(model):
                scale.fill_(1.0 / math.sqrt(cfg.start_density()))
    model.mask_config = cfg
    return model


def fit_masks(model: nn.Module, bundle: DataBundle, train_cfg: TrainConfig | None = None,
              run_dir: str | Path | None = None, seed: int = 0, resume: bool = False, callbacks: list | None = None,
              log_with: str | list[str] | None = None, **train_options: Any) -> FitResult:
    """Train the masks of a model returned by :func:`apply_masks` with :func:`netsift.training.fit`.

    Mask logits/scores and smart scales get separate SGD optimizers (the loop's ``lr`` and ``weight_decay``
    for the masks, ``scale_lr`` for the scales); the method may add callbacks (gumbel's density projection).
    Unset loop settings take the method's defaults (:func:`train_config`). Every epoch's metrics row gets
    the mask statistics of :class:`.stats.MaskStats`. The model is left holding the masks of the best
    validation epoch (validated without sampling).

    Args:
        train_cfg: loop settings (epochs, batch size, schedule, patience, augmentation); ``train_options``
            build one when it is ``None``.
        callbacks: more training-loop callbacks.
        log_with: experiment trackers (see :func:`netsift.training.fit`).
    """
    from ..training import FitResult, OptimGroup, fit
    from .base import mask_params, scale_params

    cfg: MaskConfig = getattr(model, "mask_config", None)
    if cfg is None:
        raise NetsiftError("fit_masks needs a model returned by apply_masks")
    train_cfg = train_config(cfg.method, train_cfg, **train_options)
    groups = [OptimGroup("masks", mask_params(model), optimizer="sgd"),
              OptimGroup("scales", scale_params(model), optimizer="sgd", lr=cfg.scale_lr, weight_decay=0.0)]
    if cfg.options.get("train_weights"):
        weights = [p for n, p in model.named_parameters()
                   if "parametrizations.weight.original" in n or n.endswith("bias")]
        for p in weights:
            p.requires_grad_(True)
        groups.append(OptimGroup("weights", weights))
    from .stats import MaskStats

    spec = METHODS[cfg.method]
    callbacks = (spec.callbacks(model, cfg, train_cfg) if spec.callbacks else []) + list(callbacks or [])
    if not any(isinstance(cb, MaskStats) for cb in callbacks):
        callbacks.append(MaskStats(model))  # mask_density, undecided, mask_changed per epoch in metrics.jsonl
    if not any(g.params for g in groups):
        return FitResult()  # a frozen random mask: nothing to learn
    return fit(model, bundle, train_cfg, run_dir, groups=groups, callbacks=callbacks, seed=seed, resume=resume,
               desc=f"extract {cfg.method}", log_with=log_with)


__getattr__, __dir__ = lazy_exports(__name__, {
    **dict.fromkeys(["extract", "mask_params", "masks_and_scales", "scale_params"], ".base"),
    **dict.fromkeys(["frozen_network", "init_frozen"], ".frozen"),
}, globals())

__all__ = ["METHODS", "INIT_SCHEMES", "MaskConfig", "MaskMethod", "apply_masks", "extract", "fit_masks",
           "frozen_network", "init_frozen", "mask_params", "masks_and_scales", "train_config"]
