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
from pathlib import Path
from typing import Any, TypeVar

from .data.sets import DATA_ENV, DATASETS
from .errors import NetsiftError, choose
from .models import ZOO

T = TypeVar("T")


def opt(default: Any, help: str, choices: tuple[str, ...] | None = None, values: tuple[str, ...] | None = None,
        shown: str | None = None, metavar: str | None = None) -> Any:
    """A dataclass field carrying its CLI help text.

    Args:
        choices: the allowed values (argparse checks them; listed in ``--help``).
        values: the allowed values listed in ``--help`` but checked by the config itself (its own error message).
        shown: what ``--help`` says the default is, when it is resolved later (``default`` is ``None``).
        metavar: the value's name in ``--help`` (default: the field's name in capitals).
    """
    return field(default=default, metadata={"help": help, "choices": choices, "values": values, "shown": shown,
                                            "metavar": metavar})


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
            if isinstance(value, bool) or (self.type is int and isinstance(value, float)):
                raise NetsiftError(f"{flag} must be a {self.type.__name__}, got {value!r}")
            try:
                value = self.type(value)
            except (TypeError, ValueError, OverflowError):
                raise NetsiftError(f"{flag} must be a {self.type.__name__}, got {value!r}") from None
            if self.type is float and not math.isfinite(value):
                raise NetsiftError(f"{flag} must be a finite number, got {value}")
            if self.type is int and not -MAX_INT <= value <= MAX_INT:
                raise NetsiftError(f"{flag} must be between {-MAX_INT} and {MAX_INT}, got {value}")
            if self.type is str and len(value) > 1000:
                raise NetsiftError(f"{flag} is too long ({len(value)} characters)")
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
    image_size: int | None = opt(None, "resize the images to N x N px, 1-1024 (bilinear, batch by batch) for "
                                       "training, validation and test alike", shown="the data set's own", metavar="N")

    def __post_init__(self):
        check_types(self)
        choose(self.data, DATASETS, "data set")
        check_finite(self)
        if not 0.0 <= self.val_fraction < 1.0:
            raise NetsiftError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        check_range(self, "train_subset", 1, 10**9)
        check_range(self, "image_size", 1, MAX_IMAGE_SIZE)
        if self.data_dir is not None and (not self.data_dir or len(self.data_dir) > 4096 or "\0" in self.data_dir):
            raise NetsiftError(f"--data-dir must be a folder path, got {self.data_dir!r}")


@dataclass
class ModelConfig:
    """Which architecture to build."""

    model: str | None = opt("lenet300", f"architecture: {', '.join(ZOO)} (see `netsift models`), tv:<torchvision "
                                        "name> or timm:<timm name> (needs the timm extra)")
    width: float = opt(1.0, "width multiplier for the zoo's architectures")
    pretrained: bool = opt(False, "tv:<name> only: start from torchvision's published weights (needs the network)")
    weights: str | None = opt(None, "start from the state dict in this local file (.safetensors, or a torch.save "
                                    "file read with weights_only); classifier, stem and ViT positions are adapted",
                              shown="none", metavar="FILE")

    def __post_init__(self):
        from .models import is_model_name, model_names

        check_types(self)
        if self.model is not None and not is_model_name(self.model):
            raise NetsiftError(f"unknown model {self.model!r}; choose from: {', '.join(model_names())}, tv:<name> "
                               "or timm:<name>")
        check_finite(self)
        if not 0 < self.width <= 64:
            raise NetsiftError(f"--width must be in (0, 64], got {self.width}")
        check_weights_path(self.weights)
        if self.weights is not None and self.pretrained:
            raise NetsiftError("--weights and --pretrained both choose the starting weights; give one of them")


MAX_IMAGE_SIZE = 1024
"""Largest ``--image-size`` (a 1024 px side is already 4 MB per RGB image in float32)."""


def check_weights_path(path: Any) -> None:
    """Refuse a ``--weights`` value that cannot be a file path (one line); ``None`` passes."""
    if path is not None and (not isinstance(path, str) or not path or len(path) > 4096 or "\0" in path):
        raise NetsiftError(f"--weights must be a file path, got {path!r}")


MAX_INT = 10**12
"""No integer option is meaningful beyond this (epochs, steps, sizes...): a sanity bound against typos."""

_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}


def check_types(obj: Any) -> None:
    """Raise a one-line error naming the first field of dataclass ``obj`` whose value has the wrong type.

    Types come from the annotations (``int``, ``float``, ``str``, ``bool``, optionally ``| None``); an int is a
    valid float and is converted; a bool is never a number.
    """
    for f in dataclasses.fields(obj):
        kinds = [k.strip() for k in str(f.type).split("|")]
        value = getattr(obj, f.name)
        if value is None and "None" in kinds:
            continue
        base = next((k for k in kinds if k in _TYPES), None)
        if base is None:
            continue
        flag = "--" + f.name.replace("_", "-")
        ok = isinstance(value, _TYPES[base]) and (base == "bool" or not isinstance(value, bool))
        if not ok:
            want = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false"}[base]
            raise NetsiftError(f"{flag} must be {want}, got {value!r}")
        if base == "float" and isinstance(value, int):
            try:
                setattr(obj, f.name, float(value))
            except OverflowError:
                raise NetsiftError(f"{flag} is out of range, got {value}") from None
        if base == "int" and not -MAX_INT <= value <= MAX_INT:
            raise NetsiftError(f"{flag} must be at most {MAX_INT:,}, got {value}")


