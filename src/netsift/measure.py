"""Measurement: accuracy, density, parameter counts, MACs (``torch.utils.flop_counter``) and CPU latency.

:func:`measure` is the one function every pipeline uses to describe a network; MACs have one counter
(:func:`count_macs`, per-layer figures from the same counter) and latency one protocol
(:func:`compare_latency`: networks timed in interleaved rounds, medians and the spread between rounds).
"""

from __future__ import annotations

import copy
import os
import statistics
import time
from contextlib import contextmanager
from typing import Iterable, Iterator

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from . import distributed
from . import progress as _progress
from .errors import NetsiftError
from .models import prunable_layers
from .structure import structure_hash

SPREAD_WARNING = 0.10
"""Latency rounds that disagree by more than this fraction get a note in ``result.json``."""


def _device(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device | str | None = None,
             sharded: bool = False) -> dict[str, float]:
    """Accuracy, mean cross-entropy and number ``n`` of samples of ``model`` (in eval mode) over ``loader``.

    ``sharded``: ``loader`` is this process's share of a split (:func:`netsift.distributed.eval_loader`); the
    counts are summed over the processes, so every process returns the figures of the whole split.

    Raises:
        NetsiftError: the data does not fit the model (input shape, or labels outside its outputs).
    """
    was_training = model.training
    model.eval()
    device = device or _device(model)
    correct, total, loss = 0, 0, 0.0
    try:
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            out = run_model(model, x)
            check_labels(y, out)
            loss += nn.functional.cross_entropy(out.float(), y, reduction="sum").item()
            correct += (out.argmax(1) == y).sum().item()
            total += len(y)
    finally:
        model.train(was_training)
    if sharded:
        correct, total, loss = distributed.sum_counts(correct, total, loss)
        correct, total = int(correct), int(total)
    if total == 0:
        return {"acc": float("nan"), "loss": float("nan"), "n": 0}
    return {"acc": correct / total, "loss": loss / total, "n": total}


def run_model(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model(x)``, turning a shape mismatch deep inside the model into a one-line error."""
    try:
        out = model(x)
    except (RuntimeError, AssertionError, ValueError, IndexError, TypeError) as e:
        from .models import dtype_problem

        problem = dtype_problem(model, x.dtype) if x.is_floating_point() else None
        if problem:
            raise NetsiftError(problem) from None
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        if isinstance(e, torch.OutOfMemoryError) or "out of memory" in why or "allocate" in why:
            raise NetsiftError(f"out of memory running the model on a batch of {len(x)} inputs of shape "
                               f"{tuple(x.shape[1:])} ({why}); use a smaller batch or image size") from None
        raise NetsiftError(f"model cannot take inputs of shape {tuple(x.shape[1:])}: {why}") from None
    if not isinstance(out, torch.Tensor):
        raise NetsiftError(f"the model must return a tensor of (batch, classes) logits, got {type(out).__name__}")
    return out


def check_labels(y: torch.Tensor, logits: torch.Tensor) -> None:
    """Raise a one-line error unless every label indexes one of the model's outputs."""
    if logits.dim() != 2:
        raise NetsiftError(f"the model must return (batch, classes) logits, got shape {tuple(logits.shape)}")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= logits.shape[1]):
        raise NetsiftError(f"labels {int(y.min())}..{int(y.max())} do not fit the model's {logits.shape[1]} "
                           "outputs (wrong data set or number of classes?)")


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


@contextmanager
def flop_counter(model: nn.Module) -> Iterator[FlopCounterMode]:
    """``torch.utils.flop_counter.FlopCounterMode`` for a forward pass of ``model``, its parameters' ``requires_grad``
    off meanwhile: the counter's module tracker hooks every module input that requires a gradient, and a view of a
    parameter taken under ``no_grad`` (timm CaiT's class token) has no gradient function to hook."""
    from torch.nn.parameter import is_lazy

    trained = [p for p in model.parameters() if not is_lazy(p) and p.requires_grad]
    for p in trained:
        p.requires_grad_(False)
    try:
        with FlopCounterMode(display=False) as counter:
            yield counter
    finally:
        for p in trained:
            p.requires_grad_(True)


