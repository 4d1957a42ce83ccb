"""The report's judge panel (issue 20, docs/rlaif.md): how an AI judge's labels compare with gold, next to
the simulated raters, and SL-CAI's rounds.

Read from each arm's stage summaries (nothing is recomputed from labels):

* ``<arm>/judge/summary.json``: the trained judge on held-out pairs (``rewardlab judge``): its disagreement
  with gold when both orders are averaged (overall and by difficulty), when deciding from one order
  (A shown first), its position bias ``mean((q_ab + q_ba)/2 - 1/2)`` and its order-flip rate (share of
  pairs whose one-order decision changes with the order); K and the rater of its training labels;
* ``<arm>/label/summary.json``: the labels the arm's reward model learned from: disagreement with gold
  (``rater/error_rate``, by difficulty), and for a judge arm the same judge statistics on those pairs;
* ``<arm>/reward/summary.json``: the reward model's accuracy against gold on held-out pairs;
* ``<arm>/slcai/rounds.jsonl`` (and ``summary.json``'s ``sft`` row): each SL-CAI round's audit.

:func:`judge_panel` gathers the numbers, :func:`plot_judge` draws the judge-by-difficulty figure,
:func:`render_panel` the HTML section (shown when an arm has ``label.source: judge``; SL-CAI's table when an
arm has rounds). With several seeds, each arm name also gets a mean-over-seeds row.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from rewardlab.report.html import Raw, figure, fmt, table

DIFFICULTIES = (1, 2, 3)
#: The numeric columns of a panel row, in table order: (key, header, format).
JUDGE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("judge/error_averaged", "judge error vs gold (held-out, both orders)", ".3f"),
    *((f"judge/error_averaged_d{d}", f"d{d}", ".2f") for d in DIFFICULTIES),
    ("judge/error_first_order", "one order (A first)", ".3f"),
    ("judge/position_bias", "position bias", "+.4f"),
    ("judge/order_flip_rate", "order flips", ".2f"),
    ("label/error_rate", "label error vs gold", ".3f"),
    *((f"label/error_rate_d{d}", f"d{d}", ".2f") for d in DIFFICULTIES),
    ("label/position_bias", "labels' position bias", "+.4f"),
    ("reward/accuracy_gold", "RM accuracy vs gold", ".3f"),
)
SLCAI_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("gold/mean", "gold", "+.3f"),
    ("gold/accuracy", "accuracy", ".3f"),
    ("behavior/sycophancy_rate", "sycophancy", ".3f"),
    ("behavior/parse_rate", "parse rate", ".3f"),
)


@dataclass
class JudgePanel:
    """The panel's data: one row per arm (rater arms too), mean rows per arm name, SL-CAI rounds."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    means: list[dict[str, Any]] = field(default_factory=list)
    slcai: list[dict[str, Any]] = field(default_factory=list)

    @property
    def has_judge(self) -> bool:
        return any(r["source"] == "judge" for r in self.rows)

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "means": self.means, "slcai": self.slcai}


# ------------------------------------------------------------------------------------------ reading
def _read_json(path: Path) -> dict[str, Any]:
    try:
        out = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return out if isinstance(out, dict) else {}


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            out.append(row)
    return out


def _num(v: Any) -> float | None:
    """A finite float, else None (missing, NaN, text)."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v) if math.isfinite(v) else None


def _arm_meta(d: Path) -> dict[str, Any]:
    """name, seed, role, source of an arm folder (``arm.json``, else the ``<name>-s<seed>`` folder name)."""
    meta = _read_json(d / "arm.json")
    m = re.match(r"^(.*)-s(\d+)$", d.name)
    name = meta.get("name") or meta.get("preset") or (m.group(1) if m else d.name)
    seed = meta.get("seed", int(m.group(2)) if m else None)
    source = meta.get("source") or ("judge" if (d / "judge" / "summary.json").is_file() else "simulated")
    role = meta.get("role") or ("control" if name == "unbiased" else "treatment")
    return {"arm": d.name, "name": str(name), "seed": seed, "role": role, "source": source}


def judge_row(d: Path) -> dict[str, Any]:
    """One arm's panel row from its judge, label and reward summaries (None where a number is absent)."""
    judge, label, reward = (_read_json(d / s / "summary.json") for s in ("judge", "label", "reward"))
    row: dict[str, Any] = _arm_meta(d)
    row["judge_labels"] = judge.get("labels")
    row["judge_rater"] = judge.get("rater")
    row["judge/error_averaged"] = _num(judge.get("judge/error_averaged"))
    for dd in DIFFICULTIES:
        row[f"judge/error_averaged_d{dd}"] = _num(judge.get(f"judge/error_averaged_difficulty_{dd}"))
        row[f"label/error_rate_d{dd}"] = _num(label.get(f"rater/by_difficulty_{dd}_error_rate"))
    for k in ("error_first_order", "position_bias", "order_flip_rate"):
        row[f"judge/{k}"] = _num(judge.get(f"judge/{k}"))
        row[f"label/{k}"] = _num(label.get(f"judge/{k}"))
    row["label/error_rate"] = _num(label.get("rater/error_rate"))
    row["reward/accuracy_gold"] = _num(reward.get("eval/accuracy_gold"))
    return row


