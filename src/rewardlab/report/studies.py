"""Failure studies in the HTML report.

``rewardlab study NAME CONFIG`` leaves its tables (``<table>.md``, most with ``<table>.json``) and figures (``*.png``) in
the study's ``out_dir``; :func:`write_study_page` then adds ``study.json`` (what the folder holds) and a
self-contained ``report.html``. :func:`build_report <rewardlab.report.build.build_report>` shows every study whose
``study.json`` it finds under the run folder (one or two levels down: ``runs/default/study-irl``), so the studies
run on a demonstration sit in its report. This module reads files only; it knows no concrete study.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from rewardlab.report.html import CSS, esc, figure, table
from rewardlab.utils import atomic_write_text


def markdown_rows(text: str) -> tuple[list[str], list[list[str]]]:
    """The header and body cells of a pipe table (the ``.md`` a study writes)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("|")]
    if not lines:
        return [], []
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    body = [c for c in cells[1:] if not all(set(x) <= set("-: ") for x in c)]  # drop the |---| rule
    return cells[0], body


def write_study_page(out_dir: Path | str, name: str) -> Path:
    """``study.json`` and ``report.html`` in a finished study's ``out_dir``; returns the page's path."""
    out = Path(out_dir)
    manifest = {"study": name, "tables": sorted(p.stem for p in out.glob("*.md")),
                "figures": sorted(p.name for p in out.glob("*.png"))}  # fmt: skip
    atomic_write_text(out / "study.json", json.dumps(manifest, indent=2) + "\n")
    page = "\n".join(["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
                      f"<title>rewardlab study: {esc(name)}</title><style>{CSS}</style></head><body>",
                      study_section(out, level=1), "</body></html>"])  # fmt: skip
    return atomic_write_text(out / "report.html", page + "\n")


def study_section(out_dir: Path, level: int = 2) -> str:
    """One study's HTML: each table, each figure, and the settings and seconds its table recorded."""
    manifest = json.loads((out_dir / "study.json").read_text(encoding="utf-8"))
    h, sub = f"h{level}", f"h{level + 1}"
    parts = [f"<{h}>Study: {esc(manifest['study'])}</{h}>",
             f'<p class="meta">Folder: <code>{esc(out_dir)}</code></p>']  # fmt: skip
    for name in manifest.get("tables", []):
        headers, rows = markdown_rows((out_dir / f"{name}.md").read_text(encoding="utf-8"))
        parts += [f"<{sub}>{esc(name)}</{sub}>", table(headers, [(r, "") for r in rows])]
        parts += _settings(out_dir / f"{name}.json")
    for png in manifest.get("figures", []):
        parts.append(figure(out_dir / png, f"{manifest['study']} figure", png))
    return "\n".join(parts)


def _settings(path: Path) -> list[str]:
    """The study config and wall seconds recorded beside a table's rows, as a collapsed block."""
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    extra = {k: v for k, v in data.items() if k != "rows"}
    if not extra:
        return []
    text = yaml.safe_dump(extra, sort_keys=False, width=110)
    return [f"<details><summary>settings and seconds</summary><pre>{esc(text)}</pre></details>"]


def find_studies(run_dir: Path) -> list[Path]:
    """The study folders under ``run_dir`` (``study.json`` one or two levels down), by path."""
    found = {p.parent for pattern in ("*/study.json", "*/*/study.json") for p in run_dir.glob(pattern)}
    return sorted(found)


def study_sections(run_dir: Path) -> Sequence[str]:
    """The report's studies section: every study found under the run folder (nothing when there is none)."""
    dirs = find_studies(run_dir)
    if not dirs:
        return []
    intro = ('<h2>Failure studies</h2><p class="note">Studies run on this folder\'s models '
             "(<code>rewardlab study NAME CONFIG</code>; docs/failure-studies.md).</p>")  # fmt: skip
    return [intro, *(study_section(d, level=3) for d in dirs)]
