"""The pipelines: :func:`train`, :func:`extract`, :func:`prune`, :func:`evaluate` and :func:`export`.

They are the public Python API (``netsift.train`` etc.) and what every CLI command, benchmark and the demo
runs: the CLI only parses arguments, calls one of them and prints. Each takes plain PyTorch objects (any
``nn.Module``, ``DataLoader``\\ s or data sets) as well as zoo and data-set names, and returns a
:class:`~netsift.results.Result`; with ``out=`` it also writes a run folder (:mod:`netsift.rundir`).
"""

from .evaluate import evaluate
from .export import export
from .extract import extract
from .prune import prune
from .train import train

__all__ = ["evaluate", "export", "extract", "prune", "train"]
