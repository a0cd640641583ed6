"""Several processes (``torchrun``, ``accelerate launch``): who writes, how the others wait, what they share.

Every command that trains or selects (``train``, ``extract``, ``prune``) runs under ``torchrun
--nproc_per_node N`` or ``accelerate launch`` with N processes, on CPUs (gloo) or GPUs (nccl), on one machine or
several. The rules, all implemented here and called from the pipelines, the training loop and the greedy
selection loops:

* **One writer.** Only the main process (global rank 0) prepares ``--out``, writes ``config.json``,
  ``result.json``, the model files and exports, and prints. :func:`on_main` runs a step on the main process and
  hands its outcome (a value, or the one-line error) to the others, which wait for it: it is also the barrier.
* **No hang.** Every collective netsift issues goes over a gloo group with a timeout (``NETSIFT_DIST_TIMEOUT``
  seconds, default 1800). A process that dies or stops answering ends the job with a one-line error naming
  what was waited for (the launcher then stops the other processes) instead of a hang.
* **Data.** Each process trains on its shard of every epoch (the permutation of epoch ``e`` depends on
  ``(seed, e)`` only; process ``r`` of ``N`` takes every N-th index from ``r``), and all processes take the same
  number of steps per epoch. Validation and test accuracy are computed over the whole split once: each process
  evaluates its own disjoint share (no padding, so no sample is counted twice or dropped) and the counts are
  summed (:func:`eval_loader`, :func:`sum_counts`).
* **Greedy selection.** GFS and backward elimination score each step's candidates split across the processes
  (every process its contiguous share, on the same minibatch); the losses are all-gathered so that every
  process takes the same channel (:func:`split_scores`). Taylor sums its gradients over the processes
  (:func:`sum_grads`).
* **Random noise.** Process 0 draws exactly the random numbers of a single-process run with the same seed (its
  generator state is what checkpoints save). Process ``r > 0`` reseeds torch, ``random`` and numpy at the
  start of every epoch from ``(seed, epoch, r)`` (:func:`seed_rank`), so sampled masks differ between
  processes and a resumed run draws what an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

from .errors import NetsiftError

TIMEOUT_ENV = "NETSIFT_DIST_TIMEOUT"
SHARE_ENV = "NETSIFT_SHARE_PREFIX"
"""Seconds a process waits for the others at a collective before giving up (default 1800)."""

DEFAULT_TIMEOUT = 1800.0

DISTRIBUTED_COMMANDS = ("train", "extract", "prune")
"""Commands that run on all processes of a job; any other command runs on the main process only."""

_state: dict[str, Any] = {"group": None, "single": False, "warned": False}


class MirroredError(NetsiftError):
    """The main process's error, raised again on every other process (the CLI prints it only once)."""

    quiet = True


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def launched() -> bool:
    """Whether a launcher started this process as one of several (``WORLD_SIZE`` > 1)."""
    return _env_int("WORLD_SIZE", 1) > 1 and not _state["single"]


def _dist():
    import torch.distributed as dist

    return dist


def active() -> bool:
    """Whether this process is one of several in an initialised process group."""
    if _state["single"] or "torch" not in sys.modules:
        return False
    dist = _dist()
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of processes in the job (1 without a launcher)."""
    return _dist().get_world_size() if active() else 1


def rank() -> int:
    """Global rank of this process (0 without a launcher)."""
    return _dist().get_rank() if active() else 0


def is_main() -> bool:
    """Whether this process writes the run folder and prints (global rank 0; true without a launcher)."""
    if active():
        return rank() == 0
    return _state["single"] or _env_int("RANK", 0) == 0


def timeout_s() -> float:
    """The collective timeout in seconds (``NETSIFT_DIST_TIMEOUT``, default 1800)."""
    from .env import get

    return float(get(TIMEOUT_ENV))  # validated in netsift.env: a bad value is one line


def share_policy() -> str:
    """``NETSIFT_SHARE_PREFIX``: whether greedy selection shares each step's prefix between the processes (one
    computes it, all receive it): "auto" (the default: where the scorer estimates that it pays, on CPUs),
    "always" or "never".

    Raises:
        NetsiftError: another value.
    """
    from .env import get

    return get(SHARE_ENV)  # validated in netsift.env: auto, always or never


LAUNCHER_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                "ROLE_RANK", "ROLE_WORLD_SIZE")
"""What launchers set to say "one of several processes" (Accelerate reads it too)."""


def single_process() -> None:
    """Run this process alone even under a launcher (commands that do not split their work): forget the
    launcher's process variables, so that Accelerate does not wait for the other processes either."""
    _state["single"] = True
    for name in LAUNCHER_ENV:
        os.environ.pop(name, None)


