"""The pipelines: :func:`train`, :func:`extract`, :func:`prune`, :func:`evaluate` and :func:`export`.

They are the public Python API (``netsift.train`` etc.) and what every CLI command, benchmark and the demo
runs. Each run type is a small spec (:class:`~.train.TrainSpec`, :class:`~.extract.ExtractSpec`,
:class:`~.prune.PruneSpec`) that the CLI builds from its flags and the Python functions from their arguments,
holding only its body; :func:`netsift.runner.execute` runs any of them. Each returns a
:class:`~netsift.results.Result`; with ``out=`` it also writes a run folder (:mod:`netsift.rundir`).
"""

from ..config import RunOptions
from ..runner import Source, execute
from .evaluate import evaluate
from .export import export
from .extract import ExtractSpec, extract
from .prune import PruneSpec, prune
from .train import TrainSpec, train

__all__ = ["ExtractSpec", "PruneSpec", "RunOptions", "Source", "TrainSpec", "evaluate", "execute", "export",
           "extract", "prune", "train"]
