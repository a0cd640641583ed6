"""What the coverage benchmarks (``tv_coverage.py``, ``timm_coverage.py``) share: one round trip classified as
pass / fail / refused in a worker process, the worker run under a time limit, the groups left whole, a table row
and the sweep that merges records across invocations."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]


def attempt(trip: Callable[[], dict], t0: float, c0: float, exclude_explain: bool = False, **fields) -> dict:
    """Run ``trip`` (a ``round_trip`` of ``tests/prune_roundtrip.py``) and classify it: ``pass`` when the reloaded
    network equals the pruned one, ``refused`` on a one-line ``NetsiftError``, ``fail`` otherwise. ``fields``
    (model, method, image size) are added, with the wall and CPU seconds since ``t0``/``c0`` (less the second
    graph analysis that names the groups left whole, with ``exclude_explain``)."""
    from netsift.errors import NetsiftError
    from prune_roundtrip import reloaded_equal

    try:
        r = trip()
        r["status"] = "pass" if reloaded_equal(r) else "fail"
        if r["status"] == "fail":
            r["reason"] = (f"reloaded network differs by {r['reload_max_diff']:.3g} (logits), "
                           f"{r['features_max_diff']:.3g} (the logits layer's input)")
    except NetsiftError as e:
        r = {"status": "refused", "reason": str(e)}
    except Exception as e:  # noqa: BLE001 - a raw exception is what the benchmark looks for
        r = {"status": "fail", "reason": f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"}
    explain = r.get("explain_s", 0.0) if exclude_explain else 0.0
    r.update(**fields, wall_s=time.perf_counter() - t0 - explain, cpu_s=time.process_time() - c0 - explain)
    return r


def run_worker(cmd: list[str], timeout: float, fields: dict) -> dict:
    """Run a worker process (1 thread) and return the record it prints (``RESULT {json}``); a timeout or a worker
    that dies is a failure record with ``fields`` (model, method, ...) and the reason."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {**fields, "status": "timeout", "reason": f"no result within {timeout:.0f} s",
                "wall_s": time.perf_counter() - t0}
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (p.stderr.strip().splitlines() or ["(no output)"])[-1]
    return {**fields, "status": "fail", "reason": f"worker exited {p.returncode}: {tail}",
            "wall_s": time.perf_counter() - t0}


def whole(records: list[dict]) -> str:
    """Groups left whole in ``records`` and their reasons (counted by kind)."""
    sys.path[:0] = [str(ROOT / "tests")]
    from prune_roundtrip import left_whole_summary

    n, kinds = left_whole_summary(records)
    return f"{n}" + (f" ({'; '.join(f'{c}x {k}' for k, c in kinds)})" if n else "")


def header(load_back: bool) -> list[str]:
    """The table's header lines (``load_back``: with a load-back column)."""
    cols = ["model", "method", "px", "status", "MACs kept (target 0.50)", "groups", "left whole (reasons)",
            "selection s", "total s (cpu s)", *(["load-back"] if load_back else []), "note / reason"]
    return ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]


def row(r: dict, load_back: bool) -> str:
    """One record as a table row."""
    reason = r.get("reason", "").replace("|", "/")
    if "macs_fraction" in r:
        back = [("ok" if r["status"] == "pass" else "-")] if load_back else []
        cells = [r["model"], r["method"], r["image_size"], r["status"], f"{r['macs_fraction']:.3f}", r["groups"],
                 whole([r]).replace("|", "/"), f"{r['selection_s']:.1f}",
                 f"{r['wall_s']:.1f} ({r.get('cpu_s', float('nan')):.1f} cpu)", *back, reason]
    else:
        cells = [r["model"], r["method"], r.get("image_size") or "-", r["status"], "-", "-", "-", "-",
                 f"{r['wall_s']:.1f}", *(["-"] if load_back else []), reason]
    return "| " + " | ".join(str(c) for c in cells) + " |"


def sweep(names: list[str], methods: list[str], records: list[dict], out: Path, redo: bool,
          run: Callable[[str, str], dict], write: Callable[[list[dict]], None], width: int = 22) -> list[dict]:
    """Run every (model, method) not in ``records`` yet (all of them with ``redo``), saving the records and the
    table after each, and printing one line per run."""
    done = {(r["model"], r["method"]) for r in records}
    for name in names:
        for method in methods:
            if (name, method) in done and not redo:
                continue
            r = run(name, method)
            records = [x for x in records if (x["model"], x["method"]) != (name, method)] + [r]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(records, indent=1))
            write(records)
            print(f"{name:{width}s} {method:8s} {r['status']:8s} {r['wall_s']:6.1f}s "
                  f"{r.get('macs_fraction', float('nan')):.3f} {r.get('reason', '')}", flush=True)
    return records
