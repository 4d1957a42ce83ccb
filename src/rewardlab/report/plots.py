"""Figures of the audit report (matplotlib, Agg renderer, no pyplot global state).

Each ``plot_*`` function takes the loaded arms (:func:`rewardlab.report.build.load_arms`), writes
one PNG to ``out`` and returns its path. A figure with nothing to show still gets written, with a
note in place of the missing panel. Conventions shared by all figures: color = optimization method,
line style = rater preset (``unbiased`` dotted), fitted laws dashed; with several seeds each seed
is a thin line and the mean over seeds is bold.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator, PercentFormatter

from rewardlab.audit.laws import smoothed_peak
from rewardlab.methods import METHODS
from rewardlab.report.analysis import (
    PEAK_WINDOW,
    Arm,
    Curve,
    MethodRun,
    fit_runs,
    group_runs,
    mean_curve,
    method_label,
    method_names,
    presets,
)
from rewardlab.tasks.base import TaskInfo

DPI = 110
METHOD_COLORS = {n: m.color for n, m in METHODS.items()}
#: For folders without a color (e.g. one per beta of a DPO sweep): the rest of the tab20 palette.
_EXTRA_COLORS = ("#aec7e8", "#ffbb78", "#98df8a", "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d", "#9edae5",
                 "#ff9896", "#393b79", "#637939", "#8c6d31")  # fmt: skip
_BIASED_STYLES = ("-", "-.", (0, (6, 1.5, 1, 1.5, 1, 1.5)), (0, (8, 2)))
CONTROL_STYLE = ":"
PART_PALETTE = ("#2ca02c", "#9467bd", "#d62728", "#8c564b", "#1f77b4", "#ff7f0e", "#17becf")
UNPARSEABLE_COLOR = "#7f7f7f"
D_LABEL = r"$\sqrt{\mathrm{KL}(\pi\,\|\,\pi_{\mathrm{ref}})}$  ($\sqrt{\mathrm{nats}}$)"


# ------------------------------------------------------------------------------------------ styling
def _colors(arms: Sequence[Arm]) -> dict[str, str]:
    extra = itertools.cycle(_EXTRA_COLORS)
    return {m: METHOD_COLORS.get(m) or next(extra) for m in method_names(arms)}


def _styles(arms: Sequence[Arm]) -> dict[str, object]:
    biased = itertools.cycle(_BIASED_STYLES)
    control = {a.preset for a in arms if not a.biased}
    return {p: CONTROL_STYLE if p in control else next(biased) for p in presets(arms)}


def _marker(run: MethodRun) -> str:
    return "s" if run.kind == "bon" else "o"


def _figure(nrows: int, ncols: int, size: tuple[float, float]) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_2d(np.asarray(fig.subplots(nrows, ncols, squeeze=False)))
    return fig, axes


def _save(fig: Figure, out: Path | str) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # a single evaluation gives a zero-width x range; matplotlib widens it
        warnings.filterwarnings("ignore", message=".*identical low and high xlims.*")
        fig.savefig(out, dpi=DPI, metadata={"Software": None})
    return out


def _kl_axis(ax: Axes) -> None:
    """Start the d = sqrt(KL) axis at 0 and add a top axis in KL nats. Call after plotting."""
    hi = max(ax.get_xlim()[1], 0.1)
    ax.set_xlim(-0.03 * hi, hi)
    top = ax.secondary_xaxis(
        "top", functions=(lambda d: np.square(np.clip(d, 0, None)), lambda k: np.sqrt(np.clip(k, 0, None)))
    )
    top.set_xlabel("KL (nats)", fontsize=9)
    top.tick_params(labelsize=8)


def _empty(ax: Axes, msg: str) -> None:
    ax.text(
        0.5, 0.5, msg, ha="center", va="center", transform=ax.transAxes, fontsize=10, color="0.4", wrap=True
    )
    ax.set_xticks([])
    ax.set_yticks([])


def _bottom_legend(fig: Figure, handles: list, labels: list[str], ncol: int = 2) -> None:
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=ncol, fontsize=8.5, frameon=False)


def _draw(ax: Axes, runs: Sequence[MethodRun], *, key: str | None = None, values: Sequence[np.ndarray] | None = None,
          x: str = "d", color: str, ls: object, marker: str, label: str | None = None, lw: float = 2.0) -> Curve:  # fmt: skip
    """Plot ``key`` (or per-run ``values``) of each seed thin, and their mean bold; return the mean."""
    mean = mean_curve(runs, key, values)
    if len(runs) > 1:
        for j, r in enumerate(runs):
            y = r.column(key) if values is None else values[j]
            xx = r.sqrt_kl() if x == "d" else r.xs
            ax.plot(xx, y, color=color, ls=ls, lw=0.8, alpha=0.35)
    xx = mean.d if x == "d" else mean.x
    ok = np.isfinite(xx) & np.isfinite(mean.y)
    ax.plot(xx[ok], mean.y[ok], color=color, ls=ls, lw=lw, marker=marker, ms=4, label=label)
    return mean


def _star_handle() -> Line2D:
    return Line2D([], [], ls="", marker="*", ms=11, color="white", mec="black")


def _peak_star(ax: Axes, x: np.ndarray, mean: Curve, color: str) -> None:
    """A star on the mean curve where its centered moving average peaks (location of the gold peak)."""
    if not np.any(np.isfinite(mean.y)):
        return
    i, _ = smoothed_peak(mean.y, PEAK_WINDOW)
    if np.isfinite(x[i]) and np.isfinite(mean.y[i]):
        ax.plot(x[i], mean.y[i], ls="", marker="*", ms=14, color=color, mec="black", mew=0.7, zorder=5)


def _group_label(preset: str, method: str, n_seeds: int) -> str:
    seeds = f", mean of {n_seeds} seeds" if n_seeds > 1 else ""
    return f"{method_label(method)} · {preset}{seeds}"


# ------------------------------------------------------------------------------------------ figures
def plot_goodhart(arms: Sequence[Arm], out: Path | str, has_gold: bool = True) -> Path:
    """Gold (left) and proxy (right) vs sqrt(KL) for every method and arm, with the fitted laws; for a task
    without gold the left panel says so and only the proxy is drawn."""
    fig, axes = _figure(1, 2, (13, 5.6))
    ax_g, ax_p = axes[0]
    colors, styles = _colors(arms), _styles(arms)
    data_h: list = []
    data_l: list[str] = []
    fit_h: list = []
    fit_l: list[str] = []
    for (preset, method), runs in group_runs(arms).items():
        c, ls, mk = colors[method], styles[preset], _marker(runs[0])
        _draw(ax_p, runs, key="proxy/mean", color=c, ls=ls, marker=mk)
        data_h.append(Line2D([], [], color=c, ls=ls, lw=2, marker=mk, ms=4))
        unfinished = sum(not r.finished for r in runs)
        data_l.append(
            _group_label(preset, method, len(runs))
            + (f" [{unfinished} did not finish]" if unfinished else "")
        )
        if not has_gold:
            continue
        mean = _draw(ax_g, runs, key="gold/mean", color=c, ls=ls, marker=mk)
        _peak_star(ax_g, mean.d, mean, c)
        try:
            fit = fit_runs(runs)
        except ValueError:
            fit_h.append(Line2D([], [], ls=""))
            fit_l.append("(law not fitted: too few points)")
            continue
        dd = np.linspace(0.0, fit.d_max * 1.05, 200)
        ax_g.plot(dd, fit.predict_gold(dd), color=c, ls="--", lw=1.3, alpha=0.85)
        form = "d(a − b·d)" if fit.kind == "bon" else "d(a − b·log d)"
        if fit.kl_peak is None:
            peak = "no peak"
        else:
            peak = f"KL* = {fit.kl_peak:.3g}" + ("" if fit.peak_in_range else " (beyond data)")
        fit_h.append(Line2D([], [], color=c, ls="--", lw=1.3))
        fit_l.append(f"law {form}: a = {fit.a:.3g}, b = {fit.b:.3g}, R² = {fit.r2:.2f}, {peak}")
    if data_h and not has_gold:
        _empty(ax_g, "this task has no gold reward:\nproxy, KL and behaviour only")
    if data_h and has_gold:  # two legend columns: data | its fitted law, row by row
        data_h.append(_star_handle())
        data_l.append(f"gold peak ({PEAK_WINDOW}-point moving average)")
        fit_h.append(Line2D([], [], ls=""))
        fit_l.append("")
    handles, labels = data_h + fit_h, data_l + fit_l
    if not handles:
        _empty(ax_g, "no audit rows")
        _empty(ax_p, "no audit rows")
    for ax, title, ylab in (
        (ax_g, "Gold reward (hidden from the optimizer)", "gold reward (task units, mean over prompts)"),
        (ax_p, "Proxy reward (what the optimizer maximizes)", "proxy reward (reward-model score)"),
    ):
        ax.set_title(title, fontsize=11)
        ax.set_xlabel(D_LABEL)
        ax.set_ylabel(ylab)
        ax.grid(alpha=0.3)
        if handles:
            _kl_axis(ax)
    fig.suptitle("Goodhart's law: the proxy keeps rising while the gold reward peaks and falls" if has_gold
                 else "The proxy as the policy moves away from its start (no gold for this task)", fontsize=13)  # fmt: skip
    _bottom_legend(fig, handles, labels)
    return _save(fig, out)


def plot_behaviors(arms: Sequence[Arm], info: TaskInfo, out: Path | str) -> Path:
    """The task's behaviour metrics (up to 3, the headline first; then length when there is room) vs
    sqrt(KL), treatment arms and controls."""
    names = list(info.behaviors)
    if info.headline in names:
        names.remove(info.headline)
        names.insert(0, info.headline)
    panels = [(f"behavior/{n}", info.behaviors[n]) for n in names[:3]] or [
        ("behavior/length", "length (words)")
    ]
    fig, axes = _figure(1, len(panels), (4.7 * len(panels) + 0.6, 4.8))
    colors, styles = _colors(arms), _styles(arms)
    handles: list = []
    labels: list[str] = []
    for k, (key, title) in enumerate(panels):
        ax = axes[0, k]
        drawn = False
        for (preset, method), runs in group_runs(arms).items():
            if not any(np.any(np.isfinite(r.column(key))) for r in runs):
                continue
            c, ls, mk = colors[method], styles[preset], _marker(runs[0])
            _draw(ax, runs, key=key, color=c, ls=ls, marker=mk)
            drawn = True
            label = _group_label(preset, method, len(runs))
            if label not in labels:
                handles.append(Line2D([], [], color=c, ls=ls, lw=2, marker=mk, ms=4))
                labels.append(label)
        ax.set_title(title[:1].upper() + title[1:], fontsize=11)
        if not drawn:
            _empty(ax, f"no {key} in the audit")
            continue
        ax.set_xlabel(D_LABEL)
        if key != "behavior/length":
            ax.set_ylim(-0.03, 1.03)
            ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.grid(alpha=0.3)
        _kl_axis(ax)
    if info.headline_note:
        axes[0, 0].set_ylabel(info.headline_note if len(info.headline_note) < 60 else "share of prompts")
    fig.suptitle(f"Behaviour ({info.name}): biased arms vs controls", fontsize=13)
    _bottom_legend(fig, handles, labels, ncol=min(4, max(1, len(labels))))
    return _save(fig, out)


def eval_keys(arms: Sequence[Arm]) -> list[str]:
    """The ``eval/<set>`` columns (scheduled behaviour evaluations) any run's audit holds, in first-seen order."""
    keys: list[str] = []
    for a in arms:
        for m in a.methods.values():
            for row in m.rows:
                keys += [k for k in row if k.startswith("eval/") and k not in keys]
    return keys