@torch.no_grad()
def _flop_counts(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, dict[str, int]]:
    """Total MACs of one sample and MACs per module name (``""`` for the whole network)."""
    was_training = model.training
    model.eval()
    try:
        with flop_counter(model) as counter:
            run_model(model, torch.zeros(1, *input_shape, device=_device(model)))
    finally:
        model.train(was_training)
    root = type(model).__name__
    per_module = {}
    for key, ops in counter.get_flop_counts().items():
        if key == "Global":
            continue
        name = "" if key == root else key[len(root) + 1:] if key.startswith(root + ".") else key
        per_module[name] = int(sum(ops.values()) // 2)
    return int(counter.get_total_flops() // 2), per_module


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass of one sample, from ``torch.utils.flop_counter``."""
    return _flop_counts(model, input_shape)[0]


def sparse_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """MACs if zero weights were skipped: each Linear/Conv2d layer's MACs times its weight density."""
    _, per_module = _flop_counts(model, input_shape)
    return int(sum(per_module.get(name, 0) * float((layer.weight != 0).float().mean())
                   for name, layer in prunable_layers(model)))


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


def check_threads(n: int | None, what: str = "threads") -> int | None:
    """``n`` if it is a sane thread count (0/None: torch's default), else a one-line error."""
    if n is None or n == 0:
        return n
    limit = 4 * (os.cpu_count() or 1)
    if not isinstance(n, int) or n < 0 or n > limit:
        raise NetsiftError(f"{what} must be between 0 and {limit} (4 x the {os.cpu_count()} CPU cores), got {n}")
    return n


@torch.no_grad()
def compare_latency(models: dict[str, nn.Module], input_shape: tuple[int, ...], batch_sizes: tuple[int, ...] = (1, 64),
                    rounds: int = 7, passes: dict[int, int] | None = None, threads: int | None = 1) -> dict:
    """CPU forward latency of each network, timed in interleaved rounds (inference mode).

    Every round times ``passes[bs]`` forward passes of each network at each batch size, one network after the
    other, so a load from other processes hits all of them alike; a round's figure is its fastest pass (other
    processes only ever add time). Returns ``{name: {"b1_ms": fastest round, ..., "spread": largest
    (max - min) / median over rounds, of any batch size}, "threads": ..., "rounds": ...}``.
    """
    check_threads(threads, "latency threads")
    # ~1-2 s per network pair on a small CPU network: with 5 rounds of 3 batch-64 passes (0.5 s) the speed-up
    # of the same architecture varied by 13-15% between calls (benchmarks/latency_repeat.py)
    passes = passes or {bs: (30 if bs <= 8 else 10) for bs in batch_sizes}
    cpu = {}
    for name, m in models.items():
        m_cpu = m if _device(m).type == "cpu" else copy.deepcopy(m).cpu()  # leave a GPU model where it is
        cpu[name] = (m_cpu, m_cpu.training)
        m_cpu.eval()
    inputs = {bs: torch.randn(bs, *input_shape) for bs in batch_sizes}
    times: dict[tuple[str, int], list[float]] = {(n, bs): [] for n in models for bs in batch_sizes}
    what = f"timing latency ({', '.join(models)}; batch {', '.join(map(str, batch_sizes))})"
    try:
        with num_threads(threads) as used, torch.inference_mode(), _progress.task(what, rounds, "round",
                                                                                 summary_after=2.0) as report:
            for name, (m, _) in cpu.items():  # warm-up
                for bs in batch_sizes:
                    m(inputs[bs])
            for _ in range(rounds):
                for bs in batch_sizes:
                    for name, (m, _) in cpu.items():
                        t = []
                        for _ in range(passes[bs]):
                            t0 = time.perf_counter()
                            m(inputs[bs])
                            t.append((time.perf_counter() - t0) * 1000)
                        times[(name, bs)].append(min(t))  # the least-disturbed pass of the round
                report.update()
    finally:
        for m, was_training in cpu.values():
            m.train(was_training)
    out: dict = {"threads": used, "rounds": rounds}
    for name in models:
        row, spread = {}, 0.0
        for bs in batch_sizes:
            v = times[(name, bs)]
            med = statistics.median(v)
            # other processes only ever add time: the least-disturbed round is the network's own cost
            row[f"b{bs}_ms"] = min(v)
            spread = max(spread, (max(v) - min(v)) / med if med else 0.0)
        row["spread"] = spread
        out[name] = row
    return out


def latency(model: nn.Module, input_shape: tuple[int, ...], batch_size: int = 1, repeats: int = 30,
            warmup: int = 5, threads: int | None = None) -> dict:
    """Median CPU wall time of a forward pass of one network in ms (inference mode)."""
    r = compare_latency({"m": model}, input_shape, (batch_size,), rounds=1, passes={batch_size: repeats},
                        threads=threads)
    return {"median_ms": r["m"][f"b{batch_size}_ms"], "batch_size": batch_size, "threads": r["threads"],
            "repeats": repeats}


def measure(model: nn.Module, bundle, batch_size: int = 512, latency_threads: int | None = None,
            source: nn.Module | None = None, source_macs: int | None = None) -> dict:
    """Everything ``result.json`` says about a network, from one place.

    Test and validation accuracy over the whole splits, density, parameter counts, MACs (dense and
    sparse) and the per-layer table; with ``latency_threads`` (0: torch's default) also the latency at batch
    1 and 64 — interleaved with ``source``'s when given (the network it was pruned from), with speed-ups.
    ``macs_fraction`` is relative to ``source_macs`` (or ``source``'s MACs).
    """
    device = _device(model)
    shape = bundle.input_shape
    from .memory import fitting_batch

    # a smaller batch where this one would not fit in memory (the figures do not depend on it)
    batch_size = fitting_batch(model, shape, min(batch_size, max(bundle.size("test"), bundle.size("val"), 1)))
    with _progress.stage("measuring test and validation accuracy, parameters and MACs"):
        # with several processes each evaluates its share and the counts are summed: the whole split, once
        test = evaluate(model, distributed.eval_loader(bundle, "test", batch_size), device, sharded=True)
        val = evaluate(model, distributed.eval_loader(bundle, "val", batch_size), device, sharded=True) \
            if bundle.size("val") else {"acc": None}
        layers = layer_table(model)
        kept, total = sum(r["kept"] for r in layers), sum(r["total"] for r in layers)
        nonzero, params_total = count_params(model)
        macs = count_macs(model, shape)
        if source is not None and source_macs is None:
            source_macs = count_macs(source, shape)
    out = {"input_shape": [int(d) for d in shape], "structure": structure_hash(model),
           **({"source_structure": structure_hash(source)} if source is not None else {}),
           "test_acc": test["acc"], "test_loss": test["loss"], "test_samples": test["n"], "val_acc": val["acc"],
           "density": kept / total if total else 1.0, "params": nonzero, "params_total": params_total,
           "macs": macs, "macs_sparse": sparse_macs(model, shape),
           "macs_fraction": macs / source_macs if source_macs else 1.0,
           "layers": [{"name": r["name"], "shape": r["shape"], "density": r["density"]} for r in layers]}
    if latency_threads is not None and distributed.is_main():  # timed once, by the process that writes
        nets = {"net": model, **({"source": source} if source is not None else {})}
        lat = compare_latency(nets, shape, threads=latency_threads or None)
        spread = max(lat[n]["spread"] for n in nets)
        out.update({"latency_b1_ms": lat["net"]["b1_ms"], "latency_b64_ms": lat["net"]["b64_ms"],
                    "latency_threads": lat["threads"], "latency_spread": spread,
                    "latency_note": (f"timing rounds disagreed by {spread:.0%} (> {SPREAD_WARNING:.0%}): something "
                                     "else slowed some rounds; the figures use the fastest round"
                                     if spread > SPREAD_WARNING else None)})
        if source is not None:
            out.update({"source_latency_b1_ms": lat["source"]["b1_ms"], "source_latency_b64_ms": lat["source"]["b64_ms"],
                        "speedup_b1": lat["source"]["b1_ms"] / lat["net"]["b1_ms"],
                        "speedup_b64": lat["source"]["b64_ms"] / lat["net"]["b64_ms"]})
    return out