def cli_runs_here(command: str) -> bool:
    """Called by the CLI after parsing: whether this process runs ``command``.

    Without a launcher: always. Under a launcher, ``train``, ``extract`` and ``prune`` run on every process
    (the non-main ones with their standard output silenced); any other command runs on the main process only
    and the others exit at once.
    """
    if not launched():
        return True
    if command in DISTRIBUTED_COMMANDS:
        if _env_int("RANK", 0) != 0:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)
        return True
    main = _env_int("RANK", 0) == 0
    single_process()
    return main


def _warn_single_accelerate() -> None:
    """`accelerate launch --cpu --num_processes N` starts one process (it expects mpirun): say so once."""
    if _state["warned"] or launched() or "WORLD_SIZE" in os.environ:
        return
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("true", "1") and os.environ.get("MASTER_ADDR"):
        _state["warned"] = True
        print("netsift: warning: accelerate launch --cpu started a single process (without mpirun it does not start "
              "several); for N CPU processes use `accelerate launch --multi_gpu --num_processes N` without --cpu, "
              "or torchrun (see docs/distributed.md)", file=sys.stderr)


def setup(cpu: bool = False) -> None:
    """Join the job's process group when a launcher started several processes (idempotent; a no-op otherwise).

    The group is initialised the way Accelerate does it (gloo on CPUs, nccl on GPUs; ``cpu`` forces CPUs), with
    the collective timeout, so that :func:`netsift.training.fit`'s ``Accelerator`` adopts it.
    """
    _warn_single_accelerate()
    if not launched():
        return
    dist = _dist()
    if not dist.is_initialized():
        from datetime import timedelta

        import torch
        from accelerate import PartialState

        try:
            PartialState(cpu=cpu or not torch.cuda.is_available(), timeout=timedelta(seconds=timeout_s()))
        except (RuntimeError, ValueError) as e:
            raise NetsiftError(f"could not join the other processes of the job: {_first_line(e)}") from None
        import atexit

        atexit.register(_teardown)
    _group()


def _teardown() -> None:
    """Leave the process group before the interpreter exits: a group left to the C++ destructors can abort the
    process at exit ("terminate called without an active exception") after its work is done."""
    dist = _dist()
    try:
        if dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # noqa: BLE001 (exiting anyway; another process may already be gone)
        pass
    _state["group"] = None


def _group():
    """netsift's own gloo group (CPU tensors, with the timeout), created once on every process."""
    if _state["group"] is None:
        import atexit
        from datetime import timedelta

        _state["group"] = _dist().new_group(backend="gloo", timeout=timedelta(seconds=timeout_s()))
        atexit.register(_release_group)  # also when the caller set up (and tears down) the job's group itself
    return _state["group"]


def _release_group() -> None:
    """Destroy netsift's own group and drop it before the interpreter exits: a group (with its asynchronous
    work) left to the C++ destructors can abort the process at exit after its work is done."""
    group, _state["group"] = _state["group"], None
    if group is None:
        return
    try:
        if _dist().is_initialized():
            _dist().destroy_process_group(group)
    except Exception:  # noqa: BLE001 (exiting anyway; the caller may have destroyed every group already)
        pass


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    line = text[0] if text else type(e).__name__
    line = re.sub(r"^\[[^\]]*\.(cc|cpp|h):\d+\]\s*", "", line)  # gloo's source location
    return line.split(" This is typically caused")[0]


