"""``netsift report``: tables and plots over any set of run folders (train, extract, prune).

:func:`collect` finds the run folders (a folder holding ``result.json``, or any folder below the given ones)
and flattens each into one row: every scalar of ``result.json`` plus every scalar setting of ``config.json``
as ``config.<section>.<key>`` (``config.train.lr``, ``config.prune.candidates``, ``config.data.train_subset``).
Runs that differ only in their seed form one *series* point (mean ± standard deviation over the seeds; runs that
differ in nothing, same settings and same seed, are *replicates* and are labelled so); a series is the command,
the method and the settings in which its runs differ from the usual value (``gfs bn_batch_stats=true``), with one
point per MACs or density target and fine-tune budget, on one network and data set. Networks are told apart by
their structure hash (``structure`` in ``result.json``; of the source network for a prune), never by class name
alone: a panel is ``<model> on <data>``, with the short hash (``custom:Net #1a2b3c4d``) for your own modules and
wherever one name covers several architectures. A ``train`` run kept
inside a ``prune`` run's folder (``runs/bench-structured/resnet20/gfs-0.5-s0/ft1``) is a *fine-tune* of that
selection: it joins its series, with its epochs as the fine-tune budget. :func:`report` writes

* ``report.csv`` (one row per run), ``summary.csv`` (one row per series point, mean and std over seeds or
  replicates), ``report.md`` (both tables, the channel groups kept whole with their reasons, and the plots) and
  the markdown tables on stdout,
* ``accuracy_vs_macs.png`` (prune: test accuracy against MACs, one panel per fine-tune budget),
  ``accuracy_vs_density.png`` (extract: test accuracy against the kept fraction of weights, log scale),
  ``training_curves.png`` (train loss and validation accuracy per epoch, from ``metrics.jsonl``),
  ``layer_widths.png`` (prune: kept fraction of each channel group) and ``layer_densities.png`` (extract:
  kept fraction of each layer's weights); a plot is left out when no run calls for it.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

from .errors import NetsiftError
from .selection import PUBLISHED

RESULT, CONFIG, METRICS = "result.json", "config.json", "metrics.jsonl"

AGGREGATED = ("test_acc", "val_acc", "test_acc_selected", "density", "macs", "macs_fraction", "params",
              "latency_b1_ms", "latency_b64_ms", "speedup_b64", "wall_s", "selection_s", "epochs_run")
"""Columns averaged over the seeds of a series point in ``summary.csv``."""

IGNORED_SETTINGS = {"seed", "data_seed", "source", "command", "method", "prune.method", "mask.method", "prune.macs",
                    "prune.tolerance", "mask.density", "prune.latency_threads", "prune.onnx", "data.data_dir",
                    "data.download", "train.cpu"}
"""Settings that never make a series: what is aggregated (seeds), plotted on the x-axis (targets), or
does not change the result."""


# ------------------------------------------------------------------------------------------- collect


@dataclasses.dataclass
class Run:
    """One run folder: its flat row, per-layer facts and per-epoch metrics."""

    path: Path
    row: dict[str, Any]
    layers: list[dict]
    groups: list[dict]
    metrics: list[dict]
    settings: dict[str, Any]  # flat config.json (without the "config." prefix)
    skipped: list[dict] = dataclasses.field(default_factory=list)  # prune: channel groups kept whole
    kind: str = ""  # train, extract, prune, or fine-tune (a train run inside a prune run's folder)
    parent: "Run | None" = None  # the prune run a fine-tune continues


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Run folders named by ``paths``: each path that holds ``result.json``, else every folder below it that
    does (nested benchmark work folders included), in a stable order."""
    found: dict[Path, None] = {}
    for p in map(Path, paths):
        if not p.exists():
            raise NetsiftError(f"no such run folder: {p}")
        if (p / RESULT).is_file():
            found[p] = None
        elif p.is_dir():
            for r in sorted(p.rglob(RESULT)):
                found[r.parent] = None
        else:
            raise NetsiftError(f"{p} is not a run folder (no {RESULT})")
    if not found:
        raise NetsiftError(f"no run folders (with a {RESULT}) in {', '.join(map(str, paths))}")
    return list(found)


