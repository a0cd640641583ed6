"""Every ``NETSIFT_*`` environment variable, declared and validated in one place.

:data:`VARIABLES` names each variable netsift reads, what it takes and its default; :func:`get` returns a
variable's value parsed and checked (a bad value is a one-line :class:`~netsift.errors.NetsiftError` naming the
variable and what it takes, never silently the default); :func:`check_all` checks every ``NETSIFT_*`` variable
set in the environment at once, an unknown name (a typo such as ``NETSIFT_PROGRES``) included. The command line
and every pipeline call :func:`check_all` before any work. Torch-free.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Any, Callable

from .errors import NetsiftError

PREFIX = "NETSIFT_"


def _choice(*values: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower() or values[0]
        if value not in values:
            raise ValueError
        return value

    takes = " or ".join((", ".join(values[:-1]), values[-1])) if len(values) > 1 else values[0]
    parse.takes = takes  # type: ignore[attr-defined]
    return parse


def _number(lo: float, hi: float, lo_open: bool = True, integer: bool = False) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        value = int(raw.strip()) if integer else float(raw.strip())
        if not math.isfinite(value) or value > hi or (value <= lo if lo_open else value < lo):
            raise ValueError
        return value

    kind = "an integer" if integer else "a number"
    parse.takes = f"{kind} in {'(' if lo_open else '['}{lo:g}, {hi:g}]"  # type: ignore[attr-defined]
    return parse


def _path(raw: str) -> str:
    if not raw.strip() or "\0" in raw or len(raw) > 4096:
        raise ValueError
    return raw


_path.takes = "a folder path"  # type: ignore[attr-defined]

_SIZE_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _size(raw: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", raw, re.I)
    if not m:
        raise ValueError
    value = int(float(m.group(1)) * _SIZE_UNITS[m.group(2).upper()])
    if value <= 0:
        raise ValueError
    return value


_size.takes = "a number of bytes (e.g. 8000000000, 512M or 8G)"  # type: ignore[attr-defined]


def _fault(raw: str) -> list[tuple[str, float]]:
    steps = []
    for part in raw.split(","):
        kind, _, arg = part.strip().partition(":")
        if kind == "count" and not arg:  # count the write steps only (the kill harness)
            steps.append((kind, 0))
        elif kind == "kill" and arg.isdigit() and int(arg) >= 1:
            steps.append((kind, int(arg)))
        elif kind == "sleep" and math.isfinite(float(arg)) and 0 <= float(arg) <= 3600:
            steps.append((kind, float(arg)))
        else:
            raise ValueError
    return steps


_fault.takes = "kill:N, sleep:S or count, comma-separated (a test hook)"  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Variable:
    """One environment variable: how its value is parsed, the default, and what it is for."""

    parse: Callable[[str], Any]
    default: Any
    help: str


VARIABLES: dict[str, Variable] = {
    "NETSIFT_PROGRESS": Variable(_choice("auto", "bar", "lines", "off"), "auto", "the form of progress output"),
    "NETSIFT_PROGRESS_INTERVAL": Variable(_number(0, 86400), 5.0,
                                          "seconds of silence before a heartbeat line in a log (at least 0.5 used)"),
    "NETSIFT_MAX_PARAMS": Variable(_number(0, 10**13, integer=True), 10**9,
                                   "most parameters + buffers of a network rebuilt from a file"),
    "NETSIFT_DIST_TIMEOUT": Variable(_number(0, 10**7), 1800.0,
                                     "seconds a process waits for the others at a collective"),
    "NETSIFT_SHARE_PREFIX": Variable(_choice("auto", "always", "never"), "auto",
                                     "greedy selection under several processes: share each step's prefix"),
    "NETSIFT_GRAPH_TIMEOUT": Variable(_number(0, 10**7, lo_open=False), 300.0,
                                      "seconds allowed for the channel-dependency analysis (0: no limit)"),
    "NETSIFT_DATA": Variable(_path, None, "the data root (default ~/.cache/netsift/data)"),
    "NETSIFT_MEMORY_LIMIT": Variable(_size, None, "treat at most this much memory as available to a step"),
    "NETSIFT_FAULT": Variable(_fault, None, "test-only fault injection in multi-step writes"),
}
"""Every ``NETSIFT_*`` variable netsift reads."""


def get(name: str) -> Any:
    """The value of environment variable ``name`` (one of :data:`VARIABLES`), parsed; its default when unset.

    Raises:
        NetsiftError: a value the variable does not take (one line naming it and what it takes).
    """
    var = VARIABLES[name]
    raw = os.environ.get(name)
    if raw is None:
        return var.default
    try:
        return var.parse(raw)
    except (ValueError, OverflowError):
        raise NetsiftError(f"{name} must be {var.parse.takes}, got {raw!r}") from None  # type: ignore[attr-defined]


def check_all() -> None:
    """Check every ``NETSIFT_*`` variable set in the environment (one line for the first bad one)."""
    for name in sorted(os.environ):
        if not name.startswith(PREFIX):
            continue
        if name not in VARIABLES:
            close = [v for v in VARIABLES if v.startswith(name) or name.startswith(v)]
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise NetsiftError(f"unknown environment variable {name}{hint}; netsift reads "
                               f"{', '.join(VARIABLES)}")
        get(name)


def memory_limit() -> int:
    """``NETSIFT_MEMORY_LIMIT`` in bytes (it must be set)."""
    return get("NETSIFT_MEMORY_LIMIT")
