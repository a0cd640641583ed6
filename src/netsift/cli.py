"""The ``netsift`` command line: parses arguments and hands each subcommand to its module in ``commands/``.

Errors caused by the user's input (:class:`~netsift.errors.NetsiftError`) print as one line on stderr with
exit status 2; an interrupted run exits with 130 (143 for SIGTERM) and keeps its last checkpoint. Building the
parser imports no torch (the command modules, method declarations, zoo and data-set lists are torch-free), so ``--help``,
``--version``, ``models`` and ``datasets`` answer at once; a command imports torch when it runs. Progress
goes to stderr (:mod:`netsift.progress`); ``--quiet`` silences it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from . import __version__
from .errors import NetsiftError

COMMANDS = ["train", "eval", "models", "datasets", "demo", "extract", "export", "prune", "report"]
"""Subcommands, each a module ``netsift.commands.<name>`` with ``add_parser(subparsers)`` and ``run(args)``."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, like every other netsift error
        raise NetsiftError(message)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every subcommand."""
    parser = _Parser(prog="netsift", description="Find small, effective subnetworks inside neural networks.")
    parser.add_argument("--version", action="version", version=f"netsift {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        importlib.import_module(f".commands.{name.replace('-', '_')}", __package__).add_parser(sub)
        sub.choices[name].add_argument("-q", "--quiet", action="store_true",
                                       help="no progress output (errors still print)")
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an interrupt: it ends a run exactly as Ctrl-C does (the last checkpoint is kept)."""


def _on_sigterm(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``netsift`` console script; returns the exit status.

    SIGTERM ends a command as Ctrl-C does (one line, the last checkpoint kept, exit status 143), in the main
    thread and where nobody else handles it; the earlier handler is put back when the command returns."""
    import signal
    import threading

    old = signal.getsignal(signal.SIGTERM)
    ours = threading.current_thread() is threading.main_thread() and old in (signal.SIG_DFL, None)
    if ours:
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _main(sys.argv[1:] if argv is None else argv)
    finally:
        if ours:
            signal.signal(signal.SIGTERM, old)


RESUMABLE = ("train", "extract", "prune")
"""Commands whose interrupted run continues with ``--resume`` (the others write each file atomically)."""


def _main(argv: list[str]) -> int:
    args = None
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not args.command:
            parser.print_help()
            return 2
        from .env import check_all

        check_all()  # every NETSIFT_* variable, before any work (a bad value is one line)
        if os.environ.get("WORLD_SIZE", "1") != "1":  # under torchrun / accelerate launch
            from .distributed import cli_runs_here

            if not cli_runs_here(args.command):
                return 0
        from . import progress
        from .tracking import check_trackers

        check_trackers(getattr(args, "log_with", None))  # a missing tracker package: one line, before torch loads
        with progress.session(not args.quiet), progress.scope():
            # heartbeat lines from the start (importing torch alone can take seconds); a run of 10 s or more ends
            # with "netsift COMMAND: done in ..." in a log file
            with progress.stage(f"netsift {args.command}", summary_after=10.0):
                return int(args.run(args) or 0)
    except NetsiftError as e:
        if not getattr(e, "quiet", False):  # the main process's error, mirrored on the others: printed once
            print(f"netsift: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C (130) or SIGTERM (143): the same ending, one line
        what = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        resumable = getattr(args, "command", None) in RESUMABLE or args is None
        after = "the last checkpoint is kept (continue with --resume)" if resumable else "no file was left half-written"
        print(f"netsift: {what}; {after}", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as e:  # a file system refusing a write or a read (full disk, permissions): one line too
        where = f": {e.filename}" if e.filename else ""
        print(f"netsift: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