def plot_evals(arms: Sequence[Arm], out: Path | str, max_panels: int = 6) -> Path | None:
    """The scheduled behaviour evaluations (``eval/<set>``, docs/evals.md) vs sqrt(KL), one panel per set (at most
    ``max_panels``), every arm and method; ``None`` when no audit ran them."""
    keys = eval_keys(arms)[:max_panels]
    if not keys:
        return None
    fig, axes = _figure(1, len(keys), (4.4 * len(keys) + 0.6, 4.6))
    colors, styles = _colors(arms), _styles(arms)
    handles: list = []
    labels: list[str] = []
    for k, key in enumerate(keys):
        ax = axes[0, k]
        for (preset, method), runs in group_runs(arms).items():
            if not any(np.any(np.isfinite(r.column(key))) for r in runs):
                continue
            c, ls, mk = colors[method], styles[preset], _marker(runs[0])
            _draw(ax, runs, key=key, color=c, ls=ls, marker=mk)
            label = _group_label(preset, method, len(runs))
            if label not in labels:
                handles.append(Line2D([], [], color=c, ls=ls, lw=2, marker=mk, ms=4))
                labels.append(label)
        ax.set_title(key.removeprefix("eval/"), fontsize=10)
        ax.set_xlabel(D_LABEL)
        ax.set_ylim(-0.03, 1.03)
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.grid(alpha=0.3)
        _kl_axis(ax)
    axes[0, 0].set_ylabel("rate (behaviour named by the set)")
    fig.suptitle("Behaviour evaluations during optimization", fontsize=13)
    _bottom_legend(fig, handles, labels, ncol=min(4, max(1, len(labels))))
    return _save(fig, out)