def flatten(obj: Any, prefix: str = "", skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Nested dicts as one flat dict with dotted keys; lists and the keys in ``skip`` are left out."""
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if key in skip:
                continue
            if isinstance(v, dict):
                out.update(flatten(v, key, skip))
            elif not isinstance(v, list):
                out[key] = v
    return out


def load_run(path: Path, root: Path | None = None) -> Run:
    """Read one run folder (``result.json``, and ``config.json`` / ``metrics.jsonl`` where present), each through
    its reader in :mod:`netsift.readers` (schema-checked: a damaged file is a one-line error naming the field)."""
    from .readers import read_config, read_metrics, read_result

    result = read_result(path / RESULT)
    if not isinstance(result, dict):
        raise NetsiftError(f"{path / RESULT} is not a JSON object")
    config = read_config(path / CONFIG) if (path / CONFIG).is_file() else {}
    settings = flatten(config, skip=("model",))
    metrics = read_metrics(path / METRICS) if (path / METRICS).is_file() else []
    try:
        name = str(path.relative_to(root)) if root is not None else str(path)
    except ValueError:
        name = str(path)
    row = {"run": name, **{k: v for k, v in result.items() if not isinstance(v, (list, dict))}}
    row.update({f"config.{k}": v for k, v in settings.items()})
    return Run(path, row, result.get("layers") or [], result.get("groups") or [], metrics, settings,
               result.get("groups_skipped") or [])


def collect(paths: Iterable[str | Path]) -> list[Run]:
    """Every run folder under ``paths`` (see :func:`find_runs`), read."""
    paths = list(paths)
    folders = find_runs(paths)
    root = Path(paths[0]) if len(paths) == 1 and not (Path(paths[0]) / RESULT).is_file() else None
    runs = [load_run(f, root) for f in folders]
    by_path = {r.path.resolve(): r for r in runs}
    for r in runs:
        r.kind = str(r.row.get("command") or "")
        if r.kind == "train":
            parent = next((by_path[a] for a in r.path.resolve().parents if a in by_path), None)
            if parent is not None and parent.row.get("command") == "prune":
                r.kind, r.parent = "fine-tune", parent
        r.row["kind"] = r.kind
        r.row["parent"] = r.parent.row["run"] if r.parent else None
        if r.parent is not None:  # what the fine-tune's own result.json cannot know: the selection it continues
            for key in ("test_acc_selected", "density", "macs_fraction", "source_test_acc", "source_macs"):
                r.row[key] = r.parent.row.get(key)
    _name_panels(runs)
    return runs


def _arch(row: dict) -> str | None:
    """The structure hash a run's series is keyed by: its source network's for a prune, else its network's."""
    return row.get("source_structure") or row.get("structure")


def _name_panels(runs: list[Run]) -> None:
    """Set each run's ``arch`` (short structure hash) and ``panel`` (``<model>[ #hash] on <data>``): the hash is
    shown for your own modules and where one name covers several architectures; a fine-tune takes its parent's."""
    from .structure import short

    for r in runs:
        if r.parent is None:
            r.row["arch"] = short(_arch(r.row)) if _arch(r.row) else None
    for r in runs:
        if r.parent is not None:
            r.row["arch"] = r.parent.row.get("arch")
    hashes: dict[str, set] = defaultdict(set)
    for r in runs:
        hashes[_base_panel(r.row)].add(r.row.get("arch"))
    for r in runs:
        base, arch = _base_panel(r.row), r.row.get("arch")
        shown = arch and (str(r.row.get("model", "")).startswith("custom:") or len(hashes[base]) > 1)
        r.row["panel"] = base.replace(" on ", f" #{arch} on ", 1) if shown else base


# ------------------------------------------------------------------------------------------- series


def _known_defaults() -> dict[str, Any]:
    """Defaults of the settings (flat ``config.json`` keys), where netsift declares them."""
    from .config import DataConfig, TrainConfig
    from .masks import METHODS as MASK_METHODS
    from .masks import MaskConfig
    from .selection import METHODS as SELECTION_METHODS
    from .selection import PruneConfig

    out: dict[str, Any] = {}
    for section, cls in (("train", TrainConfig), ("data", DataConfig), ("mask", MaskConfig), ("prune", PruneConfig)):
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                out[f"{section}.{f.name}"] = f.default
    for section, methods in (("mask", MASK_METHODS), ("prune", SELECTION_METHODS)):
        for spec in methods.values():
            for name, option in spec.options.items():
                out[f"{section}.options.{name}"] = option.default
    return out


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def label_runs(runs: list[Run]) -> dict[int, str]:
    """The series label of each run: ``<method>`` plus the settings in which it differs from the usual value
    among the runs of the same command and method on the same network and data (a declared default, else the
    most common value): settings that only tell two networks' runs apart stay out of the legends."""
    defaults = _known_defaults()
    by_method: dict[tuple, list[int]] = defaultdict(list)
    for i, r in enumerate(runs):
        if r.kind != "fine-tune":
            by_method[(r.row.get("command"), r.row.get("method"), _panel(r.row))].append(i)
    labels: dict[int, str] = {}
    for (command, method, _), idx in by_method.items():
        keys = sorted({k for i in idx for k in runs[i].settings} - IGNORED_SETTINGS)
        varying = []
        for k in keys:
            values = [runs[i].settings.get(k) for i in idx]
            encoded = [json.dumps(v, sort_keys=True, default=str) for v in values]
            if len(set(encoded)) > 1:
                usual = defaults[k] if k in defaults and defaults[k] in values else values[encoded.index(
                    statistics.mode(encoded))]
                varying.append((k, usual))
        for i in idx:
            parts = [str(method or command)]
            published = runs[i].settings.get("prune.published") is True
            for k, usual in varying:
                v = runs[i].settings.get(k)
                # a published run's label says published=true, not each setting that implies
                name = k.split(".")[-1]
                if v != usual and not (published and name in PUBLISHED and PUBLISHED[name] == v):
                    parts.append(f"{name}={_value(v)}")
            labels[i] = " ".join(parts)
    index = {id(r): i for i, r in enumerate(runs)}
    for i, r in enumerate(runs):
        if r.kind == "fine-tune":
            labels[i] = labels[index[id(r.parent)]]
    return labels


def _target(run: Run) -> Any:
    """The x-axis target of a run: the budget of a prune (its MACs fraction; ``params F`` or ``latency F`` for the
    other budgets; ``tol T`` without one) and of its fine-tunes, the density target of an extract."""
    if run.parent is not None:
        return _target(run.parent)
    row = run.row
    if row.get("command") == "prune":
        for key, name in (("macs_target", None), ("params_target", "params"), ("latency_target", "latency")):
            if row.get(key) is not None:  # the budget the run was given
                return row[key] if name is None else f"{name} {row[key]:g}"
        return f"tol {row.get('tolerance')}"
    if row.get("command") == "extract":
        return row.get("density_target")
    return None


def _budget(run: Run) -> int | None:
    """Fine-tune epochs behind a prune run's test accuracy (0: right after selection), or a fine-tune's epochs."""
    if run.kind == "prune":
        return int(run.row.get("finetune_epochs") or 0) if run.row.get("finetuned") else 0
    if run.kind == "fine-tune":
        return int(run.row.get("epochs_run") or run.settings.get("train.epochs") or 0)
    return None


def _base_panel(row: dict) -> str:
    width = row.get("width")
    w = "" if width in (None, 1, 1.0) else f" x{_value(width)}"
    return f"{row.get('model')}{w} on {row.get('data')}"


def _panel(row: dict) -> str:
    """The network and data a run belongs to (see :func:`_name_panels`)."""
    return row.get("panel") or _base_panel(row)


def _over(n: int, seeds: list) -> str:
    """What a series point's mean and std are over: seeds, replicates (same settings and seed), or both."""
    if n == 1:
        return "1 run"
    if len(seeds) == 1:
        return f"{n} replicates (seed {seeds[0]})"
    extra = n - len(seeds)
    return f"{len(seeds)} seeds" + (f" (+{extra} replicate{'s' if extra > 1 else ''})" if extra else "")


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    vals = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    if not vals:
        return None, None
    return statistics.mean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def summarize(runs: list[Run], labels: dict[int, str]) -> list[dict]:
    """One row per (command, panel, series, target): the number of seeds and mean / std of :data:`AGGREGATED`."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, r in enumerate(runs):
        groups[(r.kind, _panel(r.row), labels[i], json.dumps(_target(r)), _budget(r))].append(i)
    out = []
    for (kind, panel, label, target, budget), idx in groups.items():
        seeds = [(runs[i].row.get("seed"), runs[i].row.get("data_seed")) for i in idx]
        distinct = list(dict.fromkeys(seeds))
        row = {"kind": kind, "model": panel, "series": label, "target": json.loads(target),
               "finetune_epochs": budget, "n": len(idx), "seeds": " ".join(str(s) for s, _ in distinct),
               "replicates": len(idx) - len(distinct), "over": _over(len(idx), [s for s, _ in distinct])}
        for k in AGGREGATED:
            mean, std = _mean_std([runs[i].row.get(k) for i in idx])
            row[k], row[f"{k}_std"] = mean, std
        out.append(row)
    order = {"train": 0, "extract": 1, "prune": 2, "fine-tune": 2}
    return sorted(out, key=lambda s: (order.get(s["kind"], 3), s["model"], s["series"],
                                      -(s["target"] if isinstance(s["target"], (int, float)) else 0),
                                      s["finetune_epochs"] or 0))


# ------------------------------------------------------------------------------------------- tables


def _cell(v: Any, column: str = "") -> str:
    if v is None:
        return ""
    if column in ("width", "target") and isinstance(v, (int, float)) and not isinstance(v, bool):
        return _value(float(v))
    if column.endswith("_s") and isinstance(v, float) and math.isfinite(v):
        return f"{v:,.1f}"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        if not math.isfinite(v):
            return ""
        return f"{v:.4f}" if abs(v) < 10 else f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v).replace("|", "\\|")


def markdown(rows: list[dict], columns: list[str]) -> str:
    """A markdown table; columns empty in every row are left out."""
    columns = [c for c in columns if any(r.get(c) not in (None, "") for r in rows)]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_cell(r.get(c), c) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def _pm(mean: float | None, std: float | None, n: int) -> str:
    if mean is None:
        return ""
    return f"{mean:.4f} ± {std:.4f}" if n > 1 else f"{mean:.4f}"


RUN_COLUMNS = ["run", "kind", "series", "model", "arch", "width", "data", "seed", "target", "test_acc", "val_acc",
               "test_acc_selected", "density", "macs", "macs_fraction", "params", "epochs_run", "wall_s"]


def write_csv(path: Path, rows: list[dict]) -> None:
    """``rows`` as CSV, with the union of their keys as columns (first-seen order)."""
    import io

    from .checkpoint import atomic_write_bytes

    columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=columns)
    w.writeheader()
    w.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())  # a new file: never written through a link planted there


def _save_figure(fig, path: Path) -> None:
    import io

    from .checkpoint import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, format="png")
    atomic_write_bytes(path, buf.getvalue())


def left_whole_section(runs: list[Run]) -> str:
    """Markdown: the channel groups prune runs kept whole, with the reason, per network (empty without prunes)."""
    prunes = [r for r in runs if r.kind == "prune"]
    if not prunes:
        return ""
    seen: dict[tuple, list[str]] = defaultdict(list)
    for r in prunes:
        for s in r.skipped:
            layers = s.get("layers") or ["?"]
            seen[(_panel(r.row), layers[0], len(layers) - 1, s.get("channels"), s.get("reason"))].append(r.row["run"])
    if not seen:
        return f"\n## Channel groups kept whole\n\nNone: every channel group of the {len(prunes)} prune runs was pruned.\n"
    rows = [{"model": panel, "layer": layer, "coupled layers": coupled, "channels": channels, "reason": reason,
             "runs": len(names)} for (panel, layer, coupled, channels, reason), names in seen.items()]
    return f"\n## Channel groups kept whole\n\n{markdown(rows, list(rows[0]))}\n"


# ------------------------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(labels: list[str]) -> dict[str, Any]:
    plt = _pyplot()
    cmap = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")
    return {label: cmap(i % cmap.N) for i, label in enumerate(sorted(labels))}


def _plain_ticks(ax, axis: str = "x", minor: bool = True) -> None:
    """Tick labels as plain numbers (0.05, 0.1, 0.5) instead of powers of ten on a log axis."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    fmt = FuncFormatter(lambda v, _: f"{v:g}")
    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_formatter(fmt)
    target.set_minor_formatter(fmt if minor else NullFormatter())


def _unit(values: list[float]) -> tuple[float, str]:
    top = max(values) if values else 1.0
    for scale, name in ((1e9, "billions"), (1e6, "millions"), (1e3, "thousands")):
        if top >= scale:
            return scale, f" ({name})"
    return 1.0, ""


def _references(ax, runs: list[Run], panel: str, command: str, key: str, prefix: str) -> None:
    """Horizontal dashed lines: the distinct reference accuracies of a panel (at most 4), each labelled."""
    refs: dict[str, list[float]] = defaultdict(list)
    for r in runs:
        if _panel(r.row) != panel:
            continue
        if command == "prune" and r.kind == "prune" and r.row.get(key) is not None:
            refs[str(r.row.get("source") or "source")].append(r.row[key])
        elif command == "train" and r.kind == "train" and r.row.get(key) is not None:
            refs[r.row.get("series") or "dense"].append(r.row[key])
    styles = ["--", ":", "-.", (0, (5, 1))]
    for j, (name, vals) in enumerate(sorted(refs.items())[:4]):
        mean, _ = _mean_std(vals)
        label = prefix if len(refs) == 1 else f"{prefix}: {name}"
        ax.axhline(mean, color="k", ls=styles[j], lw=1, label=f"{label} ({mean:.4f})")


def _legend(ax, n: int) -> None:
    if n > 6:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    else:
        ax.legend(fontsize=8)


def plot_accuracy_vs_macs(summary: list[dict], runs: list[Run], path: Path) -> bool:
    """Prune: test accuracy against MACs per series, one panel per fine-tune budget (0: right after selection,
    from ``test_acc_selected`` where the run also fine-tuned), one row of panels per network and data set."""
    points: dict[tuple[str, int], dict[str, dict]] = defaultdict(dict)  # (panel, budget) -> series -> target -> pt
    for s in summary:
        if s["kind"] not in ("prune", "fine-tune") or s["macs"] is None:
            continue
        key = json.dumps(s["target"])
        points[(s["model"], s["finetune_epochs"] or 0)].setdefault(s["series"], {})[key] = (
            s["macs"], s["test_acc"], s["test_acc_std"])
        if s["kind"] == "prune" and (s["finetune_epochs"] or 0) > 0 and s["test_acc_selected"] is not None:
            points[(s["model"], 0)].setdefault(s["series"], {}).setdefault(key, (
                s["macs"], s["test_acc_selected"], s["test_acc_selected_std"]))
    if not points:
        return False
    plt = _pyplot()
    panels = sorted({p for p, _ in points})
    budgets = sorted({b for _, b in points})
    colors = _colors(list({series for v in points.values() for series in v}))
    fig, axes = plt.subplots(len(panels), len(budgets), figsize=(6.3 * len(budgets) + 1.8, 4.2 * len(panels)),
                             squeeze=False)
    for p, panel in enumerate(panels):
        scale, unit = _unit([pt[0] for (pn, _), v in points.items() if pn == panel for d in v.values()
                             for pt in d.values()])
        for c, budget in enumerate(budgets):
            ax = axes[p][c]
            by_series = points.get((panel, budget), {})
            if not by_series:  # this network has no runs with this fine-tune budget: say so, draw no empty axes
                ax.axis("off")
                ax.text(0.5, 0.5, f"{panel}: no runs with {budget} fine-tune epoch{'s' if budget != 1 else ''}",
                        ha="center", va="center", fontsize=9, color="0.4", transform=ax.transAxes)
                continue
            for series in sorted(by_series):
                pts = sorted(by_series[series].values())
                ax.errorbar([pt[0] / scale for pt in pts], [pt[1] for pt in pts], yerr=[pt[2] or 0.0 for pt in pts],
                            marker="o", capsize=3, color=colors[series], label=series)
            _references(ax, runs, panel, "prune", "source_test_acc", "unpruned source")
            ax.set_xlabel(f"MACs per sample{unit}")
            ax.set_ylabel("test accuracy")
            when = "right after selection (no fine-tuning)" if budget == 0 else \
                f"after {budget} epoch{'s' if budget > 1 else ''} of fine-tuning"
            ax.set_title(f"{panel}: {when}", fontsize=10)
            ax.grid(alpha=0.3)
            if by_series:
                _legend(ax, len(by_series) + 1)
    fig.suptitle("Channel pruning: accuracy against MACs (mean ± std over seeds, or over replicates)", fontsize=11)
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)
    return True