def slcai_rounds(d: Path) -> list[dict[str, Any]]:
    """``<arm>/slcai/rounds.jsonl``, then the SFT model's audit (``summary.json``'s ``sft`` row) if not in it."""
    rounds = _read_jsonl(d / "slcai" / "rounds.jsonl")
    if not rounds:
        return []
    seen = {str(r.get("round")) for r in rounds}
    extra = [r for r in _read_json(d / "slcai" / "summary.json").get("rounds", []) if isinstance(r, dict)]
    rounds += [r for r in extra if str(r.get("round")) not in seen]
    meta = _arm_meta(d)
    return [{"arm": meta["arm"], "name": meta["name"], "seed": meta["seed"], "round": r.get("round"),
             **{k: _num(r.get(k)) for k, _, _ in SLCAI_COLUMNS}} for r in rounds]  # fmt: skip


def _mean(rows: Sequence[Mapping[str, Any]], key: str) -> float | None:
    vals = [v for r in rows if (v := r.get(key)) is not None]
    return float(np.mean(vals)) if vals else None


def mean_rows(
    rows: Sequence[Mapping[str, Any]], group: Sequence[str], keys: Sequence[str]
) -> list[dict[str, Any]]:
    """Mean over seeds of each ``keys`` column per ``group`` (e.g. the arm name), for groups of 2+ seeds."""
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r[g] for g in group), []).append(r)
    out = []
    for g, rs in groups.items():
        if len(rs) < 2:
            continue
        seeds = sorted(r["seed"] for r in rs if r.get("seed") is not None)
        out.append({**dict(zip(group, g, strict=True)), **{k: rs[0].get(k) for k in ("source", "role") if k in rs[0]},
                    "seeds": seeds, "n_seeds": len(rs), **{k: _mean(rs, k) for k in keys}})  # fmt: skip
    return out


def _arm_dirs(run_dir: Path) -> list[Path]:
    return sorted(
        p for p in run_dir.iterdir()
        if p.is_dir() and any((p / s).is_file() for s in ("arm.json", "label/summary.json", "judge/summary.json"))
    )  # fmt: skip


def judge_panel(run_dir: Path | str) -> JudgePanel:
    """The judge panel of ``run_dir``: a row per arm (judge arms first), means over seeds, SL-CAI rounds."""
    dirs = _arm_dirs(Path(run_dir))
    rows = sorted((judge_row(d) for d in dirs),
                  key=lambda r: (r["source"] != "judge", r["role"] == "control", r["name"], r["seed"] or 0))  # fmt: skip
    keys = [k for k, _, _ in JUDGE_COLUMNS]
    means = mean_rows(rows, ["name"], keys)
    for m in means:
        m.update(
            {k: next(r[k] for r in rows if r["name"] == m["name"]) for k in ("judge_labels", "judge_rater")}
        )
    slcai = [r for d in dirs for r in slcai_rounds(d)]
    for r in slcai:
        r["round"] = str(r["round"])
    slcai += [
        {**m, "mean": True} for m in mean_rows(slcai, ["name", "round"], [k for k, _, _ in SLCAI_COLUMNS])
    ]
    slcai.sort(key=lambda r: (r["name"], r.get("mean", False), r.get("seed") or 0, _round_key(r["round"])))
    return JudgePanel(rows, means, slcai)


def _round_key(r: str) -> tuple[int, str]:
    return (0, f"{int(r):06d}") if r.isdigit() else (1, r)


# ------------------------------------------------------------------------------------------- figure
def _nanmean(values: Sequence[float]) -> float:
    """Mean of the finite values; NaN (no bar) when there are none."""
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def plot_judge(panel: JudgePanel, out: Path | str) -> Path:
    """Agreement with gold by difficulty: left, each judge on held-out pairs (both orders averaged); right,
    the labels each arm's reward model learned from (judges and raters). Bars: mean over seeds; dots: seeds."""
    fig = Figure(figsize=(11, 3.8))
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, sharey=True)
    judged = [r for r in panel.rows if r["source"] == "judge" and r["judge/error_averaged"] is not None]
    labelled = [r for r in panel.rows if r["label/error_rate"] is not None]
    for ax, rows, prefix, title in (
        (left, judged, "judge/error_averaged_d", "Judges on held-out pairs (orders averaged)"),
        (right, labelled, "label/error_rate_d", "The arm's labels (what the reward model learned)"),
    ):
        names = list(dict.fromkeys(r["name"] for r in rows))
        width = 0.8 / max(len(names), 1)
        for i, name in enumerate(names):
            xs = [d + width * (i - (len(names) - 1) / 2) for d in DIFFICULTIES]
            per_seed = [[1 - r[f"{prefix}{d}"] if r[f"{prefix}{d}"] is not None else np.nan for d in DIFFICULTIES]
                        for r in rows if r["name"] == name]  # fmt: skip
            ys = [_nanmean(col) for col in zip(*per_seed, strict=True)]
            ax.bar(xs, ys, width=width, label=f"{name} ({len(per_seed)} seed{'s' * (len(per_seed) > 1)})")
            for s in per_seed:
                ax.plot(xs, s, "o", ms=3, color="black", alpha=0.6, zorder=3)
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set(
            xticks=DIFFICULTIES,
            xlabel="difficulty (digits)",
            title=title,
            ylim=(0, 1.3),
            yticks=np.linspace(0, 1, 6),
        )
        if not names:
            ax.text(
                0.5, 0.5, "nothing to show", ha="center", va="center", transform=ax.transAxes, color="grey"
            )
        else:
            ax.legend(fontsize=7, loc="upper center", ncol=3)
    left.set_ylabel("agreement with gold")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, metadata={"Software": None})
    return out


