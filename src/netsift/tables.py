"""Plain-text tables for the terminal (the CLI's output, benchmark summaries)."""

from __future__ import annotations

from typing import Any


def format_table(rows: list[Any], columns: list[str]) -> str:
    """A plain-text table of ``rows`` (dicts or results; floats below 10 shown with 4 decimals)."""
    def cell(v):
        if isinstance(v, bool):
            return str(v).lower()
        if isinstance(v, float):
            return f"{v:.4f}" if abs(v) < 10 else f"{v:,.1f}"
        if isinstance(v, int):
            return f"{v:,}"
        return "" if v is None else str(v)
    body = [[cell(r.get(c) if isinstance(r, dict) else r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) if body else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(b, widths))) for b in body]
    return "\n".join(lines)
