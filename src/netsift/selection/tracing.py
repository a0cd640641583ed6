"""Tracing a network into Torch-Pruning's dependency graph, with the fixes netsift needs.

* Opaque modules: some modules cannot be traced channel by channel (Swin and MaxViT attention, ShuffleNet's
  channel shuffle). The tracer knows the ones the zoo meets (:data:`KNOWN_OPAQUE`, by class name: nothing is
  imported to know them); :func:`register_opaque` declares others. During tracing each call becomes one
  autograd node from its input to its output. An ``"atomic"`` module is kept whole (:mod:`.groups` leaves out
  every group that reaches it); a ``"transparent"`` one only moves spatial positions (channel ``c`` in is
  channel ``c`` out).
* ``split``/``chunk`` along channels: Torch-Pruning 1.6 misreads their sizes on recent PyTorch; fixed after
  tracing (:func:`_fix_splits`).
* A concatenation whose input channels Torch-Pruning cannot infer (a slice of the network's input) ended its trace
  with a ``TypeError``, and a reshape whose channels it infers as 0 with a ``ZeroDivisionError``; both are now
  left without an index mapping; a chunk along the channels of (B, N, C) tokens gets the mapping a split along
  dimension 1 has (:func:`_patch_index_mappings`).
* :func:`static_index_mapping`: Torch-Pruning re-derives every index mapping of the graph at each
  ``get_pruning_group`` call; while nothing is removed, once per graph is enough (DenseNet: minutes to seconds).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch_pruning as tp
from torch import nn

from ..errors import NetsiftError

KNOWN_OPAQUE: dict[str, str] = {
    "netsift.models.torchvision_models.ChannelShuffle": "atomic",  # ShuffleNet-V2's shuffle, as a module
    "torchvision.models.swin_transformer.ShiftedWindowAttention": "atomic",  # and V2, a subclass
    "torchvision.models.maxvit.RelativePositionalMultiHeadAttention": "atomic",
    "torchvision.models.maxvit.WindowPartition": "transparent",
    "torchvision.models.maxvit.WindowDepartition": "transparent",
}
"""Module classes (``module.qualname``, subclasses included) the tracer treats as single operations:
``"atomic"`` (kept whole) or ``"transparent"``."""

OPAQUE: dict[type, str] = {}
"""Further module classes declared with :func:`register_opaque`."""


def register_opaque(cls: type, kind: str) -> None:
    """Trace every ``cls`` module as one operation (``kind``: ``"atomic"`` or ``"transparent"``)."""
    if kind not in ("atomic", "transparent"):
        raise ValueError(f"kind must be 'atomic' or 'transparent', got {kind!r}")
    OPAQUE[cls] = kind


def opaque_kind(module: nn.Module) -> str | None:
    """``"atomic"`` or ``"transparent"`` when ``module`` is traced as one operation, else ``None``."""
    for cls in type(module).__mro__:
        kind = OPAQUE.get(cls) or KNOWN_OPAQUE.get(f"{cls.__module__}.{cls.__qualname__}")
        if kind is not None:
            return kind
    return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


class _Opaque(torch.autograd.Function):
    """One autograd node from ``x`` to ``fn(x)``: the tracer cannot look inside (never differentiated)."""

    @staticmethod
    def forward(ctx, x, fn):
        with torch.no_grad():
            return fn(x.detach())

    @staticmethod
    def backward(ctx, grad):  # pragma: no cover - tracing only builds the graph
        return None, None


@contextmanager
def _opaque_tracing(model: nn.Module) -> Iterator[dict]:
    """Within the block, opaque modules run as one autograd node; yields ``{grad_fn: (name, kind)}``."""
    seen: dict = {}
    patched = []
    for name, m in model.named_modules():
        kind = opaque_kind(m)
        if kind is None or "forward" in m.__dict__ or any(name.startswith(p + ".") for p, _ in patched):
            continue

        def fwd(x, *args, _m=m, _name=name, _kind=kind, **kwargs):
            out = _Opaque.apply(x, lambda y: type(_m).forward(_m, y, *args, **kwargs))
            if out.grad_fn is not None:
                seen[out.grad_fn] = (_name, _kind)
            return out

        m.forward = fwd
        patched.append((name, m))
    try:
        yield seen
    finally:
        for _, m in patched:
            m.__dict__.pop("forward", None)


def _patch_concat_mapping() -> None:
    """Torch-Pruning 1.6 sums a concatenation's input channels before checking that it could infer them all
    (``None`` for a slice of the network's input, as in a space-to-depth "Focus" stem): a ``TypeError`` ends the
    whole trace. Such a concatenation gets no index mapping, as Torch-Pruning intends a few lines further down."""
    from torch_pruning.dependency import index_mapping

    original = index_mapping.update_concat_index_mapping
    if getattr(original, "netsift_patched", False):
        return

    def update_concat_index_mapping(graph, cat_node):
        try:
            return original(graph, cat_node)
        except TypeError:
            sizes = getattr(getattr(cat_node, "module", None), "concat_sizes", None)
            if sizes is not None and any(c is None for c in sizes):
                return None
            raise

    update_concat_index_mapping.netsift_patched = True
    index_mapping.update_concat_index_mapping = update_concat_index_mapping


def _patch_reshape_mapping() -> None:
    """A reshape whose output channels Torch-Pruning infers as 0 (it reads the network's input through a residual,
    as in timm's SHViT) divided by zero and ended the trace; it gets no index mapping."""
    from torch_pruning.dependency import index_mapping

    reshape = index_mapping.update_reshape_index_mapping
    if getattr(reshape, "netsift_patched", False):
        return

    def update_reshape_index_mapping(graph, reshape_node):
        try:
            return reshape(graph, reshape_node)
        except ZeroDivisionError:
            return None

    update_reshape_index_mapping.netsift_patched = True
    index_mapping.update_reshape_index_mapping = update_reshape_index_mapping


def _patch_index_mappings() -> None:
    """Torch-Pruning's index mappings with netsift's fixes (each patched once per process)."""
    _patch_concat_mapping()
    _patch_reshape_mapping()
    _patch_split_mapping()


def build_graph(model: nn.Module, input_shape: tuple[int, ...], device: str | torch.device = "cpu"
                ) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph of ``model`` traced on one zero sample of ``input_shape``.

    The graph carries ``netsift_opaque``: ``{node: (module name, kind)}`` for the opaque modules.
    """
    _patch_index_mappings()
    was_training = model.training
    model.eval()
    try:
        with _opaque_tracing(model) as seen, torch.enable_grad():
            dg = tp.DependencyGraph().build_dependency(
                model, example_inputs=torch.zeros(1, *input_shape, device=device), verbose=False)
    except Exception as e:  # tracing failures come in many types
        raise NetsiftError(f"cannot trace the model's dependency graph: {_first_line(e)}") from None
    finally:
        model.train(was_training)
    dg.netsift_opaque = {node: seen[node.grad_fn] for node in dg.module2node.values()
                         if getattr(node, "grad_fn", None) in seen}
    if _fix_splits(dg):
        from torch_pruning.dependency import index_mapping

        index_mapping.update_index_mapping(dg)
    return dg


def _fix_splits(dg: tp.DependencyGraph) -> bool:
    """Channel sizes and output order of ``split``/``chunk`` nodes, which Torch-Pruning 1.6 misreads on recent
    PyTorch (it looks for ``_saved_self_sizes``, now ``_saved_self_sym_sizes``) and orders by discovery."""
    changed = False
    for node in dg.module2node.values():
        gf = node.grad_fn
        if node.type != tp.ops.OPTYPE.SPLIT or not hasattr(gf, "_saved_self_sym_sizes"):
            continue
        sizes, dim = list(gf._saved_self_sym_sizes), getattr(gf, "_saved_dim", None)
        if dim is not None and dim >= 2**63:  # a negative dim (chunk(dim=-1)) is saved as an unsigned 64-bit value
            dim -= 2**64
        if dim is None or not -len(sizes) <= dim < len(sizes):
            continue
        dim %= len(sizes)
        last = dim == len(sizes) - 1 > 1 and _channels_last(dg, node, int(sizes[dim]), int(sizes[1]))
        if dim != 1 and not last:
            continue
        total = int(sizes[dim])
        if hasattr(gf, "_saved_split_sizes"):
            chs = [int(c) for c in gf._saved_split_sizes]
        elif hasattr(gf, "_saved_split_size"):
            step = int(gf._saved_split_size)
            chs = [min(step, total - i) for i in range(0, total, step)]
        else:
            continue
        position = {}
        for out in node.outputs:
            nrs = [nr for f, nr in getattr(out.grad_fn, "next_functions", ()) if f is gf]
            position[out] = nrs[0] if len(nrs) == 1 else None
        if any(p is None for p in position.values()):
            continue
        node.outputs.sort(key=lambda o: position[o])
        used = [chs[position[o]] for o in node.outputs]  # outputs nobody reads are not nodes
        if len(used) != len(chs):
            continue
        node.module.split_sizes = chs
        node.module.offsets = [sum(chs[:i]) for i in range(len(chs) + 1)]
        node.module.netsift_last_dim = last
        if last:
            node.enable_index_mapping = True  # Torch-Pruning turns it off for a split along another dim than 1
        changed = True
    return changed


def _channels_last(dg: tp.DependencyGraph, node, along: int, dim1: int) -> bool:
    """Whether a split along the last dimension of a (B, N, C) tensor splits channels: the layer before it
    gives ``along`` channels, and dimension 1 (tokens) is not the same size (that would be ambiguous)."""
    from torch_pruning.dependency import shape_infer

    if along == dim1 or not node.inputs:
        return False
    depth = [0]
    try:
        channels = shape_infer.infer_out_channels_recursively(dg, node.inputs[0], depth)
    except Exception:  # noqa: BLE001 - no inference, no mapping
        return False
    return channels == along


def _patch_split_mapping() -> None:
    """Torch-Pruning maps a split's channels only along dimension 1; a chunk of a (B, N, C) tensor along its
    channels (a gated MLP's ``fc1(x).chunk(2, dim=-1)``) got no mapping, so the second half's channels seemed to
    reach past the next layer's inputs. :func:`_fix_splits` marks such splits (``netsift_last_dim``); they get the
    same offsets mapping as a split along dimension 1."""
    from torch_pruning.dependency import index_mapping

    original = index_mapping.update_split_index_mapping
    if getattr(original, "netsift_patched", False):
        return

    def update_split_index_mapping(graph, split_node):
        if not getattr(getattr(split_node, "module", None), "netsift_last_dim", False):
            return original(graph, split_node)
        offsets = split_node.module.offsets
        for i, out_node in enumerate(split_node.outputs):
            for dep in split_node.dependencies:
                if dep.target == out_node and split_node.enable_index_mapping:
                    dep.index_mapping[0] = index_mapping._SplitIndexMapping(offset=offsets[i: i + 2], reverse=False)
                    break
            for dep in out_node.dependencies:
                if dep.target == split_node and split_node.enable_index_mapping:
                    dep.index_mapping[0] = index_mapping._SplitIndexMapping(offset=offsets[i: i + 2], reverse=True)
                    break

    update_split_index_mapping.netsift_patched = True
    index_mapping.update_split_index_mapping = update_split_index_mapping


@contextmanager
def static_index_mapping() -> Iterator[None]:
    """Within the block, each graph's index mappings are computed once.

    Torch-Pruning recomputes every index mapping of the whole graph at each ``get_pruning_group`` call, which
    makes listing or scoring all groups quadratic in the graph's size (minutes on DenseNet-161). While no
    channel is removed the mappings cannot change, so once per graph is enough.
    """
    from torch_pruning.dependency import index_mapping

    real = index_mapping.update_index_mapping
    done: set[int] = set()

    def once(graph) -> None:
        if id(graph) not in done:
            done.add(id(graph))
            real(graph)

    index_mapping.update_index_mapping = once
    try:
        yield
    finally:
        index_mapping.update_index_mapping = real


class WalkTooLong(RuntimeError):
    """Torch-Pruning's walk from one root layer went past what any layer of the network could hold."""


@contextmanager
def bounded_walks(model: nn.Module, dg: tp.DependencyGraph) -> Iterator[None]:
    """Within the block, a Torch-Pruning group walk that runs away raises :class:`WalkTooLong` instead of hanging.

    On some attention blocks (timm's EfficientViT-M, EfficientFormerV2, FocalNet) Torch-Pruning maps a layer's
    channels through a reshape onto spatial positions: the index lists grow with each hop (192 channels became
    103,680 indices) and the walk from one root ran for hours. A walk is stopped, deterministically, as soon as
    an index list is longer than twice the largest dimension of any parameter (no layer has that many channels)
    or the group holds more steps than the graph could need (``4 ×`` its nodes ``+ 1000``); its root is then
    left whole with the reason.
    """
    from torch_pruning.dependency import graph as tp_graph

    widest = 2 * max((max(p.shape) for p in model.parameters() if p.dim()), default=1)
    steps = 4 * len(dg.module2node) + 1000
    real = tp_graph.Group

    class Bounded(real):
        def add_dep(self, dep, idxs):  # noqa: D102 - Torch-Pruning's method, bounded
            if len(idxs) > widest:
                raise WalkTooLong(f"Torch-Pruning maps its channels onto {len(idxs):,} indices, more than any "
                                  "layer holds")
            if len(self._group) >= steps:
                raise WalkTooLong(f"Torch-Pruning's dependency walk did not settle within {steps:,} steps")
            super().add_dep(dep, idxs)

    tp_graph.Group = Bounded
    try:
        yield
    finally:
        tp_graph.Group = real