@contextmanager
def waiting(what: str) -> Iterator[None]:
    """Turn a failed collective (a process died, or did not answer in time) into a one-line error."""
    try:
        yield
    except NetsiftError:
        raise
    except RuntimeError as e:  # torch.distributed.DistError and gloo's errors are RuntimeErrors
        raise NetsiftError(f"process {rank()} of {world_size()}: {what} failed: another process of the job stopped, "
                           f"or did not answer within {timeout_s():g} s ({TIMEOUT_ENV}): {_first_line(e)}") from None


@contextmanager
def collectives_reported() -> Iterator[None]:
    """A collective that fails inside the block (in DDP's gradient exchange, say) is reported as one line, like
    :func:`waiting`."""
    try:
        yield
    except RuntimeError as e:
        dist = _dist() if "torch" in sys.modules else None
        if active() and (isinstance(e, getattr(dist, "DistError", ())) or _looks_collective(e)):
            with waiting("exchanging data with the other processes"):
                raise
        raise


def guard(fn: Callable) -> Callable:
    """Decorator form of :func:`collectives_reported`."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with collectives_reported():
            return fn(*args, **kwargs)

    return wrapper


def _looks_collective(e: BaseException) -> bool:
    text = str(e)
    return any(s in text for s in ("gloo", "Gloo", "NCCL", "Connection closed", "Connection reset", "timed out",
                                   "Timed out", "ProcessGroup", "Broken pipe"))


def barrier(what: str = "waiting for the other processes") -> None:
    """Wait until every process arrives here (with the timeout; names the processes that did not)."""
    if not active():
        return
    from datetime import timedelta

    with waiting(what):
        _dist().monitored_barrier(group=_group(), timeout=timedelta(seconds=timeout_s()), wait_all_ranks=True)


def broadcast(value: Any, what: str = "receiving a value from the main process") -> Any:
    """The main process's ``value`` on every process (any picklable object)."""
    if not active():
        return value
    box = [value if is_main() else None]
    with waiting(what):
        _dist().broadcast_object_list(box, src=0, group=_group())
    return box[0]


def on_main(fn: Callable[[], Any], what: str = "writing the run folder") -> Any:
    """Run ``fn`` on the main process only; every process returns its value or raises its error.

    The other processes wait for the main one (with the timeout): this is also a barrier. A
    :class:`~netsift.errors.NetsiftError` of the main process is raised on the others as a
    :class:`MirroredError` (printed once, by the main process).
    """
    if not active():
        return fn()
    outcome, error = None, None
    if is_main():
        try:
            outcome = ("ok", fn())
        except NetsiftError as e:
            outcome, error = ("error", str(e)), e
        except BaseException as e:
            outcome, error = ("crash", f"{type(e).__name__}: {_first_line(e)}"), e
    kind, value = broadcast(outcome, f"waiting for the main process ({what})")
    if error is not None:
        raise error
    if kind == "ok":
        return value
    if kind == "error":
        raise MirroredError(value)
    raise NetsiftError(f"the main process failed while {what}: {value}")


def sum_counts(*values: float, what: str = "summing the evaluation counts") -> tuple[float, ...]:
    """Each value summed over the processes (float64; integers stay exact below 2^53)."""
    if not active():
        return values
    import torch

    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    with waiting(what):
        _dist().all_reduce(t, group=_group())
    return tuple(t.tolist())


def min_int(value: int, what: str = "agreeing on the steps per epoch") -> int:
    """The smallest ``value`` over the processes."""
    if not active():
        return value
    import torch

    t = torch.tensor([int(value)], dtype=torch.int64)
    with waiting(what):
        _dist().all_reduce(t, op=_dist().ReduceOp.MIN, group=_group())
    return int(t.item())


