"""Render the audit report as one self-contained HTML page.

Images are embedded as ``data:image/png;base64`` URIs and the CSS is inline, so the file can be
mailed or opened offline; there is no JavaScript. Every piece of text that comes from a run (model
responses, prompts, arm and method names, paths, warnings) goes through :func:`html.escape`:
:func:`cell` escapes by default and only :class:`Raw` strings (built here) pass through.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rewardlab.report.analysis import method_label

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1280px;
       padding: 0 1.5em; color: #222; line-height: 1.45; }
h1 { font-size: 1.7em; margin-bottom: 0.2em; }
h2 { font-size: 1.3em; margin-top: 2em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
p.lead { font-size: 1.02em; max-width: 60em; }
.meta { color: #666; font-size: 0.9em; }
figure { margin: 1em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; max-width: 60em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.88em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.55em; vertical-align: top; }
th { background: #f3f3f3; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.text { font-family: ui-monospace, Menlo, Consolas, monospace; white-space: pre-wrap; word-break: break-word;
          max-width: 34em; }
tr.biased td:first-child { border-left: 4px solid #d62728; }
tr.control td:first-child { border-left: 4px solid #2ca02c; }
tr.stage-start td { border-top: 2px solid #888; }
tr.pooled td { background: #f7f7f7; font-style: italic; }
.neg { color: #b00; }
.pos { color: #070; }
.note { color: #666; font-size: 0.9em; }
ul.warnings { color: #8a5a00; font-size: 0.9em; }
"""


class Raw(str):
    """HTML that is already safe (built by this module); :func:`cell` does not escape it."""


def esc(v: Any) -> str:
    """``html.escape`` of ``str(v)`` (quotes too)."""
    return html.escape(str(v), quote=True)


def fmt(v: Any, spec: str = ".3f") -> str:
    """A number for a table; ``–`` for missing or non-finite values."""
    if v is None or isinstance(v, bool):
        return "–" if v is None else str(v)
    try:
        x = float(v)
    except (TypeError, ValueError):
        return str(v)
    return "–" if not math.isfinite(x) else format(x, spec)


def signed(v: Any, spec: str = "+.3f") -> Raw:
    """A signed number colored by sign (red for a loss)."""
    s = fmt(v, spec)
    try:
        x = float(v)
    except (TypeError, ValueError):
        return Raw(esc(s))
    cls = "neg" if x < 0 else "pos" if x > 0 else ""
    return Raw(f'<span class="{cls}">{esc(s)}</span>' if cls else esc(s))


def cell(v: Any, cls: str = "") -> str:
    body = v if isinstance(v, Raw) else esc(v)
    return f'<td class="{cls}">{body}</td>' if cls else f"<td>{body}</td>"


def table(headers: Sequence[str], rows: Iterable[tuple[Sequence[Any], str]], num_cols: Iterable[int] = (),
          text_cols: Iterable[int] = (), caption: str | None = None) -> str:  # fmt: skip
    """An HTML table; ``rows`` are ``(cells, row_class)``; cells are escaped unless :class:`Raw`."""
    nums, texts = set(num_cols), set(text_cols)
    out = ["<table>"]
    if caption:
        out.append(f"<caption>{esc(caption)}</caption>")
    out.append("<tr>" + "".join(f"<th>{esc(h)}</th>" for h in headers) + "</tr>")
    for cells, row_cls in rows:
        tds = "".join(
            cell(v, "num" if i in nums else "text" if i in texts else "") for i, v in enumerate(cells)
        )
        out.append(f'<tr class="{esc(row_cls)}">{tds}</tr>' if row_cls else f"<tr>{tds}</tr>")
    out.append("</table>")
    return "\n".join(out)


def data_uri(png: Path) -> str:
    """``data:image/png;base64,...`` of a PNG file."""
    return "data:image/png;base64," + base64.b64encode(Path(png).read_bytes()).decode("ascii")


