"""Several processes: train, extract and prune under torchrun / accelerate launch (CPU, gloo, 2 processes, digits).

The launcher tests start real jobs in subprocesses (``torchrun --standalone`` and ``accelerate launch
--main_process_port 0`` pick a free port themselves); the helper test runs the collectives of
:mod:`netsift.distributed` in two processes of ``torch.multiprocessing``.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
RUN_FILES = {"config.json", "metrics.jsonl", "checkpoint.json", "checkpoint.safetensors", "best.json",
             "best.safetensors", "model.json", "model.safetensors", "result.json",
             ".netsift.lock"}  # the main process's writer lock (rundir.RunLock), left in place like git's
# extract: every epoch is short on digits; the kill test needs a run long enough to be interrupted
EXTRACT = ["extract", "--method", "gumbel", "--model", "lenet300", "--width", "0.5", "--data", "digits",
           "--epochs", "12", "--batch-size", "64"]
PRUNE = ["prune", "--method", "gfs", "--macs", "0.5", "--candidates", "8", "--finetune-epochs", "1"]


def _env(**extra: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1", **extra}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *filter(None, [env.get("PYTHONPATH")])])
    return env


def torchrun(*argv: str) -> list[str]:
    """``torchrun --standalone --nproc_per_node 2 -m netsift ARGV`` (standalone: a free port on localhost)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "netsift",
            *argv]


def accelerate_launch(*argv: str) -> list[str]:
    """``accelerate launch`` with 2 CPU processes: ``--multi_gpu`` is what starts several (``--cpu`` starts one)."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
            "-m", "netsift", *argv]


def launch(cmd: list[str], cwd: Path, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=_env(**env), capture_output=True, text=True, timeout=timeout)


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_samples(split: str = "test") -> int:
    from netsift.data import load_data

    return load_data("digits").size(split)


test_samples.__test__ = False  # a helper, not a test


def full_split_accuracy(run_dir: Path) -> float:
    """Accuracy of the saved network over the whole digits test split, in this (single) process."""
    from netsift.data import load_data
    from netsift.measure import evaluate
    from netsift.rundir import load_model

    model, _ = load_model(run_dir)
    return evaluate(model, load_data("digits").loader("test", 97))["acc"]


def check_run(folder: Path, proc: subprocess.CompletedProcess, extra: set[str] = frozenset()) -> dict:
    """One complete run folder written once, the table printed once, and the accuracy of the whole test split."""
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert {p.name for p in folder.iterdir()} == RUN_FILES | set(extra)  # no temporary or duplicate files
    assert proc.stdout.count("run saved in") == 1  # only the main process prints
    result = json.loads((folder / "result.json").read_text())
    assert result["processes"] == 2
    assert result["test_samples"] == test_samples()
    assert result["test_acc"] == pytest.approx(full_split_accuracy(folder), abs=1e-12)
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == result["epochs_run"]
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A dense lenet300 trained by 2 processes started with ``accelerate launch`` (also the source to prune)."""
    cwd = tmp_path_factory.mktemp("dist-train")
    t0 = time.perf_counter()
    proc = launch(accelerate_launch("train", "--model", "lenet300", "--width", "0.25", "--data", "digits",
                                    "--epochs", "3", "--out", "run"), cwd)
    return cwd / "run", proc, time.perf_counter() - t0


