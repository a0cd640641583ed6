"""Weight subnetworks of frozen random networks: learn which weights to keep, never the weights.

Methods (one file each): ``gumbel`` (Gumbel-Softmax with the ASLP parametrisation and Smart Rescale, Dupont
et al. 2022; :mod:`.gumbel`), ``edge-popup`` (:mod:`.edge_popup`), ``supermask`` (Zhou et al.;
:mod:`.supermask`) and ``random`` (:mod:`.random_mask`). Each is a ``torch.nn.utils.parametrize`` module on
the weights of every Linear and Conv2d layer (:mod:`.base`).

Three calls extract a subnetwork from any module built of Linear/Conv2d layers::

    from netsift.masks import apply_masks, extract, fit_masks
    masked = apply_masks(model, "gumbel")          # freezes the weights, adds one logit per weight
    fit_masks(masked, bundle, epochs=10)           # trains logits (and scales) only
    subnet = extract(masked)                       # plain nn.Module, weights = scale · w ⊙ 1[m̂ ≥ 0]
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..config import TrainConfig, opt
from ..data import DataBundle
from ..errors import NetsiftError, check_density, choose
from ..training import FitResult, OptimGroup, fit
from . import base, edge_popup, gumbel, random_mask, supermask
from .base import RESCALES, extract, mask_params, masks_and_scales, scale_params
from .frozen import INIT_SCHEMES, check_scheme, frozen_network

METHODS = ("gumbel", "edge-popup", "supermask", "random")

METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    # Published: SGD lr 50, momentum 0.9, no weight decay, batch 256, up to 1000 epochs. On a CPU budget of
    # ~10 epochs lr 50 leaves most probabilities undecided; lr 500 (cosine) settles them (docs/masks.md).
    "gumbel": {"rescale": "smart", "mask_lr": 500.0, "mask_weight_decay": 0.0},
    # Published: SGD lr 0.1 cosine, momentum 0.9, weight decay 1e-4, batch 128; best density 0.5.
    "edge-popup": {"rescale": "none", "mask_lr": 0.1, "mask_weight_decay": 1e-4, "density": 0.5},
    # Our choice: lr 500 is unstable with the σ(s) straight-through gradient, and the dynamic rescale
    # (--rescale dynamic, Zhou et al.) learned slower than none on digits in a short budget.
    "supermask": {"rescale": "none", "mask_lr": 100.0, "mask_weight_decay": 0.0},
    "random": {"rescale": "none", "mask_lr": 0.0, "mask_weight_decay": 0.0, "density": 0.5},
}
"""Per-method defaults for the settings left unset (``None``) in :class:`MaskConfig`."""

PUBLISHED_GUMBEL_MASK_LR = 50.0


@dataclass
class MaskConfig:
    """Settings of a weight-mask method (each field is also a ``netsift extract`` flag)."""

    method: str = opt("gumbel", "mask method", METHODS)
    density: float | None = opt(None, "fraction of weights to keep; gumbel: a target reached by projecting the "
                                      "logits (default: emergent, as published); edge-popup/random default 0.5")
    init: str = opt("signed-constant", "frozen weight init", INIT_SCHEMES)
    rescale: str | None = opt(None, "layer scale: none, smart (learned), dynamic (N/sum m) "
                                    "(default: gumbel smart, others none)", RESCALES)
    tau: float = opt(1.0, "gumbel: Gumbel-Softmax temperature")
    parametrization: str = opt("aslp", "gumbel: logits fed to the Gumbel-Softmax", gumbel.PARAMETRIZATIONS)
    mask_lr: float | None = opt(None, "learning rate of mask logits/scores (default: gumbel 500, supermask 100, "
                                      "edge-popup 0.1)")
    mask_weight_decay: float | None = opt(None, "weight decay of mask logits/scores (default: edge-popup 1e-4, else 0)")
    scale_lr: float = opt(1e-3, "learning rate of the smart-rescale scales (SGD, momentum from --momentum)")
    train_weights: bool = opt(False, "random only: also train the kept weights (the random-pruning baseline)")

    def __post_init__(self):
        choose(self.method, METHODS, "method")
        check_scheme(self.init)
        if self.density is not None:
            self.density = check_density(self.density, "--density")
        if self.rescale is not None:
            choose(self.rescale, RESCALES, "--rescale")
        choose(self.parametrization, gumbel.PARAMETRIZATIONS, "--parametrization")
        if self.tau <= 0:
            raise NetsiftError(f"--tau must be positive, got {self.tau}")
        for name in ("mask_lr", "scale_lr", "mask_weight_decay"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise NetsiftError(f"--{name.replace('_', '-')} must be non-negative, got {value}")
        if self.train_weights and self.method != "random":
            raise NetsiftError("--train-weights applies to --method random only")
        if self.density is not None and self.method == "supermask":
            raise NetsiftError("--density is not available for supermask (its density is emergent)")

    def resolved(self) -> "MaskConfig":
        """A copy with every ``None`` replaced by the method's default."""
        defaults = METHOD_DEFAULTS[self.method]
        return dataclasses.replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})