def check_range(obj: Any, name: str, lo: float, hi: float) -> None:
    """Raise a one-line error unless field ``name`` of ``obj`` is ``None`` or in ``[lo, hi]``."""
    value = getattr(obj, name)
    if value is not None and not lo <= value <= hi:
        raise NetsiftError(f"--{name.replace('_', '-')} must be between {lo:,} and {hi:,}, got {value}")


def check_finite(obj: Any) -> None:
    """Raise a one-line error naming the first float field of dataclass ``obj`` that is NaN or infinite."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise NetsiftError(f"--{f.name.replace('_', '-')} must be a finite number, got {value}")


def check_seed(seed: Any, what: str = "seed") -> int:
    """``seed`` as an int in [0, 2**63), or a one-line error."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise NetsiftError(f"{what} must be an integer in [0, 2^63), got {seed!r}")
    return seed


def check_width(width: Any) -> float:
    """``width`` as a float in (0, 64], or a one-line error."""
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 < width <= 64:
        raise NetsiftError(f"width must be a number in (0, 64], got {width!r}")
    return float(width)


@dataclass
class RunOptions:
    """The settings of a run that are not its method's: seeds, the run folder, progress and trackers.

    Attributes:
        seed: seeds the initialisation of a zoo model, sampling, selection, the batch order and augmentation.
        data_seed: seeds the train/validation split (default: a source run's, else ``seed``).
        out: run folder to write; ``True``: a folder under ``runs/`` named by a hash of the settings; ``None``
            or ``False``: nothing is written.
        overwrite, resume: replace a non-empty ``out`` (the new run is built beside it and replaces it when it
            finishes), or continue the interrupted run in it.
        force: with ``overwrite``, replace a folder even when it holds files that are not a netsift run.
        progress: report progress on stderr (``None``: on unless the caller turned it off).
        log_with: experiment trackers (see :mod:`netsift.tracking`).
    """

    seed: int = 0
    data_seed: int | None = None
    out: str | Path | bool | None = None
    overwrite: bool = False
    resume: bool = False
    force: bool = False
    progress: bool | None = None
    log_with: str | list[str] | None = None

    def __post_init__(self):
        check_seed(self.seed)
        if self.data_seed is not None:
            check_seed(self.data_seed, "data_seed")
        for name in ("overwrite", "resume", "force"):
            if not isinstance(getattr(self, name), bool):
                raise NetsiftError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.progress is not None and not isinstance(self.progress, bool):
            raise NetsiftError(f"progress must be true, false or None, got {self.progress!r}")
        if not (self.out is None or isinstance(self.out, (bool, Path)) or (isinstance(self.out, str) and self.out)):
            raise NetsiftError(f"--out must name a folder (in Python also True or None), got {self.out!r}")
        if self.log_with is not None:
            from .tracking import check_trackers

            check_trackers(self.log_with)  # a missing tracker package: one line, before any work

    @property
    def folder(self) -> str | Path | None:
        """``out`` when it names a folder (not ``True``/``None``/``False``)."""
        return None if self.out is None or isinstance(self.out, bool) else self.out


RUN_FIELDS = frozenset(f.name for f in dataclasses.fields(RunOptions))
"""The run options a pipeline takes as keyword options."""


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
        check_types(self)
        check_finite(self)
        for name in ("epochs", "batch_size"):
            if getattr(self, name) <= 0:
                raise NetsiftError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.epochs > 100_000 or self.batch_size > 1_000_000:
            raise NetsiftError("--epochs must be at most 100,000 and --batch-size at most 1,000,000")
        if self.lr is not None and not 0 < self.lr <= 1e6:
            raise NetsiftError(f"--lr must be in (0, 1e6], got {self.lr}")
        if not 0.0 <= self.momentum < 1.0:
            raise NetsiftError(f"--momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay is not None and not 0 <= self.weight_decay <= 10:
            raise NetsiftError(f"--weight-decay must be in [0, 10], got {self.weight_decay}")
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
        check_range(self, "patience", 0, 100_000)
        check_range(self, "step_every", 0, 100_000)
        check_range(self, "max_steps", 0, 10**9)

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
             f.metadata.get("values"), f.metadata.get("metavar"))


def _add(group, name: str, default: Any, help_text: str, type_name: str, choices, default_text: str | None,
         values: tuple[str, ...] | None = None, metavar: str | None = None) -> None:
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
    metavar = "{" + ",".join(listed) + "}" if listed else metavar or name.upper()
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