def plot_accuracy_vs_density(summary: list[dict], runs: list[Run], path: Path) -> bool:
    """Extract: test accuracy against density (log scale), per series and panel; dense runs as a line."""
    rows = [s for s in summary if s["kind"] == "extract" and s["density"] is not None]
    if not rows:
        return False
    plt = _pyplot()
    panels = sorted({s["model"] for s in rows})
    colors = _colors(list({s["series"] for s in rows}))
    many = max(len({s["series"] for s in rows if s["model"] == p}) for p in panels) > 5
    fig, axes = plt.subplots(len(panels), 1, figsize=(11.0 if many else 8.0, 4.6 * len(panels)), squeeze=False)
    for ax, panel in zip(axes[:, 0], panels):
        series_names = sorted({s["series"] for s in rows if s["model"] == panel})
        for series in series_names:
            pts = sorted((s for s in rows if s["model"] == panel and s["series"] == series), key=lambda s: s["density"])
            ax.errorbar([s["density"] for s in pts], [s["test_acc"] for s in pts],
                        xerr=[s["density_std"] for s in pts], yerr=[s["test_acc_std"] for s in pts],
                        marker="o" if len(pts) > 1 else "*", markersize=6 if len(pts) > 1 else 11,
                        capsize=3, color=colors[series], label=series)
        _references(ax, runs, panel, "train", "test_acc", "dense trained")
        densities = [s["density"] for s in rows if s["model"] == panel and s["density"]]
        log = max(densities) / min(densities) > 3
        if log:
            ax.set_xscale("log")
            _plain_ticks(ax)
        ax.set_xlabel("density (kept fraction of the weights" + (", log scale)" if log else ")"))
        ax.set_ylabel("test accuracy")
        ax.set_title(f"{panel}: subnetworks of a frozen random network", fontsize=10)
        ax.grid(alpha=0.3, which="both")
        _legend(ax, len(series_names) + 1)
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)
    return True


