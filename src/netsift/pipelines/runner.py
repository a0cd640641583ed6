"""The one runner every run type goes through: checks, devices, the run folder, measurement and the result.

A run type's spec (train, extract, prune) supplies only what is its own: :meth:`prepare` turns the resolved
:class:`~.source.Start` into a :class:`Job` (the network the run works on and its ``config.json`` sections),
and the job's ``body`` does the work and returns an :class:`Outcome` (the network it produced and its own
``result.json`` fields). Everything else happens here, in the same order for every command.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from torch import nn

from .. import distributed, progress, rundir
from ..measure import measure
from ..results import Result
from .source import Start, arch_of, check_classes, data_config, image_side, resolve
from .spec import RunOptions, Source


@dataclass
class Outcome:
    """What a run's body produced: the network, its result fields, and the files it adds to the run folder."""

    model: nn.Module
    fields: dict
    manifest: dict | None = None  # saved with the model (default: the model's own)
    artifacts: Callable[[Path], dict] | None = None  # writes more files into the run folder; returns result fields


@dataclass
class RunContext:
    """What a body may use: the start, the options and the open run folder (``None`` without ``out``)."""

    start: Start
    options: RunOptions
    run: rundir.RunFolder | None

    @property
    def run_dir(self) -> Path | None:
        """Where the run writes now (``None`` for an in-memory run)."""
        return self.run.path if self.run is not None else None

    def measure(self, model: nn.Module, **kwargs: Any) -> dict:
        """Every ``result.json`` measurement of ``model`` on the run's data (:func:`netsift.measure.measure`)."""
        return measure(model, self.start.bundle, **kwargs)


@dataclass
class Job:
    """A prepared run: the network it works on, its ``config.json`` sections and its body."""

    net: nn.Module
    body: Callable[[RunContext], Outcome]
    sections: dict = field(default_factory=dict)  # train / mask / prune
    resume_ignores: tuple[str, ...] = ("train.epochs",)


class Spec(Protocol):
    """What a run type's spec provides to :func:`execute`."""

    command: str
    source: Source
    run: RunOptions
    reads_runs: bool  # the source may be a run folder

    @property
    def method(self) -> str: ...  # noqa: D102

    @property
    def cpu(self) -> bool: ...  # noqa: D102

    def prepare(self, start: Start) -> Job: ...  # noqa: D102


def execute(spec: Spec) -> Result:
    """Run ``spec``: resolve its source, prepare it, open its run folder, run its body, measure and record."""
    opts = spec.run
    if opts.log_with is not None:
        from ..tracking import check_trackers

        check_trackers(opts.log_with)  # a missing tracker package: one line, before any work
    with progress.session(opts.progress), distributed.collectives_reported():
        return _execute(spec, opts)


def _execute(spec: Spec, opts: RunOptions) -> Result:
    t0 = time.perf_counter()
    distributed.setup(spec.cpu)  # under torchrun / accelerate launch: join the other processes
    folder = {"overwrite": opts.overwrite, "resume": opts.resume, "force": opts.force}
    if opts.folder is not None:
        rundir.precheck(opts.folder, sources=spec.source.reads, **folder)
    start = resolve(spec.source, opts, runs=spec.reads_runs)
    check_classes(start.net, start.bundle)
    job = spec.prepare(start)
    config = rundir.run_config(spec.command, spec.method, start.seed, start.data_seed,
                               rundir.describe_model(job.net), data_config(start.bundle), source=start.source_dir,
                               weights=start.weights, **{"train": None, **job.sections})
    with rundir.open_run(opts.out, config, sources=[start.source_dir], resume_ignores=job.resume_ignores,
                         **folder) as run:
        arch, width = arch_of(job.net)
        outcome = job.body(RunContext(start, opts, run))
        saved = distributed.on_main(lambda: _save(run, outcome), "saving the model") if run is not None else {}
        bundle = start.bundle
        result = {"command": spec.command, "method": spec.method, "model": arch, "width": width,
                  "data": bundle.name, "image_size": image_side(bundle), "weights": start.weights,
                  "seed": start.seed, "data_seed": start.data_seed, **outcome.fields, **saved,
                  "wall_s": time.perf_counter() - t0}
        result = distributed.on_main(lambda: rundir.write_result(run, result), "writing result.json")
        return Result.from_dict(result, model=outcome.model)


def _save(run: rundir.RunFolder, outcome: Outcome) -> dict:
    rundir.save_model(run.path, outcome.model, outcome.manifest)
    return outcome.artifacts(run.path) if outcome.artifacts is not None else {}
