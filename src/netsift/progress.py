"""Progress of long work: live bars in a terminal, plain lines in a log file, nothing with ``--quiet``.

Everything that takes more than a few seconds (training epochs, channel selection, batch-norm recalibration,
latency timing, export) reports through :func:`task`. Where the output goes decides the form:

* **bar** (stderr is a terminal): tqdm bars that update live; finished units (an epoch, a channel group)
  are also written as lines above the bars, so the history stays readable.
* **lines** (stderr is a file or a pipe: CI, ``nohup``, a cluster job): one line per finished unit (epoch
  i/N with train loss, validation accuracy, lr, images/s, elapsed and ETA; channel group i/N with the
  channels kept and the held-out accuracy), and a heartbeat line for the innermost running task whenever
  nothing was written for :data:`INTERVAL_ENV` seconds (default 5), so that no run is silent for long.
* **off**: ``--quiet``, ``progress=False`` in Python, or ``NETSIFT_PROGRESS=off``. Errors still print.

``NETSIFT_PROGRESS=bar|lines|off`` forces a form. Only one process of a multi-process launch reports (rank 0).
Progress goes to stderr; stdout keeps the results (tables), so ``> results.txt`` stays clean.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import os
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

MODE_ENV = "NETSIFT_PROGRESS"
"""Environment variable forcing the form of progress: ``auto`` (default), ``bar``, ``lines`` or ``off``."""

INTERVAL_ENV = "NETSIFT_PROGRESS_INTERVAL"
"""Environment variable: seconds of silence after which a log file gets a heartbeat line (default 5)."""

MODES = ("auto", "bar", "lines", "off")

_enabled: contextvars.ContextVar[bool] = contextvars.ContextVar("netsift_progress", default=True)
_lock = threading.RLock()
_stack: list["Task"] = []
_last_output = [time.monotonic()]
_ticker: list[threading.Thread | None] = [None]


def mode(enabled: bool | None = None) -> str:
    """The form progress takes now: ``"bar"``, ``"lines"`` or ``"off"``.

    ``enabled=None`` follows the current :func:`session` (on unless a caller turned it off).
    """
    if enabled is None:
        enabled = _enabled.get()
    from .env import get

    forced = get(MODE_ENV)  # validated: a bad value is one line
    if not enabled or forced == "off" or os.environ.get("RANK", "0") not in ("", "0"):
        return "off"
    if forced in ("bar", "lines"):
        return forced
    try:
        return "bar" if sys.stderr.isatty() else "lines"
    except (AttributeError, ValueError):  # a closed or replaced stream
        return "lines"


def enabled() -> bool:
    """Whether progress is on in the current :func:`session`."""
    return _enabled.get()


@contextmanager
def session(enabled: bool | None = True) -> Iterator[None]:
    """Turn progress on or off for everything called inside (``None`` keeps the current setting)."""
    if enabled is None:
        yield
        return
    token = _enabled.set(bool(enabled))
    try:
        yield
    finally:
        _enabled.reset(token)


def interval() -> float:
    """Seconds of silence before a heartbeat line (lines mode)."""
    from .env import get

    try:
        return max(0.5, float(get(INTERVAL_ENV)))
    except Exception:  # noqa: BLE001 (read by the heartbeat thread; the value was checked when the run began)
        return 5.0


def duration(seconds: float | None) -> str:
    """``seconds`` as ``m:ss`` or ``h:mm:ss`` (``?`` when unknown)."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def write(text: str) -> None:
    """Write one progress line on stderr (above the live bars in a terminal)."""
    with _lock:
        _last_output[0] = time.monotonic()
        stream = sys.stderr
        if any(t.bar is not None for t in _stack):
            from tqdm.auto import tqdm

            tqdm.write(text, file=stream)
        else:
            print(text, file=stream, flush=True)