def plot_training_curves(runs: list[Run], labels: dict[int, str], path: Path) -> bool:
    """Train loss and validation accuracy per epoch, mean over the seeds of each series (runs of 2+ epochs)."""
    curves: dict[str, list[list[dict]]] = defaultdict(list)
    for i, r in enumerate(runs):
        if len(r.metrics) >= 2:
            target = _target(r)
            name = f"{r.kind} {labels[i]}" + ("" if target is None else f" @ {_value(target)}")
            curves[f"{_panel(r.row)}: {name}"].append(r.metrics)
    if not curves:
        return False
    plt = _pyplot()
    colors = _colors(list(curves))
    fig, axes = plt.subplots(1, 2, figsize=(13.5 if len(curves) > 6 else 11, 4.4))
    for name, seeds in sorted(curves.items()):
        for ax, key in zip(axes, ("train_loss", "val_acc")):
            epochs = sorted({m["epoch"] for ms in seeds for m in ms if m.get(key) is not None})
            means = [_mean_std([m.get(key) for ms in seeds for m in ms if m["epoch"] == e])[0] for e in epochs]
            pts = [(e, v) for e, v in zip(epochs, means) if v is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", markersize=3, color=colors[name], label=name)
    axes[0].set_ylabel("train loss (mean over the epoch)")
    axes[1].set_ylabel("validation accuracy")
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    losses = [y for line in axes[0].get_lines() for y in line.get_ydata() if y > 0]
    if losses and max(losses) / min(losses) > 10:
        axes[0].set_yscale("log")
        _plain_ticks(axes[0], "y", minor=False)
    _legend(axes[1], len(curves))
    fig.suptitle("Training curves (metrics.jsonl; mean over seeds)", fontsize=11)
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)
    return True