# --------------------------------------------------------------------------------------------- HTML
JUDGE_NOTE = (
    "Judge arms (<code>label.source: judge</code>) next to the rater arms. Held-out: the trained judge on pairs "
    "it never saw (<code>&lt;arm&gt;/judge/summary.json</code>): disagreement with gold when both orders are "
    "averaged, by difficulty (d1/d2/d3), and deciding from one order; position bias = mean((q<sub>ab</sub> + "
    "q<sub>ba</sub>)/2 &minus; 1/2) (negative: a pull toward the second slot); order flips = share of pairs "
    "whose one-order decision changes with the order. Labels: the pairs the arm's reward model learned from "
    "(<code>label/summary.json</code>), against gold. RM accuracy: the reward model on held-out pairs, against "
    "gold. Mean rows average the seeds of an arm."
)
SLCAI_NOTE = (
    "SL-CAI (<code>&lt;arm&gt;/slcai/rounds.jsonl</code>): round 0 is the response policy's answers, each later "
    "round a revision of the previous one; <em>sft</em> is the response policy fine-tuned on the last revisions; "
    "all audited on the same held-out prompts."
)


def _k(r: Mapping[str, Any]) -> str:
    if r.get("judge_labels") is None:
        return "–" if r.get("source") != "judge" else "(given model)"
    return f"{r['judge_labels']} ({r.get('judge_rater') or '?'})"


def rows_with_means(panel: JudgePanel) -> list[dict[str, Any]]:
    """The panel's rows, each arm name's mean-over-seeds row right after its seeds."""
    means = {m["name"]: m for m in panel.means}
    out: list[dict[str, Any]] = []
    for i, r in enumerate(panel.rows):
        out.append(r)
        last_of_name = i + 1 == len(panel.rows) or panel.rows[i + 1]["name"] != r["name"]
        if last_of_name and r["name"] in means:
            out.append(means[r["name"]])
    return out


def _judge_table_rows(panel: JudgePanel) -> list[tuple[list[Any], str]]:
    out = []
    for r in rows_with_means(panel):
        seed = f"mean of {r['n_seeds']}" if "n_seeds" in r else "–" if r["seed"] is None else str(r["seed"])
        cls = "pooled" if "n_seeds" in r else "control" if r["role"] == "control" else "biased"
        out.append(([r.get("arm", r["name"]), seed, r["source"], _k(r), *(fmt(r[k], f) for k, _, f in JUDGE_COLUMNS)],
                    cls))  # fmt: skip
    return out


def _slcai_table_rows(panel: JudgePanel) -> list[tuple[list[Any], str]]:
    out = []
    for r in panel.slcai:
        mean = r.get("mean")
        who = f"{r['name']} (mean of {r['n_seeds']})" if mean else r["arm"]
        out.append(
            ([who, r["round"], *(fmt(r[k], f) for k, _, f in SLCAI_COLUMNS)], "pooled" if mean else "")
        )
    return out


def render_panel(panel: JudgePanel, png: Path | None) -> str:
    """The HTML sections: the judge panel when an arm is a judge arm, SL-CAI's rounds when an arm has them."""
    parts = []
    if panel.has_judge:
        heads = ["arm", "seed", "source", "judge trained on K (rater)", *(h for _, h, _ in JUDGE_COLUMNS)]
        parts += ["<h2>AI judge</h2>", f'<p class="note">{JUDGE_NOTE}</p>',
                  table(heads, _judge_table_rows(panel), num_cols=range(4, len(heads))),
                  figure(png, "Judge figure", "Agreement with gold by difficulty (digits): left, each judge on held-out "
                         "pairs, both orders averaged; right, the labels each arm's reward model learned from. Bars: "
                         "mean over seeds; dots: seeds; dashed: chance.")]  # fmt: skip
    if panel.slcai:
        heads = ["arm", "round", *(h for _, h, _ in SLCAI_COLUMNS)]
        parts += ["<h2>SL-CAI: critique and revision rounds</h2>", f'<p class="note">{SLCAI_NOTE}</p>',
                  table(heads, _slcai_table_rows(panel), num_cols=range(2, len(heads)))]  # fmt: skip
    return Raw("\n".join(parts))


__all__ = [
    "JudgePanel",
    "judge_panel",
    "judge_row",
    "mean_rows",
    "plot_judge",
    "render_panel",
    "rows_with_means",
    "slcai_rounds",
]
