"""The channel-selection methods, one declaration each: what ``--method`` takes, a one-line summary, the
method's own options and its defaults for shared settings. Torch-free, so that ``--help`` and the settings'
validation need no torch; each method's implementation is the module named by ``module`` (``select`` and,
optionally, ``check``), loaded on first use.

A new method: one implementation file in ``netsift/selection/`` and one :class:`SelectionMethod` in :data:`METHODS`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from ..config import Option


@dataclass(frozen=True)
class SelectionMethod:
    """A channel-selection method.

    Attributes:
        name: what ``--method`` takes.
        summary: one line for ``--help`` and the docs.
        module: the implementation, ``netsift.selection.<module>``. It defines
            ``select(ctx, **options) -> Selection`` and may define ``check(ctx)``, which raises a one-line error
            when the method cannot handle the network.
        options: settings only this method has, by name (each becomes a CLI flag).
        defaults: the method's defaults for shared :class:`~netsift.selection.PruneConfig` settings left unset.
    """

    name: str
    summary: str
    module: str
    options: dict[str, Option] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)

    @property
    def implementation(self):
        """The method's module (imported on first use)."""
        return importlib.import_module(f".{self.module}", __package__)

    @property
    def select(self) -> Callable:
        """``select(ctx, **options) -> Selection`` of the implementation."""
        return self.implementation.select

    @property
    def check(self) -> Callable | None:
        """``check(ctx)`` of the implementation, or ``None``."""
        return getattr(self.implementation, "check", None)


METHODS: dict[str, SelectionMethod] = {m.name: m for m in (
    SelectionMethod(
        name="gfs",
        summary="Greedy Forward Selection (Ye et al. 2020): add the channel whose addition lowers the loss most",
        module="gfs",
        options={"replacement": Option(False, "theory variant with replacement (multiset, Frank-Wolfe step "
                                              "1/(n+1))", bool)},
    ),
    SelectionMethod(name="backward", module="backward",
                    summary="backward elimination: remove the channel whose removal raises the loss least"),
    SelectionMethod(name="l1", module="l1",
                    summary="L1 norm of each channel's weights across coupled layers (Li et al. 2017)"),
    SelectionMethod(name="taylor", module="taylor",
                    summary="first-order Taylor importance |w * dL/dw| (Molchanov et al.)"),
    SelectionMethod(name="bn-scale", module="bn_scale",
                    summary="|gamma| of each channel's batch norm (network slimming, Liu et al.)"),
    SelectionMethod(name="random", module="random_select",
                    summary="random channels (the floor every method must beat)"),
)}
"""Selection methods by the name ``netsift prune --method`` takes."""