def _layer_plot(lines: dict[tuple[str, str, str], tuple[list[str], list[float]]], path: Path, ylabel: str,
                title: str) -> bool:
    """One panel per network and data set, one line per (series, target); identical curves (every method pruned
    to the same widths at a MACs target) share one line whose label names them all."""
    if not lines:
        return False
    plt = _pyplot()
    panels = sorted({panel for panel, _, _ in lines})
    longest = max(len(xs) for xs, _ in lines.values())
    many = max(len([k for k in lines if k[0] == p]) for p in panels) > 6
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(8.0, min(18.0, 0.28 * longest + 4)) + (4 if many else 0),
                                                      4.4 * len(panels)), squeeze=False)
    for ax, panel in zip(axes[:, 0], panels):
        merged: dict[tuple, list[str]] = defaultdict(list)
        for (pn, series, target), (xs, ys) in lines.items():
            if pn == panel:
                merged[(tuple(xs), tuple(round(y, 4) for y in ys), target)].append(series)
        labels = {key: ", ".join(series) + (f" @ {key[2]}" if key[2] else "") for key, series in merged.items()}
        colors = _colors(list(labels.values()))
        for key in sorted(merged, key=lambda k: labels[k]):
            xs, ys, _ = key
            label = labels[key]
            ax.plot(range(len(xs)), ys, marker="o", markersize=3, color=colors[label],
                    label=label if len(label) <= 100 else label[:97] + "...")
        names = max((k[0] for k in merged), key=len)
        if len(names) <= 48:
            ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
        ax.set_xlabel("layer (input to output)" if len(names) <= 48 else "layer index (input to output)")
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{panel}: {title}", fontsize=10)
        ax.grid(alpha=0.3)
        _legend(ax, len(merged))
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)
    return True