def apply_masks(model: nn.Module, method: str | MaskConfig = "gumbel", seed: int = 0, **options: Any) -> nn.Module:
    """Freeze ``model``'s parameters and put a ``method`` mask on every Linear/Conv2d weight, in place.

    Args:
        model: any module; its current weights become the frozen weights (see
            :func:`netsift.masks.frozen.init_frozen` for the published random inits).
        method: a method name or a :class:`MaskConfig`.
        seed: seeds score init (edge-popup) and random masks.
        options: :class:`MaskConfig` fields (``density``, ``rescale``, ``tau``, ``parametrization``...).

    Returns:
        ``model``, now masked; ``model.mask_config`` holds the resolved settings.
    """
    cfg = method if isinstance(method, MaskConfig) else MaskConfig(method=method, **options)
    cfg = cfg.resolved()
    if cfg.method == "gumbel":
        make = gumbel.make(cfg.rescale, cfg.tau, cfg.parametrization)
    elif cfg.method == "supermask":
        make = supermask.make(cfg.rescale)
    elif cfg.method == "edge-popup":
        make = edge_popup.make(cfg.density, cfg.rescale, seed)
    else:
        make = random_mask.make(cfg.density, cfg.rescale, seed)
    base.apply(model, make)
    model.mask_config = cfg
    return model


def fit_masks(model: nn.Module, bundle: DataBundle, train_cfg: TrainConfig | None = None,
              run_dir: str | Path | None = None, seed: int = 0, resume: bool = False,
              **train_options: Any) -> FitResult:
    """Train the masks of a model returned by :func:`apply_masks` with :func:`netsift.training.fit`.

    Mask logits/scores and smart scales get separate SGD optimizers (``mask_lr``, ``scale_lr``); with a
    ``density`` target, gumbel logits are projected after every step (:class:`.gumbel.DensityProjection`).
    The model is left holding the masks of the best validation epoch (validated without sampling).

    Args:
        train_cfg: loop settings (epochs, batch size, schedule, patience, augmentation); ``train_options``
            build one when it is ``None``.
    """
    cfg: MaskConfig = getattr(model, "mask_config", None)
    if cfg is None:
        raise NetsiftError("fit_masks needs a model returned by apply_masks")
    train_cfg = train_cfg or TrainConfig(**train_options)
    groups = [OptimGroup("masks", mask_params(model), optimizer="sgd", lr=cfg.mask_lr,
                         weight_decay=cfg.mask_weight_decay),
              OptimGroup("scales", scale_params(model), optimizer="sgd", lr=cfg.scale_lr, weight_decay=0.0)]
    if cfg.train_weights:
        weights = [p for n, p in model.named_parameters()
                   if "parametrizations.weight.original" in n or n.endswith("bias")]
        for p in weights:
            p.requires_grad_(True)
        groups.append(OptimGroup("weights", weights))
    callbacks = []
    if cfg.method == "gumbel" and cfg.density is not None:
        callbacks.append(gumbel.DensityProjection(model, cfg.density))
    if not any(g.params for g in groups):
        return FitResult()  # a frozen random mask: nothing to learn
    return fit(model, bundle, train_cfg, run_dir, groups=groups, callbacks=callbacks, seed=seed, resume=resume,
               desc=f"extract {cfg.method}")


__all__ = ["METHODS", "MaskConfig", "apply_masks", "fit_masks", "extract", "masks_and_scales", "frozen_network",
           "INIT_SCHEMES"]