class Task:
    """A piece of work being reported: ``update`` it as units finish, ``log`` a line per finished unit.

    Use :func:`task` to make one. ``total`` may be ``None`` (a stage whose length is unknown).
    """

    def __init__(self, desc: str, total: float | None = None, unit: str = "step", mode_: str = "lines",
                 summary_after: float | None = None):
        self.desc, self.total, self.unit, self.mode = desc, total, unit, mode_
        self.done: float = 0
        self.status: dict[str, Any] = {}
        self.summary_after = summary_after
        self.t0 = time.perf_counter()
        self.bar = None
        if mode_ == "bar":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True, file=sys.stderr,
                            delay=0.5 if total is None else 0.0, disable=False,
                            bar_format="{desc}: running, elapsed {elapsed}" if total is None else None)

    # ------------------------------------------------------------------ what the work reports
    def update(self, n: float = 1, **status: Any) -> None:
        """``n`` more units done; ``status`` (e.g. ``loss=0.31``) shows on the bar and in heartbeat lines."""
        self.done += n
        if status:
            self.status.update(status)
        if self.bar is not None:
            if status:
                self.bar.set_postfix({k: _fmt(v) for k, v in self.status.items()}, refresh=False)
            self.bar.update(n)

    def set(self, **status: Any) -> None:
        """Change the shown status without counting units."""
        self.update(0, **status)

    def log(self, text: str) -> None:
        """Write a line about a finished unit (both in a terminal and in a log file; not when off)."""
        if self.mode != "off":
            write(text)

    # ------------------------------------------------------------------ time
    @property
    def elapsed(self) -> float:
        """Seconds since the task started."""
        return time.perf_counter() - self.t0

    @property
    def eta(self) -> float | None:
        """Seconds left, extrapolated from the units done so far (``None`` when unknown)."""
        if not self.total or self.done <= 0:
            return None
        return self.elapsed * max(0.0, self.total - self.done) / self.done

    def timing(self) -> str:
        """``elapsed m:ss, ETA m:ss``."""
        eta = self.eta
        return f"elapsed {duration(self.elapsed)}" + (f", ETA {duration(eta)}" if eta is not None else "")

    def heartbeat(self) -> str:
        """The line written when a log file would otherwise stay silent."""
        if self.total:
            what = f"{_fmt(self.done)}/{_fmt(self.total)} {plural(self.unit)}"
        else:
            what = "running"
        status = "".join(f", {k} {_fmt(v)}" for k, v in self.status.items())
        return f"{self.desc}: {what}{status}, {self.timing()}"

    def close(self) -> None:
        """Same as :meth:`end`."""
        self.end()

    def end(self, summary: bool = True) -> None:
        """Stop reporting (idempotent); a slow task with ``summary_after`` says how long it took."""
        with _lock:
            if self in _stack:
                _stack.remove(self)
            elif self.mode != "off" and self.bar is None:
                return
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if summary and self.summary_after is not None and self.elapsed >= self.summary_after and self.mode != "off":
            write(f"{self.desc}: done in {duration(self.elapsed) if self.elapsed >= 60 else f'{self.elapsed:.1f} s'}")


def plural(noun: str) -> str:
    """``noun`` in the plural (``step`` -> ``steps``, ``batch`` -> ``batches``)."""
    return noun + ("es" if noun.endswith(("s", "sh", "ch", "x", "z")) else "s")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v == int(v) and abs(v) < 1e15:
            return f"{int(v):,}"
        return f"{v:.4f}" if abs(v) < 10 else f"{v:,.1f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


def begin(desc: str, total: float | None = None, unit: str = "step", enabled: bool | None = None,
          summary_after: float | None = None) -> Task:
    """Start reporting a piece of work; :meth:`Task.end` it when done (or use :func:`task`, which does).

    Args:
        desc: what is being done (``"train conv4"``, ``"gfs selection"``).
        total: units of work in all (``None``: unknown; heartbeat lines then say "running").
        unit: the unit's name, singular.
        enabled: ``False`` silences this task; ``None`` follows the current :func:`session`.
        summary_after: write ``desc: done in ...`` at the end when the task took at least this long (s).
    """
    t = Task(desc, total, unit, mode(enabled), summary_after)
    if t.mode != "off":
        with _lock:
            _stack.append(t)
            _start_ticker()
    return t


@contextmanager
def task(desc: str, total: float | None = None, unit: str = "step", enabled: bool | None = None,
         summary_after: float | None = None) -> Iterator[Task]:
    """Report a piece of work while the block runs (arguments as :func:`begin`)."""
    t = begin(desc, total, unit, enabled, summary_after)
    try:
        yield t
    except BaseException:  # an error or an interrupt: no "done in ..." line before its message
        t.end(summary=False)
        raise
    t.end()


@contextmanager
def scope() -> Iterator[None]:
    """End every task begun inside the block and still running when it exits (say, after an exception)."""
    with _lock:
        depth = len(_stack)
    try:
        yield
    finally:
        with _lock:
            stray = _stack[depth:]
        for t in reversed(stray):
            t.end(summary=False)


def stage(desc: str, enabled: bool | None = None, summary_after: float | None = 2.0):
    """A step of unknown length (``with stage("timing latency"): ...``); says how long it took when slow."""
    return task(desc, None, "step", enabled, summary_after)


def _start_ticker() -> None:
    thread = _ticker[0]
    if thread is not None and thread.is_alive():
        return
    thread = threading.Thread(target=_tick, name="netsift-progress", daemon=True)
    _ticker[0] = thread
    thread.start()


def _tick() -> None:
    """Background heartbeat: in a log file, a line for the innermost task after ``interval()`` s of silence;
    in a terminal, a refresh of the live bars every second (so elapsed times move during long steps)."""
    while True:
        time.sleep(0.25)
        with _lock:
            if not _stack:
                _ticker[0] = None
                return
            inner = _stack[-1]
            now = time.monotonic()
            if inner.mode == "lines" and now - _last_output[0] >= interval():
                write(inner.heartbeat())
            elif inner.mode == "bar" and now - _last_output[0] >= 1.0:
                _last_output[0] = now
                for t in _stack:
                    if t.bar is not None:
                        t.bar.refresh()


def observed(fn: Callable) -> Callable:
    """Decorator of the pipelines: their ``progress`` argument (``None``: as the caller's :func:`session`)
    turns progress on or off for everything they call, and their ``log_with`` trackers are checked before any
    work starts (a missing package is a one-line error)."""
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        bound = sig.bind_partial(*args, **kwargs)
        if bound.arguments.get("log_with") is not None:
            from .tracking import check_trackers

            check_trackers(bound.arguments["log_with"])
        with session(bound.arguments.get("progress")):
            return fn(*args, **kwargs)

    return wrapper
