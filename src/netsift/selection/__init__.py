"""Neuron (channel) selection in trained networks: the methods, one file each, behind one interface.

Each method is declared once in :data:`METHODS` (:mod:`.methods`: name, summary, its own options and
defaults; torch-free) and implemented in its own file (``select(ctx, **options) -> Selection``).
:mod:`.groups` finds the channel groups (Torch-Pruning's dependency graph), :mod:`.scoring` scores
candidates fast (its parts: :mod:`.masking`, :mod:`.graph_scorer`, :mod:`.hook_scorer`, :mod:`.reference`),
:mod:`.greedy` runs the greedy methods' per-group loop on :mod:`.steps` (minibatches, prefixes shared between
processes), :mod:`.budget` allocates a MACs budget, :mod:`.removal` removes channels physically and
:mod:`.pruner` strings them together. Importing this package is cheap; torch loads on first use.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .._lazy import lazy_exports
from ..config import check_finite, check_range, check_types, method_options, opt
from ..errors import NetsiftError, check_density, choose
from .methods import METHODS, SelectionMethod

PUBLISHED = {"bn_batch_stats": False, "recalibrate_bn": 0, "layer_finetune": 0.1, "candidates": 50,
             "select_batch": 128}
"""The settings ``--published`` stands for (the paper's code; the last two are also netsift's defaults)."""


@dataclass
class PruneConfig:
    """Settings of channel selection and removal (each field is also a ``netsift prune`` flag)."""

    method: str = opt("gfs", "selection method", tuple(METHODS))
    macs: float | None = opt(None, "keep this fraction of the MACs, in (0, 1]", shown="none: stop by --tolerance")
    params: float | None = opt(None, "keep this fraction of the parameters, in (0, 1] (instead of --macs)")
    latency: float | None = opt(None, "keep this fraction of the dense network's latency measured on this device at "
                                      "--latency-batch, in (0, 1] (instead of --macs)")
    latency_batch: int = opt(64, "batch size of the --latency budget's timings")
    widths: str = opt("uniform", "with a budget: every group keeps the same fraction of its channels (uniform), or "
                                 "the method learns each group's width from its own loss or scores (learned)",
                      ("uniform", "learned"))
    tolerance: float | None = opt(None, "stop each layer once held-out accuracy is >= (1 - T) x its start",
                                  shown="0.02 when --macs is not given")
    round_to: int = opt(1, "with --macs: keep a multiple of N channels in every group (8 or 16 suits CPU vector "
                           "kernels; groups narrower than 2N round to single channels)")
    published: bool = opt(False, "every published GFS setting at once: eval-mode BN scoring, no BN re-estimation, "
                                 "--layer-finetune 0.1, 50 candidates, 128-image minibatches")
    candidates: int = opt(50, "candidates scored per greedy step (0: all)")
    epsilon: float | None = opt(None, "derive the candidates per step from epsilon: (N/k) log(1/eps)",
                                shown="none: --candidates decides")
    select_batch: int = opt(128, "images in the fresh minibatch of each greedy step")
    holdout: int = opt(1000, "training images held out to check the tolerance")
    layer_finetune: float | None = opt(None, "fine-tune this fraction of an epoch after each layer",
                                       shown="0; --published: 0.1")
    finetune_epochs: int = opt(1, "epochs of fine-tuning after removal (0: none)")
    distill: bool = opt(False, "fine-tune with distillation from the original network")
    reinit: bool = opt(False, "ablation: re-initialise the pruned architecture before fine-tuning")
    bn_batch_stats: bool | None = opt(None, "greedy methods: score with each candidate's minibatch BN statistics "
                                            "(as fine-tuning will see them) instead of the running ones",
                                      shown="on for networks with batch norm; --published: off")
    recalibrate_bn: int | None = opt(None, "after removal, re-estimate BN running statistics on N training "
                                           "minibatches", shown="20 for networks with batch norm; --published: 0")
    rescale: str = opt("auto", "fold the N/n rescale into the weights at removal (auto: as the method selected)",
                       ("auto", "on", "off"))
    onnx: bool = opt(False, "also export the pruned network as model.onnx")
    latency_threads: int | None = opt(1, "CPU threads for the latency measurement (0: torch's default; "
                                         "None in Python: no latency measurement)")
    options: dict[str, Any] = field(default_factory=dict, metadata={"help": "the method's own settings"})

    def __post_init__(self):
        from ..measure import check_threads

        check_types(self)
        choose(self.method, METHODS, "method")
        choose(self.rescale, ("auto", "on", "off"), "--rescale")
        check_finite(self)
        budgets = [f"--{k}" for k in ("macs", "params", "latency") if getattr(self, k) is not None]
        if len(budgets) > 1 or (budgets and self.tolerance is not None):
            given = budgets + ["--tolerance"] * (self.tolerance is not None)
            raise NetsiftError(f"give one budget, not both {' and '.join(given)}")
        for k in ("macs", "params", "latency"):
            if getattr(self, k) is not None:
                check_density(getattr(self, k), f"--{k}")
        choose(self.widths, ("uniform", "learned"), "--widths")
        if self.widths == "learned" and not budgets:
            raise NetsiftError("--widths learned shares a budget out: give --macs, --params or --latency")
        if not budgets and self.tolerance is None:
            self.tolerance = 0.02
        if self.tolerance is not None and not 0.0 <= self.tolerance < 1.0:
            raise NetsiftError(f"--tolerance must be in [0, 1), got {self.tolerance}")
        if self.epsilon is not None and not 0.0 < self.epsilon < 1.0:
            raise NetsiftError(f"--epsilon must be in (0, 1), got {self.epsilon}")
        for name in ("candidates", "holdout", "finetune_epochs", "latency_threads", "recalibrate_bn"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise NetsiftError(f"--{name.replace('_', '-')} must be non-negative, got {getattr(self, name)}")
        if self.round_to < 1:
            raise NetsiftError(f"--round-to must be at least 1, got {self.round_to}")
        if self.select_batch <= 0 or self.latency_batch <= 0:
            raise NetsiftError(f"--select-batch and --latency-batch must be positive, got {self.select_batch} and "
                               f"{self.latency_batch}")
        if self.layer_finetune is not None and not 0.0 <= self.layer_finetune <= 10.0:
            raise NetsiftError(f"--layer-finetune must be in [0, 10] epochs, got {self.layer_finetune}")
        check_threads(self.latency_threads, "--latency-threads")
        for name, hi in (("candidates", 10**6), ("holdout", 10**7), ("select_batch", 10**5), ("round_to", 4096),
                         ("latency_batch", 10**5),
                         ("finetune_epochs", 100_000), ("recalibrate_bn", 10**6)):
            check_range(self, name, 0, hi)
        self.options = method_options(self.method, self.options, METHODS)

    @property
    def budget(self) -> tuple[str, float] | None:
        """``(kind, fraction)`` of the budget (``macs``, ``params`` or ``latency``), ``None`` in tolerance mode."""
        for kind in ("macs", "params", "latency"):
            if getattr(self, kind) is not None:
                return kind, getattr(self, kind)
        return None

    def resolved(self, has_batch_norm: bool) -> "PruneConfig":
        """A copy with the unset settings filled: netsift's defaults, or with ``published`` the paper's.

        netsift's defaults on a network with batch norm score candidates with their own minibatch statistics
        and re-estimate the statistics after removal (the variant that wins in ``benchmarks/structured.py``);
        ``published`` is the paper's code: eval-mode BN, a 0.1-epoch fine-tune after each layer.
        """
        if self.published:
            fill = {k: PUBLISHED[k] for k in ("bn_batch_stats", "recalibrate_bn", "layer_finetune")}
        else:
            fill = {"bn_batch_stats": has_batch_norm, "recalibrate_bn": 20 if has_batch_norm else 0,
                    "layer_finetune": 0.0}
        return dataclasses.replace(self, **{k: v for k, v in fill.items() if getattr(self, k) is None})


def finetune_defaults() -> dict:
    """The published fine-tune recipe (SGD Nesterov 0.9, cosine, label smoothing 0.1, weight decay 4e-5), from a
    peak lr of 0.03 where the paper starts at 0.1: measured on validation accuracy over 5 fine-tune epochs (3
    networks x 5 methods x 2 widths, 3 seeds; ``benchmarks/structured.py --finetune-lrs``), 0.03 is within 0.2
    points of 0.01 or better on all 30, and 0.1 loses up to 4 points on ResNet-20."""
    return {"lr": 0.03, "nesterov": True, "momentum": 0.9, "label_smoothing": 0.1, "weight_decay": 4e-5,
            "schedule": "cosine", "batch_size": 128}


__getattr__, __dir__ = lazy_exports(__name__, dict.fromkeys(["Selection", "SelectionContext"], ".base"), globals())

__all__ = ["METHODS", "PruneConfig", "Selection", "SelectionContext", "SelectionMethod", "finetune_defaults"]