def plot_layer_widths(runs: list[Run], labels: dict[int, str], path: Path) -> bool:
    """Prune: kept fraction of each channel group (from ``groups``), mean over seeds, per series and target."""
    acc: dict[tuple, list[list[dict]]] = defaultdict(list)
    for i, r in enumerate(runs):
        if r.kind == "prune" and r.groups:
            acc[(_panel(r.row), labels[i], _value(_target(r)))].append(r.groups)
    lines = {}
    for name, seeds in acc.items():
        names = [g["group"] for g in seeds[0]]
        ys = [_mean_std([s[j]["kept"] / s[j]["size"] for s in seeds if j < len(s) and s[j].get("size")])[0] or 0.0
              for j in range(len(names))]
        lines[name] = (names, ys)
    return _layer_plot(lines, path, "kept fraction of the group's channels",
                       "kept width of each channel group (mean over seeds)")


def plot_layer_densities(runs: list[Run], labels: dict[int, str], path: Path) -> bool:
    """Extract: kept fraction of each layer's weights (from ``layers``), mean over seeds, per series and target."""
    acc: dict[tuple, list[list[dict]]] = defaultdict(list)
    for i, r in enumerate(runs):
        if r.kind == "extract" and r.layers:
            target = _target(r)
            acc[(_panel(r.row), labels[i], "" if target is None else _value(target))].append(r.layers)
    lines = {}
    for name, seeds in acc.items():
        names = [layer["name"] for layer in seeds[0]]
        ys = [_mean_std([s[j]["density"] for s in seeds if j < len(s)])[0] or 0.0 for j in range(len(names))]
        lines[name] = (names, ys)
    return _layer_plot(lines, path, "density (kept fraction of the layer's weights)",
                       "weight-mask density of each layer (mean over seeds)")