def _part_deltas(run: MethodRun, part_names: Sequence[str]) -> dict[str, np.ndarray]:
    """Change since the first row of each gold part, the unexplained rest, and gold itself."""
    gold = run.column("gold/mean")
    parts = {p: run.column(f"gold/part_{p}") for p in part_names}
    out = {p: v - v[0] for p, v in parts.items()}
    rest = gold - np.sum(list(parts.values()), axis=0)
    out["unparseable"] = rest - rest[0]
    out["gold"] = gold - gold[0]
    return out


def plot_gold_parts(arms: Sequence[Arm], part_names: Sequence[str], out: Path | str) -> Path:
    """Change of each gold part since the start vs sqrt(KL), for the biased arm(s): where gold went."""
    part_colors = {p: PART_PALETTE[i % len(PART_PALETTE)] for i, p in enumerate(part_names)}
    part_colors["unparseable"] = UNPARSEABLE_COLOR
    biased = [a for a in arms if a.biased]
    shown = biased or list(arms)
    note = "" if biased else "  (no biased arm: showing the control)"
    ps = presets(shown)
    ms = method_names(shown)
    fig, axes = _figure(len(ps), len(ms), (5.2 * len(ms) + 1, 4.2 * len(ps) + 0.8))
    handles = [Line2D([], [], color="black", lw=2.6)] + [
        Line2D([], [], color=part_colors[p], lw=1.8) for p in part_colors
    ]
    labels = ["gold (total change)"] + [f"{p} part" if p != "unparseable" else "unparseable responses (gold not in the parts)"
                                        for p in part_colors]  # fmt: skip
    groups = group_runs(shown)
    for i, preset in enumerate(ps):
        for j, method in enumerate(ms):
            ax = axes[i, j]
            ax.set_title(f"{method_label(method)} · {preset}", fontsize=11)
            runs = groups.get((preset, method))
            if not runs:
                _empty(ax, f"no {method} run for {preset}")
                continue
            deltas = [_part_deltas(r, part_names) for r in runs]
            if not any(np.any(np.isfinite(d[p])) for d in deltas for p in part_names):
                _empty(ax, "no gold/part_* metrics in the audit")
                continue
            mk = _marker(runs[0])
            for p in part_colors:
                _draw(
                    ax, runs, values=[d[p] for d in deltas], color=part_colors[p], ls="-", marker=mk, lw=1.6
                )
            _draw(ax, runs, values=[d["gold"] for d in deltas], color="black", ls="-", marker=mk, lw=2.6)
            ax.axhline(0.0, color="0.5", lw=0.8)
            ax.set_xlabel(D_LABEL)
            ax.set_ylabel("change since start (gold units)")
            ax.grid(alpha=0.3)
            _kl_axis(ax)
    fig.suptitle(
        "Where the gold went: change of each gold part since the start of optimization" + note, fontsize=13
    )
    _bottom_legend(fig, handles, labels, ncol=3)
    return _save(fig, out)


