"""Experiment trackers through Accelerate's tracker API (``--log-with``).

The training loop (:func:`netsift.training.fit`) hands the trackers to ``Accelerator(log_with=...,
project_dir=...)``, calls ``init_trackers`` with the loop's settings and ``accelerator.log`` with each epoch's
metrics (the row of ``metrics.jsonl``). Logs go to ``RUN_DIR/logs/`` (``runs/logs/`` for a run without a
folder). ``csv`` is netsift's own small tracker (``logs/netsift/metrics.csv`` + ``hparams.json``, no extra
package); the others are Accelerate's and need their package installed, which :func:`check_trackers` checks
up front: a missing one is a one-line error, not a silently dropped tracker. This module is torch-free.
"""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path
from typing import Any, Sequence

from .errors import NetsiftError

PACKAGES: dict[str, tuple[str, ...]] = {
    "csv": (),
    "tensorboard": ("tensorboard", "tensorboardX"),
    "wandb": ("wandb",),
    "mlflow": ("mlflow",),
    "comet_ml": ("comet_ml",),
    "aim": ("aim",),
    "clearml": ("clearml",),
    "dvclive": ("dvclive",),
    "swanlab": ("swanlab",),
    "trackio": ("trackio",),
}
"""Tracker names ``--log-with`` takes, with the Python packages that provide them (any one suffices)."""

TRACKERS = tuple(PACKAGES)
PROJECT = "netsift"
"""Project name given to the trackers (a wandb project, the TensorBoard/CSV sub-folder of ``logs/``)."""


def names(log_with: str | Sequence[str] | None) -> list[str]:
    """``log_with`` as a list of tracker names (a string may hold several, comma-separated)."""
    if log_with is None:
        return []
    items = [log_with] if isinstance(log_with, str) else list(log_with)
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise NetsiftError(f"log_with takes tracker names ({', '.join(TRACKERS)}), got {type(item).__name__}")
        out += [n.strip() for n in item.split(",") if n.strip()]
    return list(dict.fromkeys(out))


def check_trackers(log_with: str | Sequence[str] | None) -> list[str]:
    """The tracker names, each known and installed; otherwise a one-line error saying what to install."""
    wanted = names(log_with)
    for name in wanted:
        if name not in PACKAGES:
            raise NetsiftError(f"unknown tracker {name!r} for --log-with; choose from: {', '.join(TRACKERS)}")
        packages = PACKAGES[name]
        if packages and not any(importlib.util.find_spec(p) is not None for p in packages):
            raise NetsiftError(f"--log-with {name}: the {packages[0]} package is not installed "
                               f"(pip install {packages[0]}), or use --log-with csv")
    return wanted


class Trackers:
    """The trackers of one training run (what :func:`netsift.training.fit` uses).

    ``Accelerator(**trackers.accelerator_kwargs())``, then :meth:`start`, :meth:`log` per epoch and
    :meth:`finish` (which closes the trackers only: ``accelerator.end_training`` would also end a
    multi-process group that later steps of a pipeline still need).
    """

    def __init__(self, log_with: str | Sequence[str] | None, run_dir: str | Path | None):
        self.wanted = check_trackers(log_with)
        self.logdir = (Path(run_dir) if run_dir is not None else Path("runs")) / "logs"
        self.run_name = Path(run_dir).name if run_dir is not None else PROJECT
        self.accelerator = None

    def __bool__(self) -> bool:
        return bool(self.wanted)

    def accelerator_kwargs(self) -> dict:
        """``log_with`` (Accelerate's own trackers) and ``project_dir`` for ``Accelerator``."""
        if not self.wanted:
            return {}
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        builtin = [n for n in self.wanted if n != "csv"]
        for name in builtin:
            if name not in LOGGER_TYPE_TO_CLASS:
                import accelerate

                raise NetsiftError(f"--log-with {name}: Accelerate {accelerate.__version__} has no such tracker")
        return {"log_with": builtin or None, "project_dir": str(self.logdir)}

    def start(self, accelerator, config: dict[str, Any]) -> None:
        """Open the trackers (main process only) and store the run's settings as hyperparameters."""
        if not self.wanted:
            return
        self.accelerator = accelerator
        if "csv" in self.wanted and accelerator.is_main_process:
            accelerator.log_with.append(csv_tracker_class()(PROJECT, self.logdir))
        accelerator.init_trackers(PROJECT, config=hparams(config), init_kwargs={"wandb": {"name": self.run_name}})

    def log(self, row: dict[str, Any], step: int) -> None:
        """One epoch's numeric metrics."""
        if self.accelerator is not None:
            values = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            self.accelerator.log(values, step=step)

    def finish(self) -> None:
        if self.accelerator is not None:
            for tracker in self.accelerator.trackers:
                tracker.finish()
            self.accelerator.trackers.clear()
            self.accelerator = None


def hparams(config: dict[str, Any]) -> dict[str, Any]:
    """Flat settings with values trackers accept (bool, int, float, str): nested keys joined with '.',
    ``None`` as ``""``, lists as strings."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif value is None:
            out[prefix] = ""
        elif isinstance(value, (bool, int, float, str)):
            out[prefix] = value
        else:
            out[prefix] = str(value)

    walk("", config)
    return out


_CSV_CLASS: list = []


def csv_tracker_class():
    """An Accelerate ``GeneralTracker`` writing ``<logging_dir>/<run_name>/metrics.csv`` (one row per ``log``
    call; the header grows when new keys appear) and ``hparams.json``. Built on first use (imports accelerate)."""
    if _CSV_CLASS:
        return _CSV_CLASS[0]
    from accelerate.tracking import GeneralTracker

    class CSVTracker(GeneralTracker):
        name = "csv"
        requires_logging_directory = True
        main_process_only = True

        def __init__(self, run_name: str, logging_dir: str | Path, **kwargs):
            super().__init__()
            self.folder = Path(logging_dir) / run_name
            self.folder.mkdir(parents=True, exist_ok=True)
            self.path = self.folder / "metrics.csv"

        @property
        def tracker(self):
            return self.path

        def store_init_configuration(self, values: dict) -> None:
            (self.folder / "hparams.json").write_text(json.dumps(values, indent=1, default=str) + "\n")

        def log(self, values: dict, step: int | None = None, **kwargs) -> None:
            row = {"step": step, **{k: v for k, v in values.items() if isinstance(v, (int, float, str, bool))}}
            rows, header = [], list(row)
            if self.path.exists():
                try:
                    with open(self.path, newline="", encoding="utf-8") as f:
                        reader = csv.DictReader(f)
                        rows = list(reader)
                        header = list(dict.fromkeys([*(reader.fieldnames or []), *row]))
                except (UnicodeDecodeError, csv.Error) as e:
                    raise NetsiftError(f"tracker log {self.path} is corrupt: {e}") from None
            if rows and header == list(rows[0]):
                with open(self.path, "a", newline="") as f:
                    csv.DictWriter(f, fieldnames=header).writerow(row)
                return
            with open(self.path, "w", newline="") as f:  # new file, or new keys: rewrite with the wider header
                w = csv.DictWriter(f, fieldnames=header)
                w.writeheader()
                w.writerows([*rows, row])

    _CSV_CLASS.append(CSVTracker)
    return CSVTracker
