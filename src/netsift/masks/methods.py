"""The weight-mask methods, one declaration each: what ``--method`` takes, a one-line summary, the method's
defaults for the shared settings and its own options. Torch-free, so that ``--help`` and the settings'
validation need no torch; each method's implementation is the module named by ``module`` (``make`` and,
optionally, ``callbacks``), loaded on first use.

A new method: one implementation file in ``netsift/masks/`` and one :class:`MaskMethod` in :data:`METHODS`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from ..config import Option
from ..errors import NetsiftError

RESCALES = ("none", "smart", "dynamic")
"""Layer scale modes: 1, a learned scalar (Smart Rescale), or N / sum(m) of the current mask."""

SCALE_INITS = ("one", "inv-sqrt-density")
"""Initial value of a learned (smart) layer scale: 1 (published), or 1/sqrt(d) for the density d the mask starts at."""

INIT_SCHEMES = ("kaiming-normal", "signed-constant")
"""Weight init recipes of the supermask papers: Kaiming-normal (fan_in, ReLU) and sign(w)·std of the layer."""

PARAMETRIZATIONS = ("aslp", "naive")
"""Logits fed to gumbel's Gumbel-Softmax: ASLP's [m̂, 0], or the naive [log σ(m̂), log(1 − σ(m̂))]."""


def check_scheme(scheme: str) -> str:
    """Validate an init scheme name (one-line error otherwise)."""
    if scheme not in INIT_SCHEMES:
        raise NetsiftError(f"unknown --init {scheme!r}; choose from: {', '.join(INIT_SCHEMES)}")
    return scheme


def positive(flag: str, value: float) -> None:
    """Check of an :class:`~netsift.config.Option`: ``value`` > 0."""
    if not value > 0:
        raise NetsiftError(f"{flag} must be positive, got {value}")


@dataclass(frozen=True)
class BudgetLR:
    """A default learning rate that depends on the epoch budget E: ``lr`` up to ``epochs`` epochs, then
    ``lr · epochs / E`` (the same total step size, lr × E, spread over a longer run), never below ``floor``."""

    lr: float
    epochs: int
    floor: float

    def __call__(self, epochs: int) -> float:
        return max(self.floor, self.lr * min(1.0, self.epochs / max(1, epochs)))

    def __str__(self) -> str:
        return f"{self.lr:g} up to {self.epochs} epochs, then {self.lr:g}*{self.epochs}/epochs (at least {self.floor:g})"


def finite_logit(flag: str, value: float) -> None:
    """Check of an :class:`~netsift.config.Option`: a logit in [-20, 20] (σ within 2e-9 of 0 or 1)."""
    if not -20.0 <= value <= 20.0:
        raise NetsiftError(f"{flag} must be in [-20, 20], got {value}")


@dataclass(frozen=True)
class MaskMethod:
    """A weight-mask method.

    Attributes:
        name: what ``--method`` takes.
        summary: one line for ``--help`` and the docs.
        module: the implementation, ``netsift.masks.<module>``. It defines ``make(settings, seed) -> factory``
            (``settings`` is the resolved :class:`~netsift.masks.MaskConfig`, ``settings.options`` this method's
            own options; the factory builds one :class:`~.base.MaskParametrization` per layer) and may define
            ``callbacks(model, settings, train_cfg) -> list`` of training-loop callbacks (a density
            projection, say; ``train_cfg`` is the loop's resolved :class:`~netsift.config.TrainConfig`).
        defaults: the method's defaults for the shared settings left unset: ``rescale``, ``density`` and the
            mask optimizer's ``lr``, ``weight_decay`` and ``schedule``.
        options: settings only this method has, by name (each becomes a CLI flag).
        density: ``"optional"`` (emergent unless a target is given), ``"required"`` (a default in
            ``defaults``) or ``"none"`` (no density target possible).
    """

    name: str
    summary: str
    module: str
    defaults: dict[str, Any]
    options: dict[str, Option] = field(default_factory=dict)
    density: str = "optional"

    @property
    def implementation(self):
        """The method's module (imported on first use)."""
        return importlib.import_module(f".{self.module}", __package__)

    @property
    def make(self) -> Callable:
        """``make(settings, seed) -> factory`` of the implementation."""
        return self.implementation.make

    @property
    def callbacks(self) -> Callable | None:
        """``callbacks(model, settings, train_cfg) -> list`` of the implementation, or ``None``."""
        return getattr(self.implementation, "callbacks", None)


METHODS: dict[str, MaskMethod] = {m.name: m for m in (
    MaskMethod(
        name="gumbel",
        summary="Gumbel-Softmax masks, ASLP parametrisation, Smart Rescale (Dupont et al. 2022); density emergent "
                "or a target",
        module="gumbel",
        # Published: SGD lr 50, constant, momentum 0.9, no weight decay, batch 256, up to 1000 epochs. On a CPU
        # budget lr 50 leaves most masks undecided (93% of sigma(m) in (0.1, 0.9) after 20 epochs); the measured
        # sweep (benchmarks/masks_lr_sweep.py, lenet300, 20 epochs, 2 seeds) picks lr 1000 by validation
        # accuracy with the published constant schedule (a cosine decay freezes masks still undecided). Longer
        # runs want less: lr 1000 up to 30 epochs, then 1000*30/E, down to the published 50 at 600 epochs and
        # more (at 100 epochs on the full Fashion-MNIST split, lr 300 validated above lr 50 and lr 1000:
        # benchmarks/masks_map.py --sweep gumbel-budget, docs/masks.md).
        defaults={"rescale": "smart", "lr": BudgetLR(1000.0, 30, 50.0), "weight_decay": 0.0, "schedule": "constant"},
        options={"tau": Option(1.0, "Gumbel-Softmax temperature (of the first epoch with --tau-end)", check=positive),
                 "tau_end": Option(None, "temperature of the last epoch, annealed geometrically from --tau "
                                         "(Jang et al. 2017 anneal; default: constant --tau, as published)",
                                   check=positive),
                 "logit_init": Option(0.0, "initial mask logit m̂ of every weight, i.e. initial keep probability "
                                           "sigmoid(m̂) (published 0; Zhou et al.'s sigmoid bias)", check=finite_logit),
                 "parametrization": Option("aslp", "logits fed to the Gumbel-Softmax", str, PARAMETRIZATIONS)},
    ),
    MaskMethod(
        name="edge-popup",
        summary="top-k |score| per layer with straight-through scores (Ramanujan et al. 2020); exact density",
        module="edge_popup",
        # Published: SGD lr 0.1 cosine, momentum 0.9, weight decay 1e-4, batch 128; best density 0.5.
        defaults={"rescale": "none", "lr": 0.1, "weight_decay": 1e-4, "schedule": "cosine", "density": 0.5},
        density="required",
    ),
    MaskMethod(
        name="supermask",
        summary="m ~ Bernoulli(sigmoid(s)) every forward, straight-through (Zhou et al. 2019); density emergent",
        module="supermask",
        # Our choice: lr 500 is unstable with the sigmoid straight-through gradient, and the dynamic rescale
        # (--rescale dynamic, Zhou et al.) learned slower than none on digits in a short budget.
        defaults={"rescale": "none", "lr": 100.0, "weight_decay": 0.0, "schedule": "cosine"},
        density="none",
    ),
    MaskMethod(
        name="random",
        summary="a fixed random mask at the density; --train-weights also trains the kept weights (random pruning)",
        module="random_mask",
        # The lr, weight decay and schedule apply to the kept weights with --train-weights (nothing else learns).
        defaults={"rescale": "none", "lr": 0.05, "weight_decay": 5e-4, "schedule": "cosine", "density": 0.5},
        options={"train_weights": Option(False, "also train the kept weights (the random-pruning baseline)", bool)},
        density="required",
    ),
)}
"""The weight-mask methods by the name ``--method`` takes."""