def plot_side_by_side(arms: Sequence[Arm], info: TaskInfo, out: Path | str) -> Path:
    """Biased run(s) and the controls side by side: gold (when the task has it), proxy and the task's
    headline behaviour over steps.

    Uses the step-based (RL-style) methods; a run folder with only best-of-n uses ``n`` (log scale).
    """
    rl_arms = [a for a in arms if any(m.kind == "rl" for m in a.methods.values())]
    use_rl = bool(rl_arms)
    shown = rl_arms if use_rl else list(arms)
    ps = presets(shown)
    head = f"behavior/{info.headline}" if info.headline else "behavior/length"
    rows = ((("gold/mean", "gold reward (task units)"),) if info.has_gold else ()) + (
        ("proxy/mean", "proxy reward (RM score)"),
        (head, info.behaviors.get(info.headline or "", "length (words)")),
    )
    fig, axes = _figure(len(rows), len(ps), (5.4 * len(ps) + 0.6, 9.5))
    colors = _colors(shown)
    groups = {k: v for k, v in group_runs(shown).items() if (v[0].kind == "rl") == use_rl}
    handles: list = []
    labels: list[str] = []
    for j, preset in enumerate(ps):
        role = "biased" if any(a.biased for a in shown if a.preset == preset) else "control"
        axes[0, j].set_title(f"{preset} ({role})", fontsize=12)
        for i, (key, ylab) in enumerate(rows):
            ax = axes[i, j]
            if key != "proxy/mean" and j > 0:  # gold and the behaviour share a scale across arms
                ax.sharey(axes[i, 0])
            drawn = False
            for (p, method), runs in groups.items():
                if p != preset or not any(np.any(np.isfinite(r.column(key))) for r in runs):
                    continue
                c, mk = colors[method], _marker(runs[0])
                mean = _draw(ax, runs, key=key, x="x", color=c, ls="-", marker=mk)
                drawn = True
                label = method_label(method) + (
                    f" (thin: {len(runs)} seeds, bold: mean)" if len(runs) > 1 else ""
                )
                if label not in labels:
                    handles.append(Line2D([], [], color=c, lw=2, marker=mk, ms=4))
                    labels.append(label)
                if key == "gold/mean":
                    _peak_star(ax, mean.x, mean, c)
            if not drawn:
                _empty(ax, f"no {key}")
                continue
            if key == head and key != "behavior/length":
                ax.yaxis.set_major_formatter(PercentFormatter(1.0))
            if not use_rl:
                ax.set_xscale("log", base=2)
            else:
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            if j == 0:
                ax.set_ylabel(ylab)
            if i == len(rows) - 1:
                ax.set_xlabel("optimization step" if use_rl else "n (best-of-n samples)")
    if handles and info.has_gold:
        handles.append(_star_handle())
        labels.append(f"gold peak ({PEAK_WINDOW}-point moving average)")
    fig.suptitle("Biased feedback vs control, side by side", fontsize=13)
    _bottom_legend(fig, handles, labels, ncol=min(4, max(1, len(labels))))
    return _save(fig, out)
