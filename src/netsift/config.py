"""Typed hyperparameter dataclasses that double as CLI flags.

Each field of a config dataclass becomes ``--field-name`` on the command line; its help text comes from the
field's ``metadata["help"]`` and its choices from ``metadata["choices"]``. Values are validated in
``__post_init__`` so the Python API and the CLI reject the same bad input with the same one-line error.
``--help`` lists every fixed set of values and shows each default once, as it will be used (a default
resolved later, per method or per command, is described by ``metadata["shown"]`` or ``default_help``).
This module and the config classes are torch-free, so building the parser needs no torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .data.sets import DATA_ENV, DATASETS
from .errors import NetsiftError, choose
from .models import ZOO

T = TypeVar("T")


def opt(default: Any, help: str, choices: tuple[str, ...] | None = None, values: tuple[str, ...] | None = None,
        shown: str | None = None) -> Any:
    """A dataclass field carrying its CLI help text.

    Args:
        choices: the allowed values (argparse checks them; listed in ``--help``).
        values: the allowed values listed in ``--help`` but checked by the config itself (its own error message).
        shown: what ``--help`` says the default is, when it is resolved later (``default`` is ``None``).
    """
    return field(default=default, metadata={"help": help, "choices": choices, "values": values, "shown": shown})


@dataclass(frozen=True)
class Option:
    """A setting that only one method has (declared in the method's own file, shown as a CLI flag).

    ``check(value)`` may raise :class:`NetsiftError`; ``type`` is ``float``, ``int``, ``str`` or ``bool``.
    """

    default: Any
    help: str
    type: type = float
    choices: tuple[str, ...] | None = None
    check: Any = None

    def validate(self, name: str, value: Any) -> Any:
        """``value`` converted to the option's type and checked, or a one-line error naming ``--name``."""
        flag = "--" + name.replace("_", "-")
        if self.type is bool:
            if not isinstance(value, bool):
                raise NetsiftError(f"{flag} takes true or false, got {value!r}")
        else:
            try:
                value = self.type(value)
            except (TypeError, ValueError):
                raise NetsiftError(f"{flag} must be a {self.type.__name__}, got {value!r}") from None
        if self.choices is not None:
            choose(value, self.choices, flag)
        if self.check is not None:
            self.check(flag, value)
        return value


def method_options(method: str, given: dict[str, Any] | None, registry: dict) -> dict[str, Any]:
    """The method-specific options of ``registry[method]`` with ``given`` values checked and defaults filled.

    Raises:
        NetsiftError: an option that ``method`` does not have (naming the methods that do).
    """
    declared = registry[method].options
    given = {k: v for k, v in (given or {}).items() if v is not None}
    for name in given:
        if name not in declared:
            owners = [m for m, spec in registry.items() if name in spec.options]
            where = f"applies to --method {' / '.join(owners)} only" if owners else "is not a setting"
            raise NetsiftError(f"--{name.replace('_', '-')} {where}")
    return {name: spec.validate(name, given[name]) if name in given else spec.default
            for name, spec in declared.items()}


@dataclass
class DataConfig:
    """Which data set to use and how to split it."""

    data: str = opt("digits", "data set (`netsift datasets` says which are installed)", values=tuple(DATASETS))
    data_dir: str | None = opt(None, "where data files live", shown=f"${DATA_ENV} or ~/.cache/netsift/data")
    val_fraction: float = opt(0.1, "share of the training set held out for validation")
    train_subset: int | None = opt(None, "keep only N training images (quick experiments)", shown="all")
    download: bool = opt(False, "let torchvision download missing data where the network allows")

    def __post_init__(self):
        choose(self.data, DATASETS, "data set")
        check_finite(self)
        if not 0.0 <= self.val_fraction < 1.0:
            raise NetsiftError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")


@dataclass
class ModelConfig:
    """Which architecture to build."""

    model: str = opt("lenet300", f"architecture: {', '.join(ZOO)} (see `netsift models`), or tv:<torchvision name>")
    width: float = opt(1.0, "width multiplier for the zoo's architectures")
    pretrained: bool = opt(False, "tv:<name> only: start from torchvision's published weights (needs the network)")

    def __post_init__(self):
        from .models import REGISTRY, model_names

        if not self.model.startswith("tv:") and self.model not in REGISTRY:
            raise NetsiftError(f"unknown model {self.model!r}; choose from: {', '.join(model_names())}, or tv:<name>")
        check_finite(self)
        if not 0 < self.width <= 64:
            raise NetsiftError(f"--width must be in (0, 64], got {self.width}")


def check_finite(obj: Any) -> None:
    """Raise a one-line error naming the first float field of dataclass ``obj`` that is NaN or infinite."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise NetsiftError(f"--{f.name.replace('_', '-')} must be a finite number, got {value}")


TRAIN_FALLBACKS = {"lr": 0.05, "weight_decay": 5e-4, "schedule": "cosine"}
"""What unset (``None``) loop settings become when the command using the loop has no default of its own."""


@dataclass
class TrainConfig:
    """Settings of the shared training loop.

    ``lr``, ``weight_decay`` and ``schedule`` may stay ``None``: each command fills them with its own
    default (``train``: :data:`TRAIN_FALLBACKS`; ``extract``: the mask method's; ``prune``: the published
    fine-tune recipe); :meth:`resolved` does it.
    """

    epochs: int = opt(10, "maximum number of epochs")
    batch_size: int = opt(128, "minibatch size")
    optimizer: str = opt("sgd", "optimizer", ("sgd", "adam"))
    lr: float | None = opt(None, "peak learning rate")
    momentum: float = opt(0.9, "SGD momentum")
    nesterov: bool = opt(False, "Nesterov momentum (SGD)")
    weight_decay: float | None = opt(None, "weight decay")
    schedule: str | None = opt(None, "learning-rate schedule over the run", ("cosine", "step", "constant"))
    step_every: int = opt(0, "step schedule: multiply the lr by --gamma every N epochs (0: at 50%% and 75%%)")
    gamma: float = opt(0.1, "step schedule decay factor")
    label_smoothing: float = opt(0.0, "label smoothing of the cross-entropy")
    patience: int = opt(0, "stop after N epochs without a better validation accuracy (0: never)")
    augment: bool = opt(False, "random crops (and flips where they suit the data)")
    mixed_precision: str = opt("no", "mixed precision through Accelerate", ("no", "fp16", "bf16"))
    cpu: bool = opt(False, "stay on the CPU even when a GPU is available")
    max_steps: int = opt(0, "at most N optimizer steps per epoch (0: the whole training set)")

    def __post_init__(self):
        check_finite(self)
        for name in ("epochs", "batch_size"):
            if getattr(self, name) <= 0:
                raise NetsiftError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.epochs > 100_000 or self.batch_size > 1_000_000:
            raise NetsiftError("--epochs must be at most 100,000 and --batch-size at most 1,000,000")
        if self.lr is not None and self.lr <= 0:
            raise NetsiftError(f"--lr must be positive, got {self.lr}")
        if not 0.0 <= self.momentum < 1.0:
            raise NetsiftError(f"--momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay is not None and self.weight_decay < 0:
            raise NetsiftError(f"--weight-decay must be non-negative, got {self.weight_decay}")
        if not 0.0 < self.gamma <= 1.0:
            raise NetsiftError(f"--gamma must be in (0, 1], got {self.gamma}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise NetsiftError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("choices") and value is not None:
                choose(value, f.metadata["choices"], f"--{f.name.replace('_', '-')}")
        if self.patience < 0 or self.max_steps < 0 or self.step_every < 0:
            raise NetsiftError("--patience, --max-steps and --step-every must be non-negative")

    def resolved(self, **defaults: Any) -> "TrainConfig":
        """A copy with unset settings taken from ``defaults``, then from :data:`TRAIN_FALLBACKS`."""
        fill = {k: defaults.get(k, TRAIN_FALLBACKS[k]) for k in TRAIN_FALLBACKS if getattr(self, k) is None}
        return dataclasses.replace(self, **fill) if fill else self


def add_flags(parser: argparse.ArgumentParser, cls: type, defaults: dict[str, Any] | None = None,
              skip: tuple[str, ...] = (), default_help: dict[str, str] | None = None) -> None:
    """Add one ``--flag`` per field of dataclass ``cls`` to ``parser``.

    ``defaults`` overrides field defaults; ``default_help`` replaces the "(default: ...)" text of a flag whose
    default is resolved later (per method, say). Choices are listed once, in the metavar.
    """
    group = parser.add_argument_group(cls.__name__.replace("Config", "").lower() + " options")
    defaults, default_help = defaults or {}, default_help or {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = defaults.get(f.name, f.default)
        text = default_help.get(f.name, f.metadata.get("shown") if default is None else None)
        _add(group, f.name, default, f.metadata.get("help", ""), str(f.type), f.metadata.get("choices"), text,
             f.metadata.get("values"))


def _add(group, name: str, default: Any, help_text: str, type_name: str, choices, default_text: str | None,
         values: tuple[str, ...] | None = None) -> None:
    flag = "--" + name.replace("_", "-")
    shown = default_text if default_text is not None else ("none" if default is None else str(default))
    suffix = f" (default: {shown})"
    if type_name in ("bool", "bool | None", "<class 'bool'>"):
        on = {"True": "on", "False": "off"}.get(default_text or "", default_text) or ("on" if default else "off")
        group.add_argument(flag, action=argparse.BooleanOptionalAction, default=default,
                           help=f"{help_text} (default: {on})")
        return
    kind = {"int": int, "float": float, "int | None": int, "float | None": float, "<class 'int'>": int,
            "<class 'float'>": float}.get(type_name, str)
    listed = choices or values
    metavar = "{" + ",".join(listed) + "}" if listed else name.upper()
    group.add_argument(flag, type=kind, default=default, metavar=metavar, help=help_text + suffix, choices=choices)


def add_method_options(parser: argparse.ArgumentParser, registry: dict, title: str) -> None:
    """One flag per method-specific :class:`Option` of every method in ``registry`` (default: unset)."""
    group = parser.add_argument_group(title)
    seen: dict[str, list[str]] = {}
    for method, spec in registry.items():
        for name in spec.options:
            seen.setdefault(name, []).append(method)
    for name, methods in seen.items():
        spec = registry[methods[0]].options[name]
        owners = "/".join(methods)
        _add(group, name, None, f"{owners}: {spec.help}", spec.type.__name__, spec.choices, str(spec.default))


def method_args(args: argparse.Namespace, registry: dict) -> dict[str, Any]:
    """The method-specific options the user set on the command line (unset ones are left out)."""
    names = {name for spec in registry.values() for name in spec.options}
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def from_args(cls: type[T], args: argparse.Namespace, **overrides: Any) -> T:
    """Build dataclass ``cls`` from parsed arguments (fields missing from ``args`` keep their defaults)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    values.update(overrides)
    return cls(**values)


def config_hash(*configs: Any) -> str:
    """A short stable hash of dataclass configs, used to name run folders."""
    blob = json.dumps([dataclasses.asdict(c) for c in configs], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]
