"""``netsift.train``: dense training (the starting point of pruning, and the ceiling of the comparisons)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..checks import checked
from ..config import RUN_FIELDS, RunOptions, TrainConfig
from ..measure import check_threads
from ..results import Result
from ..training import fit
from ..models.network import arch_of
from ..runner import SOURCE_FIELDS, Job, Outcome, RunContext, Source, Start, config_of, execute, split_options

TRAIN_FIELDS = frozenset(f.name for f in dataclasses.fields(TrainConfig))


@dataclass
class TrainSpec:
    """A dense training run: the source, the loop settings and the run options."""

    source: Source
    loop: TrainConfig = field(default_factory=TrainConfig)
    run: RunOptions = field(default_factory=RunOptions)
    latency_threads: int | None = 1
    command = "train"
    reads_runs = False
    method = "dense"

    def __post_init__(self):
        check_threads(self.latency_threads, "latency_threads")
        self.loop = self.loop.resolved()

    @property
    def cpu(self) -> bool:
        """Whether the run stays on the CPU."""
        return self.loop.cpu

    def prepare(self, start: Start) -> Job:
        """The network trains as it comes."""
        return Job(start.net, lambda ctx: self._body(ctx), {"train": dataclasses.asdict(self.loop)})

    def _body(self, ctx: RunContext) -> Outcome:
        net, opts = ctx.start.net, ctx.options
        fitted = fit(net, ctx.start.bundle, self.loop, ctx.run_dir, seed=ctx.start.seed, resume=opts.resume,
                     desc=f"train {arch_of(net)[0]}", log_with=opts.log_with)
        fields = {**ctx.measure(net, latency_threads=self.latency_threads), "epochs_run": len(fitted.history),
                  "best_epoch": fitted.best_epoch, "stopped_early": fitted.stopped_early,
                  "train_images_per_s": fitted.images_per_s}
        return Outcome(net, fields)


@checked  # wrong argument types (nested configs and keyword options too) are one line
def train(model: nn.Module | str, data: Any, config: TrainConfig | dict | None = None, *,
          run: RunOptions | None = None, latency_threads: int | None = 1, **options: Any) -> Result:
    """Train ``model`` on ``data`` with the shared loop; keep the best validation epoch.

    Args:
        model: an ``nn.Module``, or a zoo name (``"conv4"``, ``"tv:resnet18"``) built for the data from ``seed``.
        data: a data-set name, a :class:`~netsift.data.DataBundle`, or ``{"train": ..., "val": ..., "test": ...}``
            of ``DataLoader``\\ s or data sets (``val`` optional: carved from train).
        config: loop settings (a :class:`~netsift.config.TrainConfig` or a dict of its fields); or give them as
            keyword ``options`` (``epochs=5, lr=0.1, ...``).
        run: the run-level settings (:class:`~.spec.RunOptions`: ``seed``, ``data_seed``, ``out``,
            ``overwrite``, ``resume``, ``force``, ``progress``, ``log_with``); or give them as keyword options.
        latency_threads: threads for the latency measurement (``None``: skip it; 0: torch's default).
        options: loop settings, run options, and ``width`` (of a zoo model), ``image_size`` (feed the images
            resized to this side in px, 1-1024, recorded in ``config.json`` so ``prune`` and ``evaluate`` of the
            run use it too) and ``weights`` (a local state-dict file the zoo / ``tv:`` network starts from; its
            name and SHA-256 go to ``config.json`` and ``result.json``).

    With ``out`` the run folder holds ``config.json``, ``metrics.jsonl``, checkpoints, the model and
    ``result.json``; ``log_with`` trackers get the settings and every epoch's metrics (in ``out/logs``).

    Returns:
        a :class:`~netsift.results.Result`: ``.model`` is the trained network.
    """
    loop, given, source = split_options(options, TRAIN_FIELDS, RUN_FIELDS, SOURCE_FIELDS)
    return execute(TrainSpec(Source(model, data, **source), config_of(TrainConfig, config, "config", **loop),
                             run_options(run, given), latency_threads))


def run_options(run: RunOptions | None, given: dict) -> RunOptions:
    """``run`` with the run options given as keywords on top (one or the other may be empty)."""
    return config_of(RunOptions, run, "run", **given)


__all__ = ["TrainSpec", "train", "run_options"]
