"""Memory of one step, estimated before the step runs, and the memory there is: a run that cannot fit is refused.

:func:`estimate_step` runs the network once on PyTorch's ``meta`` device (shapes only: no memory, no arithmetic)
on a batch of the requested size, under a dispatch mode that sees every tensor each operation creates and when
it is freed: the peak of the bytes alive at once is the memory of the activations (the forward pass and, for a
training step, the backward pass with its gradients), as the real step would hold them. Parameters are not
counted (they exist already); a training step adds their gradients and the optimizer's state (one slot per
parameter for SGD with momentum, two for Adam) to the peak. A network that cannot run on the meta device is
traced on one real sample instead and the figure scaled to the batch.

:func:`available_bytes` is the memory this process may still take: the system's available memory
(``psutil``), lowered by a cgroup limit (v1 or v2) and by an address-space limit (``ulimit -v``); for a network
on a GPU, the free memory of its device. :func:`check_fits` refuses, in one line naming the image size, the
batch and the estimate, a step that would take more than :data:`HEADROOM` of it.
"""

from __future__ import annotations

import copy
import math
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from .errors import NetsiftError

HEADROOM = 0.9
"""A step may use at most this fraction of the memory available (the rest: the allocator's slack, the data)."""


@dataclass
class StepEstimate:
    """Bytes one step needs beyond the parameters already allocated."""

    activations: int  # peak of the tensors alive at once during the forward (and backward) pass
    state: int  # gradients and optimizer state of the trained parameters (training only)
    batch: int
    traced_on: str  # "meta", or "cpu (1 sample, scaled)" when the meta device could not run the network

    @property
    def total(self) -> int:
        """Activations plus state."""
        return self.activations + self.state


class _Live(TorchDispatchMode):
    """Counts the bytes of the tensors every operation creates and the peak alive at once."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0

    def _free(self, n: int) -> None:
        self.live -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(r.alias_info is not None for r in func._schema.returns):
            return out  # a view or an in-place result: memory already counted
        inputs = {id(a) for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)}
        seen: set[int] = set()
        largest = 0
        for t in torch.utils._pytree.tree_leaves(out):
            if not isinstance(t, torch.Tensor) or id(t) in inputs or id(t) in seen:
                continue
            seen.add(id(t))
            n = t.untyped_storage().nbytes() if t.device.type != "meta" else t.numel() * t.element_size()
            largest = max(largest, n)
            self.live += n
            weakref.finalize(t, self._free, n)
        # a convolution's kernels hold copies of their first operand and of their result while they run (oneDNN
        # reorders them to and from the blocked layout it computes in; cuDNN's workspace is of the same order)
        transient = 0
        name = func.__name__
        if name.startswith(("convolution", "_convolution")) and args and isinstance(args[0], torch.Tensor):
            outs = [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
            transient = max(map(_blocked, outs), default=0) + _nbytes(args[0])
        elif name.split(".")[0] in _PRODUCTS:  # a BLAS product packs panels of its second operand
            i = _PRODUCTS[name.split(".")[0]]
            if len(args) > i and isinstance(args[i], torch.Tensor):
                transient = min(_nbytes(args[i]), BLAS_PACK)
        self.peak = max(self.peak, self.live + transient)
        return out


_PRODUCTS = {"mm": 1, "bmm": 1, "addmm": 2, "baddbmm": 2}
"""Matrix products and the position of the operand they pack."""


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _blocked(t: torch.Tensor) -> int:
    """Bytes of ``t`` in the channel-blocked layout convolution kernels compute in (channels padded to 16)."""
    if t.dim() != 4 or t.shape[1] == 0:
        return _nbytes(t)
    return _nbytes(t) // t.shape[1] * (-(-t.shape[1] // CHANNEL_BLOCK) * CHANNEL_BLOCK)


CHANNEL_BLOCK = 16
"""oneDNN's channel block on AVX-512 CPUs (8 on AVX2): a 3-channel activation takes 16 channels' memory there."""


BLAS_PACK = 4 * 2**20
"""Most bytes a matrix product's packed copy of an operand is counted for (MKL/OpenBLAS pack panels)."""

ALLOCATOR_SLACK = 1.2
"""Activations take this much more resident memory than their tensors' bytes (allocator fragmentation: the
traced bytes matched PyTorch's own tensor bytes within 3% on resnet20, while the resident peak was up to 1.45x
them; with this slack ``benchmarks/memory_estimate.py`` finds estimate / measured in 0.80-1.59)."""


