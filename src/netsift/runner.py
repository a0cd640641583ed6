"""The one runner every run type goes through, and what a run is made of.

* :class:`Source`: the network and the data a run starts from (a module, a zoo name or a run folder; a data-set
  name, a config, a bundle or the user's loaders), resolved into a :class:`Start` by :func:`resolve`.
* :class:`~netsift.config.RunOptions`: the run-level settings every command shares (seeds, run folder, progress,
  trackers).
* A run type's spec (:class:`~netsift.pipelines.train.TrainSpec`, :class:`~netsift.pipelines.extract.ExtractSpec`,
  :class:`~netsift.pipelines.prune.PruneSpec`) adds its method's and loop's settings; the CLI builds it from its
  flags and the Python API from its arguments, and :func:`execute` runs it.

The spec supplies only what is its own: ``prepare`` turns the :class:`Start` into a :class:`Job` (the network the
run works on and its ``config.json`` sections), and the job's ``body`` does the work and returns an
:class:`Outcome` (the network it produced and its own ``result.json`` fields). Everything else happens here, in
the same order for every command: checks, devices, the run folder, measurement and the result.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from torch import nn

from . import distributed, progress, rundir
from .config import RunOptions, check_width
from .data import DataBundle, as_bundle
from .errors import NetsiftError
from .measure import measure
from .models.network import arch_of, check_classes, check_weights, load_weights, network_for
from .results import Result


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


@dataclass
class Start:
    """What a run starts from: the data, the network, the seeds and where they came from."""

    bundle: DataBundle
    net: nn.Module
    seed: int
    data_seed: int
    weights: dict | None = None  # the record of a --weights file (name, SHA-256, adaptations)
    source_dir: str | None = None  # the run folder the network was read from


def resolve(source: Source, opts: RunOptions, runs: bool = False) -> Start:
    """The bundle and the network of ``source``, with its ``--weights`` file loaded (``runs``: a run folder may
    hold the network)."""
    saved = _saved_run(source, runs)
    data, model = source.data, source.model
    if saved is not None:
        data = saved.data_for(source.data, source.image_size)
        model = saved.network()
    data_seed = opts.data_seed if opts.data_seed is not None else saved.data_seed if saved else opts.seed
    weights_path = check_weights(source.weights, model)
    bundle = as_bundle(data, seed=data_seed, image_size=source.image_size)
    if saved is not None:
        saved.check_fits(bundle)
    net = network_for(model, bundle, opts.seed, source.width)
    loaded = load_weights(net, weights_path) if weights_path else None
    return Start(bundle, net, opts.seed, data_seed, loaded, str(saved.path) if saved else None)


def _saved_run(source: Source, runs: bool) -> rundir.SavedRun | None:
    model = source.model
    if not runs or not isinstance(model, (str, Path)):
        return None
    if not rundir.is_run_folder(model):
        if "/" in str(model) or Path(model).exists():
            if not Path(model).exists():
                raise NetsiftError(f"checkpoint {model} does not exist")
            raise NetsiftError(f"{model} is not a run folder with a saved network (model.json missing)")
        if source.data is None:
            raise NetsiftError("give the data to prune on")
        return None
    return rundir.read_run(model)


@dataclass
class Outcome:
    """What a run's body produced: the network, its result fields, and the files it adds to the run folder."""

    model: nn.Module
    fields: dict
    manifest: dict | None = None  # saved with the model (default: the model's own)
    artifacts: Callable[[Path], dict] | None = None  # writes more files into the run folder; returns result fields
    compact: Any = None  # extract: the subnetwork as a compact file holds it (``Result.compact``)


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
    opts = spec.run  # checked when it was made (RunOptions.__post_init__), trackers included
    with progress.session(opts.progress), distributed.collectives_reported():
        return _execute(spec, opts)


def _execute(spec: Spec, opts: RunOptions) -> Result:
    t0 = time.perf_counter()
    distributed.setup(spec.cpu)  # under torchrun / accelerate launch: join the other processes
    folder = {"overwrite": opts.overwrite, "resume": opts.resume, "force": opts.force}
    if opts.folder is not None:
        rundir.check_output_file(opts.folder, spec.command, opts.overwrite,
                                 source=spec.source.model if spec.source.reads else None)  # no folder of runs
        rundir.precheck(opts.folder, sources=spec.source.reads, **folder)
    start = resolve(spec.source, opts, runs=spec.reads_runs)
    check_classes(start.net, start.bundle)
    job = spec.prepare(start)
    config = rundir.run_config(spec.command, spec.method, start.seed, start.data_seed,
                               rundir.describe_model(job.net), start.bundle.record(), source=start.source_dir,
                               weights=start.weights, **{"train": None, **job.sections})
    with rundir.open_run(opts.out, config, sources=[start.source_dir], resume_ignores=job.resume_ignores,
                         **folder) as run:
        arch, width = arch_of(job.net)
        outcome = job.body(RunContext(start, opts, run))
        saved = distributed.on_main(lambda: _save(run, outcome), "saving the model") if run is not None else {}
        bundle = start.bundle
        result = {"command": spec.command, "method": spec.method, "model": arch, "width": width,
                  "data": bundle.name, "image_size": bundle.side, "weights": start.weights,
                  "seed": start.seed, "data_seed": start.data_seed, **outcome.fields, **saved,
                  "wall_s": time.perf_counter() - t0}
        result = distributed.on_main(lambda: rundir.write_result(run, result), "writing result.json")
        out = Result.from_dict(result, model=outcome.model)
        out.compact = outcome.compact  # netsift.export(result, "compact") without a run folder
        return out


def _save(run: rundir.RunFolder, outcome: Outcome) -> dict:
    rundir.save_model(run.path, outcome.model, outcome.manifest)
    return outcome.artifacts(run.path) if outcome.artifacts is not None else {}
