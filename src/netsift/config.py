"""Typed hyperparameter dataclasses that double as CLI flags.

Each field of a config dataclass becomes ``--field-name`` on the command line; its help text comes from the
field's ``metadata["help"]`` and its choices from ``metadata["choices"]``. Values are validated in
``__post_init__`` so the Python API and the CLI reject the same bad input with the same one-line error.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .errors import NetsiftError, choose

T = TypeVar("T")


def opt(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    """A dataclass field carrying its CLI help text (and choices)."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class DataConfig:
    """Which data set to use and how to split it."""

    data: str = opt("digits", "data set name (see `netsift datasets`)")
    data_dir: str | None = opt(None, "where data files live (default: $NETSIFT_DATA or ~/.cache/netsift/data)")
    val_fraction: float = opt(0.1, "share of the training set held out for validation")
    train_subset: int | None = opt(None, "keep only N training images (quick experiments)")
    download: bool = opt(False, "let torchvision download missing data where the network allows")

    def __post_init__(self):
        from .data import DATASETS

        choose(self.data, DATASETS, "data set")
        if not 0.0 <= self.val_fraction < 1.0:
            raise NetsiftError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")


@dataclass
class ModelConfig:
    """Which architecture to build."""

    model: str = opt("lenet300", "architecture (see `netsift models`), or tv:<torchvision name>")
    width: float = opt(1.0, "width multiplier for the zoo's architectures")
    pretrained: bool = opt(False, "tv:<name> only: start from torchvision's published weights (needs the network)")

    def __post_init__(self):
        from .models import REGISTRY, model_names

        if not self.model.startswith("tv:") and self.model not in REGISTRY:
            raise NetsiftError(f"unknown model {self.model!r}; choose from: {', '.join(model_names())}, or tv:<name>")
        if self.width <= 0:
            raise NetsiftError(f"--width must be positive, got {self.width}")


@dataclass
class TrainConfig:
    """Settings of the shared training loop."""

    epochs: int = opt(10, "maximum number of epochs")
    batch_size: int = opt(128, "minibatch size")
    optimizer: str = opt("sgd", "optimizer", ("sgd", "adam"))
    lr: float = opt(0.05, "peak learning rate")
    momentum: float = opt(0.9, "SGD momentum")
    nesterov: bool = opt(False, "Nesterov momentum (SGD)")
    weight_decay: float = opt(5e-4, "weight decay")
    schedule: str = opt("cosine", "learning-rate schedule over the run", ("cosine", "step", "constant"))
    step_every: int = opt(0, "step schedule: multiply the lr by --gamma every N epochs (0: at 50%% and 75%%)")
    gamma: float = opt(0.1, "step schedule decay factor")
    label_smoothing: float = opt(0.0, "label smoothing of the cross-entropy")
    patience: int = opt(0, "stop after N epochs without a better validation accuracy (0: never)")
    augment: bool = opt(False, "random crops (and flips where they suit the data)")
    mixed_precision: str = opt("no", "mixed precision through Accelerate", ("no", "fp16", "bf16"))
    cpu: bool = opt(False, "stay on the CPU even when a GPU is available")
    max_steps: int = opt(0, "at most N optimizer steps per epoch (0: the whole training set)")

    def __post_init__(self):
        for name in ("epochs", "batch_size"):
            if getattr(self, name) <= 0:
                raise NetsiftError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.lr <= 0:
            raise NetsiftError(f"--lr must be positive, got {self.lr}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise NetsiftError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        for f in dataclasses.fields(self):
            if f.metadata.get("choices"):
                choose(getattr(self, f.name), f.metadata["choices"], f"--{f.name.replace('_', '-')}")
        if self.patience < 0 or self.max_steps < 0 or self.step_every < 0:
            raise NetsiftError("--patience, --max-steps and --step-every must be non-negative")


def add_flags(parser: argparse.ArgumentParser, cls: type, defaults: dict[str, Any] | None = None,
              skip: tuple[str, ...] = ()) -> None:
    """Add one ``--flag`` per field of dataclass ``cls`` to ``parser`` (``defaults`` overrides field defaults)."""
    group = parser.add_argument_group(cls.__name__.replace("Config", "").lower() + " options")
    defaults = defaults or {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = defaults.get(f.name, f.default)
        help_text = f.metadata.get("help", "")
        if f.type in (bool, "bool"):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
            continue
        kind = {"int": int, "float": float, "int | None": int, "float | None": float}.get(str(f.type), str)
        group.add_argument(flag, type=kind, default=default, metavar=f.name.upper(),
                           help=f"{help_text} (default: {default})", choices=f.metadata.get("choices"))


def from_args(cls: type[T], args: argparse.Namespace, **overrides: Any) -> T:
    """Build dataclass ``cls`` from parsed arguments (fields missing from ``args`` keep their defaults)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    values.update(overrides)
    return cls(**values)


def config_hash(*configs: Any) -> str:
    """A short stable hash of dataclass configs, used to name run folders."""
    blob = json.dumps([dataclasses.asdict(c) for c in configs], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]