@pytest.mark.slow
def test_train_two_processes_accelerate_launch(trained):
    folder, proc, _ = trained
    result = check_run(folder, proc)
    assert result["epochs_run"] == 3
    meta = json.loads((folder / "checkpoint.json").read_text())
    assert meta["processes"] == 2
    # each process trained on its half: the epoch's images over both processes are the whole training split
    assert meta["step"] == 3 * -(-(test_samples("train") // 2) // 128)


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("dist-extract")
    proc = launch(torchrun(*EXTRACT, "--out", "run"), cwd)
    return cwd / "run", proc


@pytest.mark.slow
def test_extract_two_processes(extracted):
    folder, proc = extracted
    result = check_run(folder, proc, {"subnet.json", "subnet.safetensors"})
    assert result["epochs_run"] == 12 and 0 < result["density"] < 1
    # the compact file regenerates the network from the seed and the mask bits: the same test accuracy
    from netsift.masks.compact import rebuild, read_compact, write_compact

    write_compact(folder, folder.parent / "model.nsc")
    from netsift.data import load_data
    from netsift.measure import evaluate

    model = rebuild(read_compact(folder.parent / "model.nsc"), "model.nsc")
    assert evaluate(model, load_data("digits").loader("test", 512))["acc"] == pytest.approx(result["test_acc"])


@pytest.mark.slow
@pytest.mark.parametrize("widths", ["uniform", "learned"])
def test_prune_gfs_two_processes_same_channels_as_one(trained, tmp_path, run_cli, widths):
    source = trained[0]
    argv = (*PRUNE, "--widths", widths)  # learned: the loss curves too are scored by both processes
    # the steps' prefixes computed by one process each and sent (too cheap to pay on lenet300 by default)
    proc = launch(torchrun(*argv, "--checkpoint", str(source), "--out", "run2"), tmp_path,
                  NETSIFT_SHARE_PREFIX="always")
    check_run(tmp_path / "run2", proc, {"selection.json", "selection.safetensors"})
    code, _, err = run_cli(*argv, "--checkpoint", source, "--out", tmp_path / "run1")
    assert code == 0, err
    def kept(run: str) -> dict:  # the selection state: the channels every finished group kept
        return {g["group"]: g["kept"] for g in json.loads((tmp_path / run / "selection.json").read_text())["groups"]}

    one, two = kept("run1"), kept("run2")
    assert two == one and sum(map(len, one.values())) > 0
    r1 = json.loads((tmp_path / "run1" / "result.json").read_text())
    r2 = json.loads((tmp_path / "run2" / "result.json").read_text())
    assert (r1["processes"], r2["processes"]) == (1, 2)
    assert r2["test_acc_selected"] == r1["test_acc_selected"]  # same network before fine-tuning, whole test split


def test_resume_with_another_number_of_processes_is_refused(trained, tmp_path, run_cli):
    import shutil

    folder = tmp_path / "run"
    shutil.copytree(trained[0], folder)
    before = digests(folder)
    code, out, err = run_cli("train", "--model", "lenet300", "--width", "0.25", "--data", "digits", "--epochs", "5",
                             "--out", folder, "--resume")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "was run by 2 processes, this job has 1" in err
    assert digests(folder) == before  # nothing written, not even config.json


def _rank_pids(parent: int) -> dict[int, int]:
    """{rank: pid} of the worker processes under the launcher ``parent``."""
    out = {}
    for pid in subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True).stdout.split():
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for item in env:
            if item.startswith(b"RANK="):
                out[int(item[5:])] = int(pid)
    return out


@pytest.mark.slow
def test_killed_process_ends_the_job_and_resume_matches_uninterrupted_run(extracted, tmp_path):
    folder = tmp_path / "run"
    cmd = torchrun(*EXTRACT, "--out", str(folder))
    job = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while not (folder / "checkpoint.json").exists() and job.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        ranks = _rank_pids(job.pid)
        assert 1 in ranks and job.poll() is None, "the job ended before it could be interrupted"
        os.kill(ranks[1], signal.SIGKILL)
        out, err = job.communicate(timeout=120)  # the job ends (no hang) ...
    finally:
        if job.poll() is None:
            job.kill()
    # ... and says what happened: the launcher names the killed rank, process 0 the failed exchange
    assert job.returncode != 0 and ("SIGKILL" in err or "another process of the job stopped" in err), err[-3000:]
    epochs_done = len((folder / "metrics.jsonl").read_text().splitlines())
    assert 1 <= epochs_done < 12 and not (folder / "result.json").exists()
    proc = launch(cmd + ["--resume"], tmp_path)
    check_run(folder, proc, {"subnet.json", "subnet.safetensors"})
    # bit for bit the network of the uninterrupted 2-process run (process 1's mask noise is reseeded per epoch)
    assert (folder / "model.safetensors").read_bytes() == (extracted[0] / "model.safetensors").read_bytes()


# --- the collectives themselves, in two processes of torch.multiprocessing ---------------------------------

def _helpers_worker(rank: int, store: str, out: str) -> None:
    import torch.distributed as dist
    from torch import nn

    from netsift import distributed as D
    from netsift.data import load_data
    from netsift.errors import NetsiftError
    from netsift.measure import evaluate

    os.environ[D.TIMEOUT_ENV] = "60"  # the helpers' own checks: room for a loaded machine
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    assert (D.world_size(), D.rank(), D.is_main()) == (2, rank, rank == 0)
    # candidates split unevenly, gathered in order; one candidate for two processes
    score = lambda m: m.sum(1) / 7.0  # noqa: E731
    for k in (5, 1, 8):
        masks = torch.randn(k, 3, generator=torch.Generator().manual_seed(k))
        got = D.split_scores(score, masks)
        assert got.dtype == torch.float32 and torch.equal(got, score(masks)), (k, got)
    # a payload carried in the same collective as the scores, and a plain gather
    payload = torch.tensor([rank + 0.5, -rank], dtype=torch.float32).view(torch.uint8)
    got, carried = D.split_scores(score, masks, carry=lambda: payload)
    assert torch.equal(got, score(masks)) and len(carried) == 2
    assert [c.view(torch.float32).tolist() for c in carried] == [[0.5, 0.0], [1.5, -1.0]]
    assert [t.tolist() for t in D.gather(torch.tensor([rank, 7]))] == [[0, 7], [1, 7]]
    assert D.sum_counts(rank + 1, 10) == (3.0, 20.0)
    assert D.min_int(rank + 5) == 5
    assert D.on_main(lambda: {"v": 42}) == {"v": 42}
    assert D.broadcast(rank * 10) == 0

    def fail():
        raise NetsiftError("--out x is not empty")

    try:
        D.on_main(fail)
        raise AssertionError("no error")
    except NetsiftError as e:
        assert str(e) == "--out x is not empty" and getattr(e, "quiet", False) == (rank == 1)
    D.check_same("same", "x")
    try:
        D.check_same(str(rank), "networks")
        raise AssertionError("no error")
    except NetsiftError as e:
        assert "different networks" in str(e)
    p = nn.Parameter(torch.zeros(3))
    p.grad = torch.full((3,), rank + 1.0)
    q = nn.Parameter(torch.zeros(2))  # no gradient on any process: zeros
    D.sum_grads([p, q])
    assert torch.equal(p.grad, torch.full((3,), 3.0)) and torch.equal(q.grad, torch.zeros(2))
    bn = nn.BatchNorm1d(4)
    bn.running_mean.fill_(rank + 1.0)
    D.sync_buffers(bn)
    assert torch.equal(bn.running_mean, torch.ones(4))
    # evaluation shares cover the test split exactly once
    bundle = load_data("digits")
    loader = D.eval_loader(bundle, "test", 50)
    mine = sum(len(y) for _, y in loader)
    assert D.sum_counts(mine)[0] == bundle.size("test") and abs(2 * mine - bundle.size("test")) <= 1
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    torch.manual_seed(0)
    model.apply(lambda m: m.reset_parameters() if isinstance(m, nn.Linear) else None)
    whole = evaluate(model, bundle.loader("test", 64))
    split = evaluate(model, loader, sharded=True)
    assert split["n"] == whole["n"] == bundle.size("test") and split["acc"] == whole["acc"]
    # a process that does not come: the others give up after the timeout with one line
    os.environ[D.TIMEOUT_ENV] = "2"  # read by the barrier when it is called
    if rank == 1:
        time.sleep(5)
    t0 = time.perf_counter()
    try:
        D.barrier("the test barrier")
        raise AssertionError("no timeout")
    except NetsiftError as e:
        assert "the test barrier failed" in str(e) and "within 2 s" in str(e)
    Path(out, f"ok{rank}").write_text(f"{time.perf_counter() - t0:.1f}")


@pytest.mark.slow
def test_collective_helpers_in_two_processes(tmp_path):
    import torch.multiprocessing as mp

    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        mp.spawn(_helpers_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    finally:
        if old is None:
            os.environ.pop("OMP_NUM_THREADS")
        else:
            os.environ["OMP_NUM_THREADS"] = old
    assert float((tmp_path / "ok0").read_text()) < 5  # process 0 did not wait for the late one beyond the timeout


def test_shards_partition_every_epoch():
    from netsift.data.loaders import epoch_order

    from netsift.distributed import share

    for epoch in range(3):
        parts = [epoch_order(103, True, 7, epoch, 3, r) for r in range(3)]
        assert sorted(torch.cat(parts).tolist()) == list(range(103))
    assert not torch.equal(epoch_order(103, True, 7, 0, 3, 0), epoch_order(103, True, 7, 1, 3, 0))
    for k, n in ((50, 2), (7, 3), (1, 2), (0, 2)):
        spans = [share(k, r, n) for r in range(n)]
        assert spans[0][0] == 0 and spans[-1][1] == k and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
        assert max(h - lo for lo, h in spans) - min(h - lo for lo, h in spans) <= 1


# --- greedy selection with the steps' prefixes shared between the processes --------------------------------

SELECT_CASES = [("resnet20", "gfs"), ("vgg11", "gfs"), ("vgg11", "gfs-replacement"), ("resnet20", "backward")]


def _greedy(name: str, method: str) -> tuple[list[list[int]], int, int]:
    """Channels kept by a greedy method on a random 16x16 network (BN with batch statistics, 5 steps per group
    for GFS, 5 eliminations per group for backward), the scorer's prefix MACs, and the minibatches drawn."""
    import itertools

    from torch import nn

    from netsift.models import build_model
    from netsift.selection import backward, gfs
    from netsift.selection.base import SelectionContext
    from netsift.selection.groups import build_graph, find_groups

    shape = (1, 16, 16)
    torch.manual_seed(0)
    model = build_model(name, 1, 16, 10, 0.25)
    model.train()
    with torch.no_grad():
        model(torch.randn(64, *shape, generator=torch.Generator().manual_seed(5)))
    model.eval()
    graph = build_graph(model, shape)
    groups = find_groups(model, shape, graph)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(24, *shape, generator=g), torch.randint(0, 10, (24,), generator=g)) for _ in range(7)]
    drawn = itertools.count()
    it = itertools.cycle(batches)

    def next_batch():
        next(drawn)
        return next(it)

    widths = [max(1, gr.size - 5) if method == "backward" else min(5, gr.size) for gr in groups]
    ctx = SelectionContext(model, groups, graph, shape, next_batch, batches[0], widths=widths, candidates=6, seed=0,
                           progress=False, max_batch=48, bn_batch_stats=True,
                           replacement=method == "gfs-replacement")
    sel = (backward.select if method == "backward" else gfs.select)(ctx)
    return [sel.kept[gr.name] for gr in groups], ctx.scorer.stats.prefix_macs, next(drawn)


