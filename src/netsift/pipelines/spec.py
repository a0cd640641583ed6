"""What a run is made of, as the CLI and the Python API both build it.

* :class:`RunOptions`: the run-level settings every command shares (seed, split seed, run folder, progress,
  trackers).
* :class:`Source`: the network and the data a run starts from (a module, a zoo name or a run folder; a data-set
  name, a config, a bundle or the user's loaders).

Each run type adds its own spec (:class:`~.train.TrainSpec`, :class:`~.extract.ExtractSpec`,
:class:`~.prune.PruneSpec`): its method and loop settings. :func:`~.runner.execute` runs any of them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import NetsiftError


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
            raise NetsiftError(f"out must be a folder path, True or None, got {self.out!r}")

    @property
    def folder(self) -> str | Path | None:
        """``out`` when it names a folder (not ``True``/``None``/``False``)."""
        return None if self.out is None or isinstance(self.out, bool) else self.out


RUN_FIELDS = frozenset(f.name for f in dataclasses.fields(RunOptions))


@dataclass
class Source:
    """The network and the data a run starts from.

    Attributes:
        model: an ``nn.Module``, a zoo name (``"conv4"``, ``"tv:resnet18"``) built for the data, or (prune) a run
            folder holding a saved network.
        data: a data-set name, a :class:`~netsift.config.DataConfig`, a :class:`~netsift.data.DataBundle`, or
            ``{"train": ..., "val": ..., "test": ...}`` of ``DataLoader``\\ s or data sets; for a run folder also
            ``None`` (its own data) or a dict of data settings put on top of its own (``{"data_dir": ...}``).
        width: width multiplier of a zoo model.
        weights: a local state-dict file the network named by ``model`` starts from.
        image_size: feed the images resized to this side in px (1-1024).
        arch: refuse a run folder that does not hold this architecture.
    """

    model: Any
    data: Any = None
    width: float = 1.0
    weights: str | Path | None = None
    image_size: int | None = None
    arch: str | None = None

    def __post_init__(self):
        self.width = check_width(self.width)

    @property
    def reads(self) -> list[str | Path]:
        """The paths the run reads (an output folder may not be one of them)."""
        return [self.model] if isinstance(self.model, (str, Path)) else []


SOURCE_FIELDS = frozenset({"width", "weights", "image_size"})
"""The :class:`Source` settings the Python API takes as keyword options."""


def split_options(options: dict[str, Any], *groups: frozenset[str] | set[str]) -> list[dict[str, Any]]:
    """Split keyword options into one dict per group of names; an unknown name is a one-line error."""
    out: list[dict[str, Any]] = [{} for _ in groups]
    for k, v in options.items():
        for names, bucket in zip(groups, out):
            if k in names:
                bucket[k] = v
                break
        else:
            raise NetsiftError(f"unknown option {k!r}")
    return out


def config_of(cls: type, value: Any, what: str, **changes: Any) -> Any:
    """``value`` (an instance of dataclass ``cls``, a dict of its fields or ``None``) as a ``cls`` with
    ``changes`` applied; anything else is a one-line error naming ``what``."""
    if value is None:
        value = {}
    if isinstance(value, dict):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - names)
        if unknown:
            raise NetsiftError(f"{what}: unknown setting {unknown[0]!r}")
        return cls(**{**value, **changes})
    if not isinstance(value, cls):
        raise NetsiftError(f"{what} must be a {cls.__name__} or a dict of its settings, got {type(value).__name__}")
    return dataclasses.replace(value, **changes) if changes else value