def figure(png: Path | None, alt: str, caption: str) -> str:
    if png is None or not Path(png).is_file():
        return f'<p class="note">({esc(alt)}: figure not available)</p>'
    return (f'<figure><img src="{data_uri(png)}" alt="{esc(alt)}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>")  # fmt: skip


# ---------------------------------------------------------------------------------------- sections
INTRO = (
    "An optimizer (PPO and friends, DPO, best-of-n sampling, offline methods) pushes a policy to score high "
    "on a <em>proxy</em>: a reward model learned from feedback (simulated raters, a file of human labels, "
    "...). Where the task has one, a hidden <em>gold</em> reward, which the optimizer never sees, measures "
    "what we actually want. The x-axis is how far the policy has moved from where it started, "
    "d = &radic;KL(&pi; &Vert; &pi;<sub>ref</sub>) in &radic;nats. Goodhart's law says that once a measure "
    "becomes a target it stops being a good measure: the proxy keeps rising with d, while gold rises at "
    "first and then peaks and falls as the policy learns to exploit the feedback's biases (the task's "
    "headline behaviour shows how). Treatment arms (e.g. biased raters) are compared with their declared "
    "controls. The dashed curves are the over-optimization laws of Gao, Schulman &amp; "
    "Hilton (2022), R(d) = d(a &minus; b&middot;d) for best-of-n and R(d) = d(a &minus; b&middot;log d) for "
    "RL, fitted to gold relative to its start; b &gt; 0 means gold eventually declines, and the law's "
    "peak is at KL* = d*&sup2;."
)


CAPTIONS = {
    "goodhart": "Left: gold reward; right: proxy reward; x: √KL from the starting policy (top axis: KL). "
    "Color: method; line style: rater preset (dotted: unbiased control). Stars mark where the 3-point "
    "moving average of gold peaks; dashed curves are the fitted laws.",
    "behavior": "The task's behaviour metrics (its headline first) vs √KL, biased arms and controls.",
    "evals": "Behaviour evaluations run by the audit (audit_evals: Anthropic's model-written evals, TruthfulQA, "
    "GSM8K; docs/evals.md) vs √KL: the rate of the behaviour each set is named after.",
    "gold_parts": "Change since the start of each part of gold the task declares (and unparseable "
    "responses) for the biased arm(s); the black line is the total.",
    "side_by_side": "Gold (when the task has it), proxy and the task's headline behaviour over optimization "
    "steps, the biased arm(s) next to the controls (gold and the behaviour share a y scale across columns).",
}
LAW_NOTE = (
    "Gold relative to its value at the start, fitted by least squares with no intercept. R² is on the "
    "fitted points. KL* is where the law peaks (“beyond the data” when past the largest KL observed: an "
    "extrapolation, not a finding); gain at peak is R(d*) in gold units, shown only for peaks within the "
    "data. The last column is the KL at the observed (smoothed) gold peak. Pooled rows fit all seeds of a "
    "preset together."
)
LAW_HEADERS = ("method", "arm", "preset", "law", "points", "a", "b", "R²", "KL* (law peak, nats)",
               "gold gain at peak", "KL at observed peak")  # fmt: skip
SUMMARY_NOTE = (
    "Peak: maximum of the 3-point centered moving average of gold (the raw maximum of noisy readings is "
    "biased upward). Gold attribution: change of each gold part from the first to the last evaluation; "
    "“unparseable” is the change the parts do not explain (unparseable responses count only in total "
    "gold). The five attribution columns sum to the gold change."
)


def summary_headers(task: Mapping[str, Any]) -> tuple[str, ...]:
    """The per-arm table's columns: the task's headline behaviour and its gold parts."""
    head = task.get("headline") or "length"
    return ("arm", "method", "last", "gold start", "gold peak", "peak at", "gold end", "Δ gold", "proxy start",
            "proxy end", f"{head} start", f"{head} end", "KL end",
            *(f"Δ {p}" for p in (*task.get("gold_parts", ()), "unparseable") if task.get("has_gold", True)))  # fmt: skip


def _law_cells(law: Mapping[str, Any]) -> list[Any]:
    gain = signed(law["peak_value"]) if law.get("peak_in_range") else "–"
    return [
        law["n_points"],
        fmt(law["a"], ".4g"),
        fmt(law["b"], ".4g"),
        fmt(law["r2"], ".3f"),
        _kl_peak(law),
        gain,
    ]


def _law_rows(summary: Mapping[str, Any]) -> list[tuple[list[Any], str]]:
    """One row per (method, arm), grouped by method; pooled multi-seed fits after their method's arms."""
    methods: list[str] = []
    keyed: list[tuple[tuple[int, int, int], tuple[list[Any], str]]] = []
    for k, (arm, a) in enumerate(summary["arms"].items()):
        for m, s in a["methods"].items():
            if m not in methods:
                methods.append(m)
            law = s.get("law")
            form = "best-of-n" if s["kind"] == "bon" else "RL"
            head = [m, arm, a["preset"], form]
            if law is None:
                why = Raw(f'<span class="note">not fitted: {esc(s.get("law_error") or "")}</span>')
                cells = [*head, s["n_points"], why, "–", "–", "–", "–", "–"]
            else:
                cells = [*head, *_law_cells(law), fmt(s.get("gold_peak_kl"), ".3g")]
            keyed.append(((methods.index(m), 0, k), (cells, "biased" if a["biased"] else "control")))
    for k, g in enumerate(summary.get("pooled_laws", [])):
        if g["method"] not in methods:
            methods.append(g["method"])
        law = g.get("law")
        head = [g["method"], f"all {g['n_seeds']} seeds of {g['preset']}", g["preset"], "pooled"]
        cells = [*head, *(_law_cells(law) if law else ["–"] * 6), "–"]
        keyed.append(((methods.index(g["method"]), 1, k), (cells, "pooled")))
    return [row for _, row in sorted(keyed, key=lambda t: t[0])]


def _kl_peak(law: Mapping[str, Any]) -> str:
    if law.get("kl_peak") is None:
        return "no peak (b ≤ 0)"
    beyond = "" if law.get("peak_in_range") else " (beyond the data)"
    return fmt(law["kl_peak"], ".3g") + beyond


def _x(s: Mapping[str, Any], x: Any) -> str:
    if x is None:
        return "–"
    return f"{s['x_key']} {fmt(x, '.0f')}"


def _summary_rows(summary: Mapping[str, Any]) -> list[tuple[list[Any], str]]:
    task = summary.get("task", {})
    parts = (*task.get("gold_parts", ()), "unparseable") if task.get("has_gold", True) else ()
    pct = ".1%" if task.get("headline") else ".1f"
    rows = []
    for arm, a in summary["arms"].items():
        for m, s in a["methods"].items():
            att = s.get("attribution", {})
            name = m + ("" if s.get("finished", True) else f" (did not finish: {s.get('status')})")
            name += "".join(f" [WARNING: {w}]" for w in s.get("run_warnings") or [])
            rows.append(([arm, name, _x(s, s["x_end"]), fmt(s["gold_start"]), fmt(s["gold_peak"]),
                          _x(s, s.get("gold_peak_x")) + (" (last: still rising)" if s.get("gold_peak_at_end") else ""),
                          fmt(s["gold_end"]), signed(s["gold_end"] - s["gold_start"]
                          if _finite(s["gold_end"], s["gold_start"]) else None),
                          fmt(s["proxy_start"]), fmt(s["proxy_end"]), fmt(s["behavior_start"], pct),
                          fmt(s["behavior_end"], pct), fmt(s["kl_end"], ".3g"),
                          *(signed(att.get(p)) for p in parts)],
                         "biased" if a["biased"] else "control"))  # fmt: skip
    return rows


COMPARE_HEADERS = (
    "method",
    "raters",
    "seeds",
    "gold start",
    "final proxy",
    "final gold",
    "peak gold",
    "KL (nats)",
    "headline behaviour",
    "accuracy",
    "wall time (s)",
)
COMPARE_NOTE = (
    "Every optimizer on the same SFT model, rater labels and reward model, averaged over seeds: the "
    "proxy and gold at the last audit, the gold peak (3-point moving average), the final KL to the "
    "SFT policy, the task's headline behaviour at the last audit (e.g. sycophancy: the share of wrong-belief "
    "prompts whose response affirms the belief), and the optimizer's wall time (its <code>summary.json</code>). Best-of-n rows are at the largest n."
)


def _compare_rows(summary: Mapping[str, Any]) -> list[tuple[list[Any], str]]:
    return [([method_label(r["method"]), r["preset"], r["n_seeds"], fmt(r["gold_start"]), fmt(r["proxy_end"]),
              fmt(r["gold_end"]), fmt(r["gold_peak"]), fmt(r["kl_end"], ".3g"), fmt(r["behavior_end"], ".3g"),
              fmt(r["accuracy_end"], ".1%"), fmt(r["wall_seconds"], ".0f")],
             "biased" if r["biased"] else "control") for r in summary.get("comparison", [])]  # fmt: skip


def _finite(*vs: Any) -> bool:
    return all(isinstance(v, int | float) and math.isfinite(v) for v in vs)


def _example_rows(block: Mapping[str, Any]) -> list[tuple[list[Any], str]]:
    rows = []
    for st in block["stages"]:
        stage = f"{st['stage']}\n{st['x_key']} {fmt(st['x'], '.0f')}\nKL {fmt(st['kl'], '.3g')}"
        if not st["rows"]:
            rows.append(([stage, "(no samples file)", "", "–", "–", "–"], "stage-start"))
            continue
        for k, r in enumerate(st["rows"]):
            correct = r.get("correct")
            rows.append(([stage if k == 0 else "", r.get("prompt", ""), r.get("response", ""), fmt(r.get("proxy")),
                          fmt(r.get("gold")), "–" if correct is None else ("yes" if correct else "no")],
                         "stage-start" if k == 0 else ""))  # fmt: skip
    return rows


def _task_note(task: Mapping[str, Any]) -> str:
    """A line naming the task, and saying plainly when it has no gold."""
    if not task:
        return ""
    text = f"Task: <strong>{esc(task.get('name', '?'))}</strong>"
    if task.get("description"):
        text += f" &middot; {esc(task['description'])}"
    if not task.get("has_gold", True):
        text += (". <strong>This task has no gold reward</strong>: the report shows the proxy, the KL and the task's "
                 "behaviours only; gold curves, law fits and gold attribution are absent, not zero.")  # fmt: skip
    return f'<p class="note">{text}</p>'


def render_report(summary: Mapping[str, Any], figures: Mapping[str, Path], examples: Mapping[str, Any] | None,
                  title: str = "rewardlab audit report", sections: Sequence[str] = ()) -> str:  # fmt: skip
    """The whole page. ``summary``: :func:`rewardlab.report.build.build_summary`'s dict; ``figures``:
    ``{"goodhart" | "behavior" | "gold_parts" | "side_by_side": png}``; ``examples``: the block
    from :func:`rewardlab.report.build.pick_examples` with ``arm``/``method``/``biased``, or None;
    ``sections``: extra HTML sections (already escaped, e.g. the judge panel) placed before the examples."""
    arms = summary["arms"]
    n_biased = sum(1 for a in arms.values() if a["biased"])
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f'<p class="meta">Run folder: <code>{esc(summary["run_dir"])}</code> &middot; {len(arms)} arm(s), '
        f"{n_biased} treatment, {len(arms) - n_biased} control &middot; KL in nats (mean over prompts of the summed per-token KL; the estimator "
        "each optimizer logged as <code>kl/estimator</code>, best-of-n: log n &minus; (n&minus;1)/n)</p>",
        f'<p class="lead">{INTRO}</p>',
        _task_note(summary.get("task", {})),
        "<h2>Proxy vs gold as the policy moves away from its start</h2>",
        figure(figures.get("goodhart"), "Goodhart figure", CAPTIONS["goodhart"]),
        "<h2>Over-optimization law fits</h2>",
        f'<p class="note">{LAW_NOTE}</p>',
        table(LAW_HEADERS, _law_rows(summary), num_cols=range(4, 11)),
        "<h2>Methods compared</h2>",
        f'<p class="note">{COMPARE_NOTE}</p>',
        table(COMPARE_HEADERS, _compare_rows(summary), num_cols=range(2, 11)),
        "<h2>Per-arm summary</h2>",
        f'<p class="note">{SUMMARY_NOTE}</p>',
        table(summary_headers(summary.get("task", {})), _summary_rows(summary), num_cols=range(3, 20)),
        "<h2>Behaviour</h2>",
        figure(figures.get("behavior"), "Behaviour figure", CAPTIONS["behavior"]),
        *(
            [figure(figures["evals"], "Behaviour evaluations figure", CAPTIONS["evals"])]
            if figures.get("evals")
            else []
        ),
        "<h2>Where the gold went</h2>",
        figure(figures.get("gold_parts"), "Gold parts figure", CAPTIONS["gold_parts"])
        if figures.get("gold_parts")
        else '<p class="note">This task has no gold: nothing to attribute.</p>',
        "<h2>Biased feedback vs control</h2>",
        figure(figures.get("side_by_side"), "Side-by-side figure", CAPTIONS["side_by_side"]),
        *sections,
    ]
    parts.append("<h2>Example responses</h2>")
    if examples is None or not examples.get("stages"):
        parts.append('<p class="note">No samples to show.</p>')
    else:
        who = "biased" if examples.get("biased") else "control (no biased arm found)"
        parts.append(f'<p class="note">From <code>{esc(examples["arm"])}</code> / <code>{esc(examples["method"])}</code> '
                     f"({esc(who)}): the same prompts (those the task highlights first, when the files share them) at "
                     "the start, at the smoothed gold peak and at the end of optimization.</p>")  # fmt: skip
        parts.append(table(["stage", "prompt", "response", "proxy", "gold", "correct"], _example_rows(examples),
                           num_cols=(3, 4), text_cols=(0, 1, 2)))  # fmt: skip
    warns = summary.get("warnings") or []
    if warns:
        parts.append(
            "<h2>Notes</h2><ul class='warnings'>" + "".join(f"<li>{esc(w)}</li>" for w in warns) + "</ul>"
        )
    parts.append('<p class="meta">Law reference: L. Gao, J. Schulman, J. Hilton, “Scaling Laws for Reward Model '
                 "Overoptimization”, ICML 2023 (arXiv:2210.10760). Numbers: <code>summary.json</code>; figures: "
                 "<code>plots/</code>.</p>")  # fmt: skip
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
