"""Schemas of every JSON file netsift reads back, checked before anything is built from it.

``model.json`` (the architecture manifest), ``config.json``, ``checkpoint.json``, ``best.json``,
``selection.json``, ``subnet.json``, ``result.json`` and the header of a compact ``.nsc`` file are all
checked here: types, required keys, and sizes with upper bounds (an edited ``image_size: 100000`` or a
``width`` given as a string is a one-line :class:`~netsift.errors.NetsiftError`, not a traceback or a
12 TB allocation). The specs are small combinators::

    validate(value, Obj({"epoch": Int(0, 10**6)}, required=("epoch",)), "checkpoint.json")
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable

from .errors import NetsiftError

MAX_SIZE = 10**7
"""Largest channel / feature count of one layer a manifest may record."""
MAX_IMAGE = 4096
"""Largest image side a manifest may record."""
MAX_IN_CHANNELS = 4096
MAX_CLASSES = 10**6
MAX_SEED = 2**63 - 1
MAX_PARAMS_ENV = "NETSIFT_MAX_PARAMS"
"""Environment variable overriding :data:`MAX_PARAMS_DEFAULT`."""
MAX_PARAMS_DEFAULT = 10**9
"""Most parameters + buffers (elements) a network rebuilt from a file may have (4 GB of float32)."""


def max_params() -> int:
    """The parameter bound for networks rebuilt from files (``$NETSIFT_MAX_PARAMS`` or 10^9)."""
    from .env import get

    return int(get(MAX_PARAMS_ENV))  # a bad value is one line, never silently the default


class _Bad(Exception):
    def __init__(self, path: str, expected: str, got: Any = None, show: bool = True):
        super().__init__(path)
        self.path, self.expected, self.got, self.show = path, expected, got, show


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _at(path: str, key: Any) -> str:
    return f"{path}.{key}" if isinstance(key, str) and re.fullmatch(r"[A-Za-z_][\w-]*", key) else f"{path}[{key!r}]"


class Spec:
    """A check of one JSON value."""

    def check(self, value: Any, path: str) -> None:  # noqa: D102
        raise NotImplementedError


class Any_(Spec):
    """Any JSON value."""

    def check(self, value, path):
        pass


JSON = Any_()


class Int(Spec):
    """An integer (not a bool) in [lo, hi]."""

    def __init__(self, lo: int | None = None, hi: int | None = None):
        self.lo, self.hi = lo, hi

    def check(self, value, path):
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Bad(path, "an integer", value)
        if (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
            raise _Bad(path, f"an integer in [{self.lo}, {self.hi}]", value)


class Num(Spec):
    """A number (not a bool) in [lo, hi] (``lo_open``: (lo, hi]); finite unless ``nan`` allows NaN."""

    def __init__(self, lo: float | None = None, hi: float | None = None, lo_open: bool = False, nan: bool = False):
        self.lo, self.hi, self.lo_open, self.nan = lo, hi, lo_open, nan

    def check(self, value, path):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Bad(path, "a number", value)
        if isinstance(value, float) and math.isnan(value):
            if self.nan:
                return
            raise _Bad(path, "a finite number", value)
        if not math.isfinite(value):
            raise _Bad(path, "a finite number", value)
        low_bad = self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo)
        if low_bad or (self.hi is not None and value > self.hi):
            raise _Bad(path, f"a number in {'(' if self.lo_open else '['}{self.lo}, {self.hi}]", value)


class Str(Spec):
    """A string of at most ``max_len`` characters (one of ``choices``, or matching ``pattern``, when given)."""

    def __init__(self, max_len: int = 1000, choices: tuple[str, ...] | None = None, pattern: str | None = None):
        self.max_len, self.choices, self.pattern = max_len, choices, pattern

    def check(self, value, path):
        if not isinstance(value, str):
            raise _Bad(path, "a string", value)
        if len(value) > self.max_len:
            raise _Bad(path, f"a string of at most {self.max_len} characters", f"{len(value)} characters", False)
        if self.choices is not None and value not in self.choices:
            raise _Bad(path, "one of " + ", ".join(self.choices), value)
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            raise _Bad(path, f"a string matching {self.pattern}", value)


HEX64 = Str(64, pattern=r"[0-9a-f]{64}")
SEED = Int(0, MAX_SEED)


class Bool(Spec):
    """``true`` or ``false``."""

    def check(self, value, path):
        if not isinstance(value, bool):
            raise _Bad(path, "true or false", value)


class Opt(Spec):
    """``null`` or ``spec``."""

    def __init__(self, spec: Spec):
        self.spec = spec

    def check(self, value, path):
        if value is not None:
            self.spec.check(value, path)


class OneOf(Spec):
    """A value that passes one of ``specs`` (the first one's complaint is reported)."""

    def __init__(self, *specs: Spec):
        self.specs = specs

    def check(self, value, path):
        first = None
        for spec in self.specs:
            try:
                spec.check(value, path)
                return
            except _Bad as e:
                first = first or e
        raise first


class List(Spec):
    """A list of at most ``max_len`` items, each checked by ``item``."""

    def __init__(self, item: Spec = JSON, max_len: int = 10**6, min_len: int = 0):
        self.item, self.max_len, self.min_len = item, max_len, min_len

    def check(self, value, path):
        if not isinstance(value, list):
            raise _Bad(path, "a list", value)
        if not self.min_len <= len(value) <= self.max_len:
            raise _Bad(path, f"a list of {self.min_len} to {self.max_len} items", f"{len(value)} items", False)
        for i, v in enumerate(value):
            self.item.check(v, f"{path}[{i}]")


class Map(Spec):
    """An object with string keys (at most ``max_len``) whose values are checked by ``value``."""

    def __init__(self, value: Spec = JSON, max_len: int = 10**6):
        self.value, self.max_len = value, max_len

    def check(self, value, path):
        if not isinstance(value, dict):
            raise _Bad(path, "an object", value)
        if len(value) > self.max_len:
            raise _Bad(path, f"an object of at most {self.max_len} keys", f"{len(value)} keys", False)
        for k, v in value.items():
            self.value.check(v, _at(path, k))


class Obj(Spec):
    """An object with known ``fields`` (``required`` ones must be present; others are allowed if ``extra``)."""

    def __init__(self, fields: dict[str, Spec], required: tuple[str, ...] | str = (), extra: bool = True):
        self.fields = fields
        self.required = tuple(fields) if required == "all" else tuple(required)
        self.extra = extra

    def check(self, value, path):
        if not isinstance(value, dict):
            raise _Bad(path, "an object", value)
        for key in self.required:
            if key not in value:
                raise _Bad(_at(path, key), "present", None, False)
        for key, v in value.items():
            spec = self.fields.get(key)
            if spec is not None:
                spec.check(v, _at(path, key))
            elif not self.extra:
                raise _Bad(_at(path, key), "absent (unknown key)", None, False)


class Fn(Spec):
    """A custom check: ``fn(value, path)`` raises through :func:`bad`."""

    def __init__(self, fn: Callable[[Any, str], None]):
        self.fn = fn

    def check(self, value, path):
        self.fn(value, path)


def bad(path: str, expected: str, got: Any = None, show: bool = True) -> None:
    """Report a schema violation from inside an :class:`Fn` check."""
    raise _Bad(path, expected, got, show)


def validate(value: Any, spec: Spec, what: str) -> Any:
    """Check ``value`` against ``spec``; a violation is a one-line :class:`NetsiftError` naming ``what`` and the key.

    Returns ``value`` unchanged.
    """
    try:
        spec.check(value, "")
    except _Bad as e:
        where = e.path.lstrip(".") or "its contents"
        got = f", got {_short(e.got)}" if e.show else (f" ({e.got})" if e.got is not None else "")
        raise NetsiftError(f"{what} is malformed: {where} must be {e.expected}{got}") from None
    except RecursionError:
        raise NetsiftError(f"{what} is malformed: nested too deeply") from None
    return value


# ---------------------------------------------------------------------------------------------------- manifests

_SIZE = Int(1, MAX_SIZE)
_SHAPE = List(Int(0, MAX_SIZE), max_len=8)


def _divides(s: dict, path: str) -> None:
    for key in ("in", "out"):
        if key in s and s[key] % s["groups"]:
            bad(f"{path}.{key}", f"a multiple of groups ({s['groups']})", s[key])


def _numel(shape: list[int]) -> int:
    return math.prod(shape) if shape else 1


_MODULES: dict[str, Spec] = {
    "Conv2d": Obj({"in": _SIZE, "out": _SIZE, "groups": _SIZE}, required="all"),
    "Linear": Obj({"in": _SIZE, "out": _SIZE}, required="all"),
    "BatchNorm1d": Obj({"out": _SIZE}, required="all"),
    "BatchNorm2d": Obj({"out": _SIZE}, required="all"),
    "BatchNorm3d": Obj({"out": _SIZE}, required="all"),
    "LayerNorm": Obj({"shape": List(_SIZE, 8, 1)}, required="all"),
    "GroupNorm": Obj({"out": _SIZE, "groups": _SIZE}, required="all"),
    "PReLU": Obj({"out": _SIZE}, required="all"),
    "RNN": Obj({"in": _SIZE, "hidden": _SIZE, "proj": Int(0, MAX_SIZE), "tensors": Map(_SHAPE, 64)}, required="all"),
    "parameter": Obj({"shape": _SHAPE}, required="all"),
    "buffer": Obj({"shape": _SHAPE}, required="all"),
}


def _module_size(value: Any, path: str) -> None:
    if not isinstance(value, dict):
        bad(path, "an object", value)
    kind = value.get("type")
    if kind not in _MODULES:
        bad(f"{path}.type", "one of " + ", ".join(_MODULES), kind)
    _MODULES[kind].check(value, path)
    if "groups" in value:
        _divides(value, path)
    if "shape" in value and _numel(value["shape"]) > max_params():
        bad(f"{path}.shape", f"at most {max_params():,} elements", value["shape"])
    for name, shape in (value.get("tensors") or {}).items():
        if _numel(shape) > max_params():
            bad(f"{path}.tensors.{name}", f"at most {max_params():,} elements", shape)


MODULE_SIZES = Map(Fn(_module_size), max_len=100_000)

_MANIFEST_FIELDS = {
    "model": Str(200),
    "width": Num(0, 64, lo_open=True),
    "in_channels": Int(1, MAX_IN_CHANNELS),
    "image_size": Int(1, MAX_IMAGE),
    "num_classes": Int(2, MAX_CLASSES),
    "kwargs": Map(JSON, 100),
    "modules": MODULE_SIZES,
    "pretrained": Bool(),
    "structure": HEX64,
}


def _manifest(value: Any, path: str) -> None:
    if not isinstance(value, dict):
        bad(path, "an object (the model manifest)", value)
    custom = isinstance(value.get("model"), str) and value["model"].startswith("custom:")
    required = ("model",) if custom else ("model", "in_channels", "image_size", "num_classes")
    Obj(_MANIFEST_FIELDS, required).check(value, path)


MANIFEST = Fn(_manifest)
"""A model manifest (``models.model_manifest`` plus ``modules``: per-layer sizes of a pruned network)."""


# ---------------------------------------------------------------------------------------------------- run files

CHECKPOINT_RECORD = Obj({"tensors_sha256": HEX64}, required=("tensors_sha256",))
"""What every ``NAME.json`` of a safetensors pair holds besides its own contents."""

DATA_SETTINGS = Obj({"data": Str(100), "data_dir": Opt(Str(4096)), "val_fraction": Num(0, 1),
                     "train_subset": Opt(Int(1, 10**9)), "download": Bool(), "image_size": Opt(Int(1, 1024)),
                     "train": Int(0), "val": Int(0), "test": Int(0), "input_shape": List(Int(1, MAX_SIZE), 8)},
                    required=("data",))

WEIGHTS_RECORD = Obj({"file": Str(4096), "sha256": HEX64, "adapted": List(Str(1000), 1000)},
                     required=("file", "sha256"))
"""The ``--weights`` file a network started from: its name, SHA-256 and the adaptations made while loading."""

RUN_CONFIG = Obj({
    "command": Str(choices=("train", "extract", "prune")),
    "method": Str(100),
    "seed": SEED,
    "data_seed": SEED,
    "model": MANIFEST,
    "data": DATA_SETTINGS,
    "train": Opt(Map(JSON, 1000)),
    "mask": Opt(Map(JSON, 1000)),
    "prune": Opt(Map(JSON, 1000)),
    "source": Opt(Str(4096)),
    "weights": Opt(WEIGHTS_RECORD),
}, required=("command", "method", "seed", "data"))
"""``config.json`` of a run folder (netsift writes every key; readers need the required ones)."""

METRICS_ROW = Obj({
    "epoch": Int(1, 10**6), "step": Int(0, 10**13), "train_loss": Num(), "train_acc": Num(0, 1),
    "val_loss": Opt(Num(nan=True)), "val_acc": Opt(Num(0, 1, nan=True)), "lr": Num(0), "epoch_s": Num(0),
    "images_per_s": Num(0),
}, required=("epoch",))
"""One line of ``metrics.jsonl`` (one finished epoch; ``NaN`` validation figures when there is no validation split)."""

TRAIN_CHECKPOINT = Obj({
    "epoch": Int(0, 10**6),
    "step": Int(0, 10**13),
    "best_val_acc": Opt(Num(-1, 1, nan=True)),
    "best_epoch": Int(-1, 10**6),
    "since_best": Int(0, 10**6),
    "stopped": Bool(),
    "optimizers": List(JSON, 100),
    "callbacks": List(JSON, 1000),
    "rng": Obj({"python": List(JSON, 10), "numpy": List(JSON, 10)}, required="all"),
    "history": List(METRICS_ROW, 10**6),
    "processes": Int(1, 1_000_000),
}, required=("epoch", "step", "best_val_acc", "best_epoch", "since_best", "stopped", "optimizers", "callbacks",
             "rng", "history"))
"""``checkpoint.json`` of the training loop."""

BEST_CHECKPOINT = Obj({"epoch": Int(0, 10**6), "val_acc": Opt(Num(-1, 1, nan=True))}, required=("epoch",))

MODEL_FILE = Obj({"manifest": MANIFEST, "netsift": Opt(Str(100))}, required=("manifest",))
"""``model.json`` (and ``dense.json`` of an export)."""

INIT = Obj({"scheme": Str(100), "seed": SEED}, required="all")

_INPUT_SHAPE = List(Int(1, MAX_SIZE), 8, 1)

SUBNET_FILE = Obj({"manifest": MANIFEST, "init": INIT, "weights_sha256": HEX64, "state_sha256": Opt(HEX64),
                   "method": Opt(Str(100)), "data": Opt(OneOf(Str(100), Map(JSON, 100))),
                   "test_acc": Opt(Num(0, 1, nan=True)), "layers": List(Str(1000), 100_000),
                   "input_shape": Opt(_INPUT_SHAPE), "num_classes": Opt(Int(1, MAX_CLASSES)),
                   "dense_bytes": Opt(Int(0, 2**50)), "data_config": Opt(Map(JSON, 100)), "seed": Opt(SEED)},
                  required=("manifest", "init", "weights_sha256"))
"""``subnet.json`` of an extract run."""

_DTYPES = ("float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool")
COMPACT_HEADER = Obj({
    "format": Str(choices=("netsift-compact",)),
    "manifest": MANIFEST,
    "init": INIT,
    "layers": List(Obj({"name": Str(1000), "shape": _SHAPE, "scale": Num(), "kept": Int(0)},
                       required=("name", "shape", "scale")), 100_000),
    "extras": List(Obj({"key": Str(1000), "dtype": Str(choices=_DTYPES), "shape": _SHAPE}, required="all"), 100_000),
    "codec": Str(choices=("none", "zlib", "lzma")),
    "raw_bytes": Int(0, 2**36),
    "payload_bytes": Int(0, 2**36),
    "weights_sha256": Opt(HEX64),
    "state_sha256": Opt(HEX64),
    "test_acc": Opt(Num(0, 1, nan=True)),
    "seed": Opt(SEED),
    "method": Opt(Str(100)),
    "data": Opt(OneOf(Str(100), Map(JSON, 100))),
    "data_config": Opt(DATA_SETTINGS),
    "input_shape": Opt(_INPUT_SHAPE),
    "num_classes": Opt(Int(1, MAX_CLASSES)),
    "dense_bytes": Opt(Int(0, 2**50)),
}, required=("manifest", "init", "layers", "extras", "codec", "raw_bytes", "payload_bytes"))
"""The JSON header of a compact ``.nsc`` file."""

_ACC = Opt(Num(0, 1))
_FIGURE = Opt(Num(0))  # a finite, non-negative figure (seconds, ms, images/s, losses, ratios)
_COUNT = Opt(Int(0))
_TEXT = Opt(Str(1000))
RESULT_FILE = Obj({
    "command": Opt(Str(100)), "method": Opt(Str(100)), "model": Opt(Str(200)), "width": Opt(Num(0, 64, lo_open=True)),
    "data": Opt(Str(100)), "image_size": Opt(Int(1, MAX_IMAGE)), "seed": Opt(SEED), "data_seed": Opt(SEED),
    "test_acc": _ACC, "val_acc": _ACC, "test_acc_selected": _ACC, "source_test_acc": _ACC,
    "test_loss": _FIGURE, "test_samples": _COUNT, "density": Opt(Num(0, 1)), "density_target": Opt(Num(0, 1)),
    "params": _COUNT, "params_total": _COUNT, "macs": _COUNT, "macs_sparse": _COUNT, "macs_fraction": _FIGURE,
    "layers": Opt(List(Obj({"name": Str(1000), "shape": _SHAPE, "density": Num(0, 1), "scale": Opt(Num())},
                           required=("name", "density")), 100_000)),
    "latency_b1_ms": _FIGURE, "latency_b64_ms": _FIGURE, "latency_threads": _COUNT, "latency_spread": _FIGURE,
    "latency_note": _TEXT, "source_latency_b1_ms": _FIGURE, "source_latency_b64_ms": _FIGURE,
    "speedup_b1": _FIGURE, "speedup_b64": _FIGURE,
    "epochs_run": _COUNT, "best_epoch": Opt(Int(-1)), "stopped_early": Opt(Bool()), "train_images_per_s": _FIGURE,
    "wall_s": _FIGURE, "init": _TEXT, "rescale": _TEXT, "mask_lr": _FIGURE, "mask_weight_decay": _FIGURE,
    "mask_schedule": _TEXT, "recalibrated_bn": _COUNT, "weights_sha256": Opt(HEX64), "subnet": _TEXT,
    "weights": Opt(WEIGHTS_RECORD), "source": Opt(Str(4096)), "macs_target": Opt(Num(0, 1, lo_open=True)),
    "tolerance": Opt(Num(0, 1)), "source_macs": _COUNT, "source_params": _COUNT, "finetuned": Opt(Bool()),
    "finetune_epochs": _COUNT, "selection_s": _FIGURE, "finetune_s": _FIGURE,
    "groups": Opt(List(Obj({"group": Str(10_000), "size": Int(1, MAX_SIZE), "kept": Int(0, MAX_SIZE)},
                           required=("group", "size", "kept")), 100_000)),
    "run_dir": Opt(Str(4096)), "netsift_version": _TEXT, "torch_version": _TEXT, "machine": _TEXT,
    "threads": _COUNT, "cpu_capability": _TEXT, "processes": Opt(Int(1, 1_000_000)),
})
"""``result.json``: every field netsift writes, typed and range-checked (accuracies in [0, 1], figures finite and
non-negative), so that a report never shows an empty cell for NaN or 1.7000 for an accuracy of 1.7."""

SELECTION_STATE = Obj({
    "method": Str(100),
    "groups": List(Obj({"group": Str(10_000), "kept": List(Int(0, MAX_SIZE), MAX_SIZE), "rescale": Bool(),
                        "info": Map(JSON, 100)}, required="all"), 100_000),
    "stream": Obj({"epoch": Int(0, 10**9), "taken": Int(0, 10**12)}, required="all"),
    "model_state": Bool(),
    "widths": Opt(List(Int(0, MAX_SIZE), 100_000)),
}, required=("method", "groups", "stream", "model_state"))
"""``selection.json``: the channel groups ``prune`` has finished (its ``--resume`` state)."""