def _meta_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters and buffers live on the meta device (their data is not copied)."""
    memo: dict[int, object] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(model, memo)


def _trace(model: nn.Module, x: torch.Tensor, train: bool) -> int:
    """Peak bytes alive during one step of ``model`` on ``x`` (forward; with ``train`` also the backward)."""
    mode = _Live()
    model.train(train)
    with torch.set_grad_enabled(train), mode:
        out = model(x)
        if train:
            logits = out if isinstance(out, torch.Tensor) else out[0]
            y = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
            loss = nn.functional.cross_entropy(logits.float(), y)
            loss.backward()
        del out
    return mode.peak


def _trained_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad and
               not isinstance(p, nn.parameter.UninitializedParameter))


def estimate_step(model: nn.Module, input_shape: tuple[int, ...], batch: int, train: bool = True,
                  optimizer_slots: int = 1) -> StepEstimate:
    """Bytes one training (``train``) or evaluation step of ``model`` on ``batch`` inputs of ``input_shape`` needs
    beyond its parameters: the peak of the activations (and, training, of the gradients flowing back) from a
    meta-device trace, plus gradients and ``optimizer_slots`` optimizer tensors per trained parameter.

    The model itself is not changed (the trace runs on a copy whose tensors live on the meta device).
    """
    state = optimizer_slots * _trained_bytes(model) if train else 0  # the trace holds the gradients already
    batch_bytes = batch * math.prod(input_shape) * 4  # the float32 input batch itself
    try:
        meta = _meta_copy(model)
        x = torch.empty(batch, *input_shape, device="meta")
        peak = _trace(meta, x, train)
        return StepEstimate(int(ALLOCATOR_SLACK * peak) + batch_bytes, state, batch, "meta")
    except Exception:  # noqa: BLE001 (a network the meta device cannot run: trace one real sample instead)
        pass
    try:
        one = copy.deepcopy(model).cpu()
        peak = _trace(one, torch.zeros(1, *input_shape), train)
    except Exception:  # noqa: BLE001 (the network fails on its input: the run's own checks say why)
        return StepEstimate(0, state, batch, "unknown")
    return StepEstimate(int(ALLOCATOR_SLACK * peak * batch) + batch_bytes, state, batch, "cpu (1 sample, scaled)")


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def _cgroup_room() -> int | None:
    """Bytes left under this process's cgroup memory limit (v2, else v1), ``None`` without a limit."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, rel = line.split(":", 2)
        rel = rel.lstrip("/")
        if controllers == "":  # v2
            base = Path("/sys/fs/cgroup") / rel
            limit, used = _read_int(base / "memory.max"), _read_int(base / "memory.current")
        elif "memory" in controllers.split(","):
            base = Path("/sys/fs/cgroup/memory") / rel
            limit, used = _read_int(base / "memory.limit_in_bytes"), _read_int(base / "memory.usage_in_bytes")
        else:
            continue
        if limit is not None and used is not None and limit < 2**60:
            return max(0, limit - used)
    return None