def check_same(digest: str, what: str) -> None:
    """Raise a one-line error unless every process computed the same ``digest`` of ``what``."""
    if not active():
        return
    digests: list = [None] * world_size()
    with waiting(f"comparing {what}"):
        _dist().all_gather_object(digests, digest, group=_group())
    if len(set(digests)) > 1:
        raise NetsiftError(f"the processes computed different {what} (digests {', '.join(d[:12] for d in digests)});"
                           " this is a bug, please report it")


def tensors_digest(tensors: dict) -> str:
    """SHA-256 of a ``{name: tensor}`` dict (names, dtypes, shapes and bytes), to compare across processes."""
    import torch

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def share(k: int, r: int | None = None, n: int | None = None) -> tuple[int, int]:
    """``[lo, hi)``: process ``r``'s contiguous share of ``k`` items split as evenly as possible over ``n``."""
    r = rank() if r is None else r
    n = world_size() if n is None else n
    base, extra = divmod(k, n)
    lo = r * base + min(r, extra)
    return lo, lo + base + (1 if r < extra else 0)


def mine(i: int) -> bool:
    """Whether item ``i`` of a sequence dealt round-robin over the processes is this process's."""
    return i % world_size() == rank()


def split_scores(score: Callable, masks, *args: Any, carry: Callable[[], Any] | None = None,
                 meanwhile: Callable[[], None] | None = None):
    """``score(masks, *args)`` with the K candidate ``masks`` split across the processes; every process returns
    all K scores.

    Each process scores its contiguous share (``score`` sees only those rows, on the same ``args``: the same
    minibatch everywhere) and the shares are all-gathered in candidate order, so the first-best candidate is
    the same on every process and the same as with one process.

    ``carry``: called after this process's share is scored; it returns a 1-D ``uint8`` tensor of the same size
    in every process, gathered in the same collective (one wait instead of two). Then the result is
    ``(scores, [every process's carried tensor])``. ``meanwhile``: work done while the collective runs (it fills
    the time this process would wait for a slower one).
    """
    import torch

    n = world_size()
    if n == 1:
        scores = score(masks, *args)
        if meanwhile is not None:
            meanwhile()
        return scores if carry is None else (scores, [carry()])
    k = masks.shape[0]
    lo, hi = share(k)
    local = score(masks[lo:hi], *args) if hi > lo else None
    width = -(-k // n)
    buf = torch.full((width,), float("inf"), dtype=torch.float64)
    if local is not None:
        buf[:hi - lo] = local.detach().reshape(-1).to("cpu", torch.float64)
    extra = carry() if carry is not None else None
    if extra is not None:
        buf = torch.cat([buf.view(torch.uint8), extra.reshape(-1).to("cpu", torch.uint8)])
    parts = [torch.empty_like(buf) for _ in range(n)]
    with waiting("gathering candidate scores"):
        work = _dist().all_gather(parts, buf, group=_group(), async_op=meanwhile is not None)
    if meanwhile is not None:
        meanwhile()
        with waiting("gathering candidate scores"):
            work.wait()
    head = width * 8
    scores = torch.cat([p[:head].view(torch.float64)[:share(k, i, n)[1] - share(k, i, n)[0]] if extra is not None
                        else p[:share(k, i, n)[1] - share(k, i, n)[0]] for i, p in enumerate(parts)])
    scores = scores.to(local.dtype if local is not None else torch.get_default_dtype())
    return scores if carry is None else (scores, [p[head:] for p in parts])


def gather(buf, what: str = "gathering values from the other processes") -> list:
    """Every process's ``buf`` (a tensor of the same shape and dtype in all of them), in process order."""
    import torch

    n = world_size()
    if n == 1:
        return [buf]
    parts = [torch.empty_like(buf) for _ in range(n)]
    with waiting(what):
        _dist().all_gather(parts, buf, group=_group())
    return parts


def sum_grads(params: Sequence) -> None:
    """Sum the ``.grad`` of ``params`` over the processes, in place (a missing gradient counts as zero)."""
    if not active():
        return
    import torch

    params = [p for p in params if p.requires_grad]
    if not params:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).detach().reshape(-1).to("cpu",
                                                                                                   torch.float32)
                      for p in params])
    with waiting("summing gradients"):
        _dist().all_reduce(flat, group=_group())
    offset = 0
    for p in params:
        n = p.numel()
        g = flat[offset:offset + n].view_as(p).to(p.device, p.dtype)
        offset += n
        if p.grad is None:
            p.grad = g
        else:
            p.grad.copy_(g)


