"""One reader per kind of file netsift reads back from a run folder, each checked against its schema.

Every reader goes through :func:`netsift.checkpoint.read_json` (missing, unreadable, oversized, not UTF-8 or not
JSON: a one-line :class:`~netsift.errors.NetsiftError` naming the file) and a spec of :mod:`netsift.schema`
(wrong shape, wrong type, out of range, non-finite: one line naming the file and the field):

==========================  ==========================================  =====================================
file                        reader                                      schema
==========================  ==========================================  =====================================
``config.json``             :func:`read_config`                         :data:`~netsift.schema.RUN_CONFIG`
``result.json``             :func:`read_result`                         :data:`~netsift.schema.RESULT_FILE`
``checkpoint.json``         :func:`read_checkpoint_meta`                :data:`~netsift.schema.TRAIN_CHECKPOINT`
``model.json``              :func:`read_manifest`                       :data:`~netsift.schema.MODEL_FILE`
``metrics.jsonl``           :func:`read_metrics`                        :data:`~netsift.schema.METRICS_ROW`
==========================  ==========================================  =====================================

(The tensors of a checkpoint pair are read by :func:`netsift.checkpoint.load_checkpoint`, which checks its
record with the same specs.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .checkpoint import MAX_JSON_BYTES, read_json
from .errors import NetsiftError
from .schema import MANIFEST, METRICS_ROW, MODEL_FILE, RESULT_FILE, RUN_CONFIG, TRAIN_CHECKPOINT, validate


def read_config(path: str | os.PathLike) -> dict:
    """``config.json`` (a run folder's settings)."""
    return read_json(path, "run config", RUN_CONFIG)


def read_result(path: str | os.PathLike) -> dict:
    """``result.json``: every field netsift writes typed and range-checked (accuracies in [0, 1], finite figures)."""
    return read_json(path, "result", RESULT_FILE)


def read_checkpoint_meta(path: str | os.PathLike, what: str = "checkpoint metadata") -> dict:
    """``checkpoint.json`` of the training loop (its record only; the tensors are not read)."""
    return read_json(path, what, TRAIN_CHECKPOINT)


def read_manifest(path: str | os.PathLike) -> dict:
    """The architecture manifest in ``model.json`` (validated; the network it describes is not built)."""
    meta = read_json(path, "model metadata", MODEL_FILE)
    return validate(meta["manifest"], MANIFEST, f"model manifest {path}")


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The rows of ``metrics.jsonl``, one per epoch.

    A last line cut short (a run killed while appending it; no final newline) is left out; any other line that
    is not UTF-8 JSON of the row schema is a one-line error naming the file and the line.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise NetsiftError(f"cannot read metrics {path}: {e.strerror or e}") from None
    if len(data) > MAX_JSON_BYTES:
        raise NetsiftError(f"metrics {path} is implausibly large ({len(data):,} bytes)")
    lines = data.split(b"\n")
    rows: list[dict] = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row: Any = json.loads(line)
        except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
            if i == len(lines):  # the last line, without its newline: an append cut short
                break
            raise NetsiftError(f"metrics {path} is corrupt at line {i}: {e}") from None
        rows.append(validate(row, METRICS_ROW, f"metrics {path} line {i}"))
    return rows
