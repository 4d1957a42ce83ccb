"""The run's headline table: gold, proxy, the headline behaviour and KL, start -> end, per arm preset and method.

``rewardlab run`` prints it under the report's path when the pipeline ends, so the demonstration's result is on
the console without opening the page: for each method, the treatment arms (e.g. time-pressed raters) next to
their controls, each value the mean over the arm's seeds (from the report's ``summary.json``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import fmean
from typing import Any

from rich import box
from rich.table import Table

#: (column, summary key of the start value, of the end value, signed); a None start prints the end alone.
COLUMNS: tuple[tuple[str, str | None, str, bool], ...] = (
    ("gold", "gold_start", "gold_end", True),
    ("proxy", "proxy_start", "proxy_end", True),
    ("{behavior}", "behavior_start", "behavior_end", False),
    ("KL", None, "kl_end", False),
)


def _mean(values: Sequence[Any]) -> float:
    finite = [float(v) for v in values if isinstance(v, int | float) and math.isfinite(v)]
    return fmean(finite) if finite else math.nan


def headline_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (method, preset): role, seeds, and the mean over seeds of every COLUMNS value; the
    treatment presets first within each method, then the controls, in the order the arms appear."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    roles: dict[str, str] = {}
    for arm in summary.get("arms", {}).values():
        roles[arm["preset"]] = arm.get("role", "treatment")
        for method, m in arm.get("methods", {}).items():
            groups.setdefault((method, arm["preset"]), []).append(m)
    methods = list(dict.fromkeys(method for method, _ in groups))
    rows = []
    for method in methods:
        presets = [p for (m, p) in groups if m == method]
        for preset in sorted(presets, key=lambda p: roles[p] == "control"):  # stable: treatments first
            ms = groups[(method, preset)]
            row: dict[str, Any] = {"method": method, "preset": preset, "role": roles[preset], "seeds": len(ms),
                                   "behavior": ms[0].get("behavior") or "behaviour"}  # fmt: skip
            for _, start, end, _ in COLUMNS:
                if start:
                    row[start] = _mean([m.get(start) for m in ms])
                row[end] = _mean([m.get(end) for m in ms])
            rows.append(row)
    return rows


def _fmt(x: float, signed: bool) -> str:
    return "-" if math.isnan(x) else f"{x:+.3f}" if signed else f"{x:.3f}"


def headline_table(summary: dict[str, Any]) -> Table:
    """The rows of :func:`headline_rows` as a rich table that fits 80 columns: ``start→end`` per column, the
    controls marked ``*`` in the arm column (said in the caption), the seed counts in the title."""
    rows = headline_rows(summary)
    behavior = rows[0]["behavior"] if rows else "behaviour"
    seeds = sorted({r["seeds"] for r in rows})
    table = Table(title=f"headline: start→end, mean over {'/'.join(map(str, seeds)) or 0} seed(s)",
                  title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                  caption="* control arm" if any(r["role"] == "control" for r in rows) else None,
                  caption_justify="left")  # fmt: skip
    table.add_column("method")
    table.add_column(
        "arm", min_width=max((len(r["preset"]) + (r["role"] == "control") for r in rows), default=3)
    )
    for name, *_ in COLUMNS:
        table.add_column(
            name.format(behavior=behavior.removeprefix("behavior/")), justify="right", no_wrap=True
        )
    for r in rows:
        arm = f"{r['preset']}*" if r["role"] == "control" else r["preset"]
        cells = [r["method"], arm]
        for _, start, end, signed in COLUMNS:
            cells.append(
                f"{_fmt(r[start], signed)}→{_fmt(r[end], signed)}" if start else _fmt(r[end], signed)
            )
        table.add_row(*cells)
    return table