# ------------------------------------------------------------------------------------------- report


def report(paths: Iterable[str | Path], out: str | Path = "report", plots: bool = True) -> dict[str, Any]:
    """Tabulate and plot the runs under ``paths`` into folder ``out``.

    Returns:
        ``{"runs": per-run rows, "summary": per-series rows, "markdown": the tables, "files": paths written}``.
    """
    from . import progress
    from .checkpoint import atomic_write_bytes
    from .rundir import check_output_file

    check_output_file(out, "report")  # a folder of its own: never a run folder, nor inside one
    runs = collect(paths)
    labels = label_runs(runs)
    for i, r in enumerate(runs):
        r.row["series"], r.row["target"], r.row["finetune_budget"] = labels[i], _target(r), _budget(r)
    summary = summarize(runs, labels)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [r.row for r in runs]
    first = ["run", "kind", "parent", "command", "series", "method", "model", "arch", "panel", "width", "data",
             "seed", "target", "finetune_budget"]
    write_csv(out / "report.csv", [{**{k: r.get(k) for k in first}, **r} for r in rows])
    write_csv(out / "summary.csv", summary)
    files = [out / "report.csv", out / "summary.csv"]
    summary_md = [{"kind": s["kind"], "model": s["model"], "series": s["series"], "target": s["target"],
                   "fine-tune ep": s["finetune_epochs"], "n": s["n"], "over": s["over"],
                   "test_acc": _pm(s["test_acc"], s["test_acc_std"], s["n"]),
                   "selected": _pm(s["test_acc_selected"], s["test_acc_selected_std"], s["n"]),
                   "density": s["density"], "macs": None if s["macs"] is None else int(round(s["macs"])),
                   "params": None if s["params"] is None else int(round(s["params"])), "wall_s": s["wall_s"]}
                  for s in summary]
    text = (f"## Runs ({len(runs)})\n\n{markdown(rows, RUN_COLUMNS)}\n\n## Summary (mean ± std over seeds; "
            f"replicates are runs with the same settings and seed)\n\n{markdown(summary_md, list(summary_md[0]))}\n"
            f"{left_whole_section(runs)}")
    if plots:
        with progress.stage("drawing the plots"):
            drawn = [name for name, ok in [
                ("accuracy_vs_macs.png", plot_accuracy_vs_macs(summary, runs, out / "accuracy_vs_macs.png")),
                ("accuracy_vs_density.png", plot_accuracy_vs_density(summary, runs, out / "accuracy_vs_density.png")),
                ("training_curves.png", plot_training_curves(runs, labels, out / "training_curves.png")),
                ("layer_widths.png", plot_layer_widths(runs, labels, out / "layer_widths.png")),
                ("layer_densities.png", plot_layer_densities(runs, labels, out / "layer_densities.png")),
            ] if ok]
        files += [out / name for name in drawn]
        text += "".join(f"\n![{name[:-4].replace('_', ' ')}]({name})\n" for name in drawn)
    atomic_write_bytes(out / "report.md", text.encode())
    files.append(out / "report.md")
    return {"runs": rows, "summary": summary, "markdown": text, "files": [str(f) for f in files]}


__all__ = ["Run", "collect", "find_runs", "flatten", "label_runs", "load_run", "markdown", "report",
           "summarize"]