def _greedy_worker(rank: int, store: str, out: str) -> None:
    import torch.distributed as dist

    os.environ["NETSIFT_SHARE_PREFIX"] = "always"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    results = {f"{name}/{method}": _greedy(name, method) for name, method in SELECT_CASES}
    Path(out, f"greedy{rank}.json").write_text(json.dumps(results))
    dist.destroy_process_group()  # as a script that set up the group itself would (netsift's own group: atexit)


@pytest.mark.slow
def test_greedy_selection_with_shared_prefixes_keeps_the_same_channels(tmp_path, monkeypatch):
    """GFS (with and without replacement) and backward elimination in 2 processes that share each step's prefix:
    the same channels as 1 process, every minibatch of the stream used once, each process computing about half
    of the prefixes."""
    import torch.multiprocessing as mp

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    mp.spawn(_greedy_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    two = [json.loads((tmp_path / f"greedy{r}.json").read_text()) for r in range(2)]
    for name, method in SELECT_CASES:
        kept, prefix_macs, drawn = _greedy(name, method)
        for r in range(2):
            got_kept, got_macs, got_drawn = two[r][f"{name}/{method}"]
            assert got_kept == kept, (name, method, r)
            assert got_drawn == drawn  # no minibatch drawn ahead and left unused
            assert 0 < got_macs < 0.75 * prefix_macs, (name, method, r, got_macs, prefix_macs)