def sync_buffers(module) -> None:
    """Give every process the main process's buffers (batch-norm statistics), in place."""
    if not active():
        return
    import torch

    buffers = [b for b in module.buffers() if b is not None]
    with waiting("sharing the batch-norm statistics"), torch.no_grad():
        for b in buffers:
            t = b.detach().to("cpu").clone()
            _dist().broadcast(t, src=0, group=_group())
            b.copy_(t.to(b.device))


def seed_rank(seed: int, epoch: int) -> None:
    """On process ``r > 0``: reseed torch, ``random`` and numpy from ``(seed, epoch, r)`` (process 0 keeps the
    generator state of a single-process run)."""
    r = rank()
    if r == 0:
        return
    import random

    import numpy as np
    import torch

    digest = hashlib.sha256(f"{int(seed)}:epoch{int(epoch)}:rank{r}".encode()).digest()
    s = int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
    torch.manual_seed(s)
    random.seed(s)
    np.random.seed(s % 2**32)


class _EveryNth:
    """Batches ``r, r + N, r + 2N, ...`` of a loader (a user's ``DataLoader`` split across the processes)."""

    def __init__(self, loader, n: int, r: int):
        self.loader, self.n, self.r = loader, n, r

    def set_epoch(self, epoch: int) -> None:  # noqa: D102
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(epoch)

    def __len__(self) -> int:
        return len(range(self.r, len(self.loader), self.n))

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i % self.n == self.r:
                yield batch


def eval_loader(bundle, split: str, batch_size: int):
    """This process's disjoint share of ``split`` for evaluation; the shares cover the split exactly once.

    netsift's own loaders take every N-th sample; a ``DataLoader`` you gave is used as it is, every N-th batch
    (it must yield the same batches in the same order on every process: no shuffling).
    """
    n = world_size()
    if n == 1:
        return bundle.loader(split, batch_size)
    if split in bundle.loaders:
        return _EveryNth(bundle.loader(split, batch_size), n, rank())
    return bundle.loader(split, batch_size, num_shards=n, shard_index=rank())


CHECKPOINT_JSON = "checkpoint.json"


def checkpoint_processes(meta: dict) -> int:
    """The number of processes a checkpoint was written by (1 for checkpoints that do not say)."""
    value = meta.get("processes", 1)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1_000_000:
        raise NetsiftError(f"checkpoint metadata: processes must be an integer in [1, 1,000,000], got {value!r}")
    return value


def check_resume(run_dir, meta: dict | None = None) -> None:
    """Refuse (one line) to resume a run whose checkpoint was written by a different number of processes.

    The data shards, the per-process random streams and the number of steps per epoch (hence the learning-rate
    schedule) all depend on the number of processes, so a run continues only with the number it started with.
    """
    from pathlib import Path

    if meta is None:
        path = Path(run_dir) / CHECKPOINT_JSON
        if not path.is_file():
            return
        from .readers import read_checkpoint_meta

        meta = read_checkpoint_meta(path)  # its schema first: a list or a string is one line, not a traceback
    had, have = checkpoint_processes(meta), world_size()
    if had != have:
        hint = "run it without a launcher" if had == 1 else \
            f"launch it with {had} processes (torchrun --nproc_per_node {had} ..., or that many across nodes)"
        raise NetsiftError(f"--resume: {run_dir} was run by {had} process{'es' if had > 1 else ''}, this job has "
                           f"{have}; {hint} (data shards, random streams and the schedule depend on it)")
