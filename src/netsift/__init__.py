"""netsift: find small, effective subnetworks inside large neural networks.

Two published methods and the measurement around them, on your own ``nn.Module`` and data::

    import netsift
    result = netsift.prune(model, {"train": train_loader, "test": test_loader}, method="gfs", macs=0.5)
    result.model        # the pruned network, a plain nn.Module
    result.test_acc     # and every field of result.json

* :func:`extract`: Gumbel-Softmax weight masks on untrained networks (ASLP parametrisation + Smart Rescale).
* :func:`prune`: Greedy Forward Selection of neurons on trained networks, physical removal and fine-tuning.
* :func:`train`: the dense training every comparison starts from.
* :func:`evaluate` and :func:`export`: measure a saved network again (on its data or yours); write it as a compact
  file, safetensors or ONNX. :func:`load_compact` rebuilds a compact file (into your module: ``model=MyNet()``).

Importing ``netsift`` is cheap: torch loads on first use of these names.
"""

from __future__ import annotations

from .version import __version__

_LAZY = {
    "train": "netsift.pipelines", "extract": "netsift.pipelines", "prune": "netsift.pipelines",
    "evaluate": "netsift.pipelines", "export": "netsift.pipelines", "Result": "netsift.results", "DataBundle": "netsift.data",
    "load_data": "netsift.data", "load_model": "netsift.rundir", "load_weights": "netsift.rundir",
    "save_model": "netsift.rundir", "build_model": "netsift.models", "NetsiftError": "netsift.errors",
    "TrainConfig": "netsift.config", "load_compact": "netsift.masks.compact",
}

_CHECKED = {"load_data", "load_model", "load_weights", "save_model", "build_model"}
"""Exported helpers whose arguments are checked by name (the pipelines check their own)."""

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        if name in _CHECKED:  # wrong argument types are one line (netsift.checks)
            from .checks import checked

            value = checked(value)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'netsift' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
