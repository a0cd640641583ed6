"""Channel groups: which output channels of a network can be selected, found on Torch-Pruning's dependency graph.

A :class:`ChannelGroup` is a set of ``N`` coupled channels (one conv's filters with its BN; or a whole residual
stream, pruned together across the blocks that add into it; depthwise convolutions follow their input). Its
*consumers* are the Conv2d/Linear layers that read the channels with weights: masking a channel at every
consumer's input is exactly removing it, and scaling a consumer's input by ``N/n`` is exactly multiplying the
consumer's weight columns by ``N/n`` (how the rescale is folded in at removal, see :mod:`.removal`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import Tensor, nn

from ..errors import NetsiftError


@dataclass
class Consumer:
    """A layer reading a group's channels: ``root_of[i]`` is the group channel feeding input index ``i``."""

    name: str
    module: nn.Module
    root_of: Tensor  # (in_features,) long, -1 where the input is not from this group


@dataclass
class ChannelGroup:
    """``size`` coupled channels rooted at layer ``name``; selecting keeps a subset of ``range(size)``."""

    name: str
    root: nn.Module
    size: int
    consumers: list[Consumer]
    members: list[str] = field(default_factory=list)  # every layer whose out channels are in the group
    order: int = 0  # position of the root in the forward pass

    def __repr__(self) -> str:
        return f"ChannelGroup({self.name}, N={self.size}, consumers={[c.name for c in self.consumers]})"


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels


def output_layers(model: nn.Module) -> list[nn.Module]:
    """The layers producing the logits (never pruned): the last Linear, or the last Conv2d if there is none."""
    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not last:
        last = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return last[-1:]


def build_graph(model: nn.Module, input_shape: tuple[int, ...]) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph of ``model`` traced on one zero sample of ``input_shape``."""
    was_training = model.training
    model.eval()
    try:
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(1, *input_shape))
    except Exception as e:  # tracing failures come in many types
        raise NetsiftError(f"cannot trace the model's dependency graph: {str(e).splitlines()[0]}") from None
    finally:
        model.train(was_training)
    return dg


def _execution_order(model: nn.Module, input_shape: tuple[int, ...]) -> dict[nn.Module, int]:
    order: dict[nn.Module, int] = {}
    def hook(mod, inp):
        order.setdefault(mod, len(order))

    hooks = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return order


def find_groups(model: nn.Module, input_shape: tuple[int, ...], dg: tp.DependencyGraph | None = None,
                min_size: int = 2, ignored_layers: list[nn.Module] | None = None) -> list[ChannelGroup]:
    """Every prunable channel group of ``model``, in forward order (the logits layer is never pruned).

    ``ignored_layers`` keep their output channels, as in Torch-Pruning (and so does every layer coupled to one).

    Raises:
        NetsiftError: the model has no prunable channel group.
    """
    dg = dg or build_graph(model, input_shape)
    names = {m: n for n, m in model.named_modules()}
    exec_order = _execution_order(model, input_shape)
    groups: list[ChannelGroup] = []
    for group in dg.get_all_groups(ignored_layers=output_layers(model) + list(ignored_layers or []),
                                  root_module_types=[nn.Conv2d, nn.Linear]):
        root = group[0].dep.target.module
        size = len(group[0].idxs)
        if size < min_size:
            continue
        consumers: dict[nn.Module, Consumer] = {}
        members: list[str] = []
        for item in group.items:
            dep, mod = item.dep, item.dep.target.module
            if not isinstance(mod, (nn.Conv2d, nn.Linear)):
                continue
            if dg.is_out_channel_pruning_fn(dep.handler) or (_is_depthwise(mod) and dep.handler in (
                    tp.prune_depthwise_conv_in_channels, tp.prune_depthwise_conv_out_channels)):
                if names[mod] not in members:
                    members.append(names[mod])
                continue
            if dg.is_in_channel_pruning_fn(dep.handler) and not _is_depthwise(mod):
                n_in = mod.in_channels if isinstance(mod, nn.Conv2d) else mod.in_features
                c = consumers.setdefault(mod, Consumer(names[mod], mod, torch.full((n_in,), -1, dtype=torch.long)))
                for i, r in zip(item.idxs, item.root_idxs):
                    if r is not None:
                        c.root_of[i] = r
        if not consumers:
            continue
        modules = dict(model.named_modules())
        order = min(exec_order.get(modules[n], 10**9) for n in members) if members else exec_order.get(root, 10**9)
        groups.append(ChannelGroup(names[root], root, size, list(consumers.values()), members, order))
    if not groups:
        raise NetsiftError("the model has no prunable channel groups (nothing between its input and logits "
                           "can lose channels)")
    groups.sort(key=lambda g: g.order)
    return groups