def available_bytes(device: torch.device | str = "cpu") -> int | None:
    """Memory this process may still allocate on ``device`` (``None``: unknown).

    CPU: the least of the system's available memory, the room under a cgroup limit and the room under an
    address-space limit (``ulimit -v``). CUDA: the device's free memory.
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type != "cpu":
        return None
    rooms = []
    try:
        import psutil

        rooms.append(int(psutil.virtual_memory().available))
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            rooms.append(max(0, soft - psutil.Process().memory_info().vms))
    except (ImportError, OSError, ValueError):
        pass
    cgroup = _cgroup_room()
    if cgroup is not None:
        rooms.append(cgroup)
    from .env import get

    if get(MEMORY_ENV) is not None:
        rooms.append(get(MEMORY_ENV))
    return min(rooms) if rooms else None


MEMORY_ENV = "NETSIFT_MEMORY_LIMIT"
"""Environment variable: treat only this many bytes (or ``8G``, ``512M``) as available (tests, shared machines)."""


def _gb(n: float) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"


def check_fits(model: nn.Module, input_shape: tuple[int, ...], batch: int, train: bool = True,
               optimizer_slots: int = 1, what: str | None = None) -> StepEstimate | None:
    """Refuse (one line naming the input size, the batch and the estimate) a step that would not fit in memory.

    Returns the estimate (``None`` when the available memory is unknown).

    Raises:
        NetsiftError: the step's estimate exceeds :data:`HEADROOM` of :func:`available_bytes`.
    """
    if batch <= 0:
        return None
    device = next((p.device for p in model.parameters() if p.device.type != "meta"), torch.device("cpu"))
    room = available_bytes(device)
    if room is None:
        return None
    est = estimate_step(model, tuple(input_shape), batch, train, optimizer_slots)
    if est.total > HEADROOM * room:
        step = what or ("a training step" if train else "an evaluation pass")
        size = "x".join(map(str, input_shape[1:])) + " px" if len(input_shape) == 3 else str(tuple(input_shape))
        state = f" + {_gb(est.state)} of gradients and optimizer state" if est.state else ""
        raise NetsiftError(f"{step} on {size} inputs in batches of {batch} needs about {_gb(est.total)} "
                           f"({_gb(est.activations)} of activations{state}), more than the {_gb(room)} of memory "
                           f"available{' on ' + str(device) if device.type != 'cpu' else ''}; use a smaller batch or "
                           "image size")
    return est


def optimizer_slots(name: str, momentum: float = 0.0) -> int:
    """Tensors per parameter an optimizer keeps (SGD: 1 with momentum, else 0; Adam: 2)."""
    return 2 if name == "adam" else (1 if momentum and not math.isclose(momentum, 0.0) else 0)


def loader_batch(loader: object, default: int | None = None) -> int | None:
    """The batch size a loader yields (capped by its data's size), ``default`` when it does not say."""
    inner = getattr(loader, "loader", None)
    batch = getattr(loader, "batch_size", None) or getattr(inner, "batch_size", None) or default
    data = getattr(loader, "data", None) or getattr(inner, "dataset", None)
    try:
        n = len(data) if data is not None else None
    except TypeError:
        n = None
    return min(batch, n) if batch and n else batch


def _slots(opt: torch.optim.Optimizer) -> int:
    if isinstance(opt, torch.optim.Adam):
        return 2
    return 1 if opt.defaults.get("momentum") else 0


def check_training(model: nn.Module, input_shape: tuple[int, ...], train_loader: object, optimizers: list) -> None:
    """Before the first step of :func:`netsift.training.fit`: refuse a training step (at the batch size the loader
    yields) that would not fit in memory (see :func:`check_fits`)."""
    slots = max((_slots(o) for o in optimizers), default=1)
    check_fits(model, input_shape, loader_batch(train_loader) or 0, True, slots, "a training step")


def fitting_batch(model: nn.Module, input_shape: tuple[int, ...], wanted: int) -> int:
    """The evaluation batch to use: ``wanted``, or the largest smaller one whose pass fits in memory.

    An evaluation's figures do not depend on its batch size, so netsift's own evaluation passes (measurement,
    validation) shrink their batch rather than run out of memory.

    Raises:
        NetsiftError: not even one sample fits (see :func:`check_fits`).
    """
    if wanted <= 1:
        return max(wanted, 1)
    device = next((p.device for p in model.parameters() if p.device.type != "meta"), torch.device("cpu"))
    room = available_bytes(device)
    if room is None:
        return wanted
    est = estimate_step(model, tuple(input_shape), wanted, train=False)
    if est.total <= HEADROOM * room:
        return wanted
    per_sample = max(1.0, est.total / wanted)
    batch = max(1, min(wanted - 1, int(HEADROOM * room / per_sample)))
    check_fits(model, input_shape, batch, train=False, what="an evaluation pass")
    return batch


def check_new_network(name: str, build, input_shape: tuple[int, ...], copies: int = 3) -> None:
    """Before building network ``name`` for real: build it on the meta device (``build()`` under
    ``torch.device("meta")``) and refuse it when its parameters and buffers, ``copies`` times over (the weights,
    their gradients and the optimizer's momentum), would not fit in memory.

    A builder that cannot run on the meta device is let through (the step checks still hold).
    """
    try:
        with torch.device("meta"):
            net = build()
    except Exception:  # noqa: BLE001
        return
    params = sum(_nbytes(p) for p in net.parameters() if not isinstance(p, nn.parameter.UninitializedParameter))
    params += sum(_nbytes(b) for b in net.buffers())
    room = available_bytes("cpu")
    if room is not None and copies * params > HEADROOM * room:
        size = "x".join(map(str, input_shape[1:])) + " px" if len(input_shape) == 3 else str(tuple(input_shape))
        n = sum(p.numel() for p in net.parameters())
        raise NetsiftError(f"{name} for {size} inputs has {n:,} parameters ({_gb(params)}; {_gb(copies * params)} "
                           f"with their gradients and optimizer state), more than the {_gb(room)} of memory "
                           "available; use a smaller image size or width")
