"""Measurement: accuracy, density, parameter counts, MACs (``torch.utils.flop_counter``) and CPU latency."""

from __future__ import annotations

import copy
import statistics
import time
from contextlib import contextmanager
from typing import Iterable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .models import prunable_layers


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device | str | None = None) -> dict[str, float]:
    """Accuracy and mean cross-entropy of ``model`` (in eval mode) over ``loader``."""
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    correct, total, loss = 0, 0, 0.0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        out = model(x)
        loss += nn.functional.cross_entropy(out.float(), y, reduction="sum").item()
        correct += (out.argmax(1) == y).sum().item()
        total += len(y)
    model.train(was_training)
    if total == 0:
        return {"acc": float("nan"), "loss": float("nan")}
    return {"acc": correct / total, "loss": loss / total}


def layer_table(model: nn.Module) -> list[dict]:
    """Name, weight shape, density and kept/total weights of each Linear and Conv2d layer."""
    rows = []
    for name, layer in prunable_layers(model):
        w = layer.weight.detach()
        kept = int((w != 0).sum())
        rows.append({"name": name, "shape": list(w.shape), "density": kept / w.numel(), "kept": kept,
                     "total": w.numel()})
    return rows


def density(model: nn.Module) -> float:
    """Fraction of prunable weights (Linear and Conv2d) that are non-zero."""
    rows = layer_table(model)
    total = sum(r["total"] for r in rows)
    return sum(r["kept"] for r in rows) / total if total else 1.0


def count_params(model: nn.Module) -> tuple[int, int]:
    """(non-zero, total) parameters of the network as it computes.

    A parametrised weight (a masked one, say) counts as its effective tensor; the parametrisation's own
    tensors (mask logits, scores, the frozen original) do not count.
    """
    from torch.nn.utils.parametrize import ParametrizationList

    inside = {id(m) for pl in model.modules() if isinstance(pl, ParametrizationList) for m in pl.modules()}
    nonzero = total = 0
    for module in model.modules():
        if id(module) in inside:
            continue
        tensors = [p.detach() for p in module.parameters(recurse=False)]
        if hasattr(module, "parametrizations"):
            tensors += [getattr(module, name).detach() for name in module.parametrizations.keys()]
        for t in tensors:
            nonzero += int((t != 0).sum())
            total += t.numel()
    return nonzero, total


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass of one sample, from ``torch.utils.flop_counter``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.zeros(1, *input_shape, device=device))
    model.train(was_training)
    return int(counter.get_total_flops() // 2)


@torch.no_grad()
def sparse_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """MACs if zero weights were skipped: each layer's dense MACs scaled by its weight density."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    layers = dict(prunable_layers(model))
    per_layer: dict[str, int] = {}
    hooks = []
    for name, layer in layers.items():
        def hook(mod, inp, out, name=name):
            w = mod.weight
            if isinstance(mod, nn.Conv2d):
                per_pos = w.shape[1] * w.shape[2] * w.shape[3]
                macs = out.shape[1] * out.shape[2] * out.shape[3] * per_pos
            else:
                macs = w.shape[0] * w.shape[1] * (out.numel() // out.shape[-1] // out.shape[0])
            per_layer[name] = int(macs * float((w != 0).float().mean()))
        hooks.append(layer.register_forward_hook(hook))
    try:
        model(torch.zeros(1, *input_shape, device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return sum(per_layer.values())


@contextmanager
def num_threads(n: int | None):
    """Temporarily set ``torch``'s intra-op thread count."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(old)


@torch.no_grad()
def latency(model: nn.Module, input_shape: tuple[int, ...], batch_size: int = 1, repeats: int = 30,
            warmup: int = 5, threads: int | None = None) -> dict:
    """Median CPU wall time of a forward pass in ms (inference mode), with the batch size and thread count."""
    was_training = model.training
    model.eval()
    on_cpu = next(model.parameters()).device.type == "cpu"
    model_cpu = model if on_cpu else copy.deepcopy(model).cpu()  # leave a GPU model where it is
    x = torch.randn(batch_size, *input_shape)
    with num_threads(threads) as used, torch.inference_mode():
        for _ in range(warmup):
            model_cpu(x)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model_cpu(x)
            times.append((time.perf_counter() - t0) * 1000)
    model.train(was_training)
    return {"median_ms": statistics.median(times), "batch_size": batch_size, "threads": used, "repeats": repeats}
