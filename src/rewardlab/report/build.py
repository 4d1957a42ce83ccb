"""Build the audit report of a run folder: read the arms (:mod:`~rewardlab.report.analysis`), draw the
figures (:mod:`~rewardlab.report.plots`), render one self-contained HTML page (:mod:`~rewardlab.report.html`).

Written: ``RUN_DIR/plots/*.png``, ``RUN_DIR/summary.json`` and ``RUN_DIR/report.html``. Command line:
``python -m rewardlab.report.build RUN_DIR``. Data flows one way: analysis -> plots, html -> build.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from rewardlab.report import html, judge, plots
from rewardlab.report.analysis import (
    _clean,
    build_summary,
    compare_methods,
    example_run,
    load_arms,
    load_task_info,
    method_label,
    pick_examples,
)
from rewardlab.report.studies import study_sections
from rewardlab.runs import console
from rewardlab.utils import RewardlabError, atomic_write_text

__all__ = ["build_report", "compare_methods", "load_arms", "main", "method_label"]


# ---------------------------------------------------------------------------------------------- main
def build_report(run_dir: Path | str, *, examples: int = 3) -> Path:
    """Write ``plots/*.png``, ``summary.json`` and ``report.html`` into ``run_dir``; return the HTML's path.

    Raises :class:`RewardlabError` when ``run_dir`` has no usable audit at all.
    """
    run_dir = Path(run_dir)
    warnings: list[str] = []
    arms = load_arms(run_dir, warnings)
    info = load_task_info(run_dir, arms, warnings)
    summary = build_summary(arms, run_dir, warnings, info)
    for w in warnings:  # in the page's notes too
        console.print("[bold yellow]report warning:[/] ", end="", highlight=False)
        console.print(w, highlight=False, markup=False, soft_wrap=True)
    plot_dir = run_dir / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    figures = {
        "goodhart": plots.plot_goodhart(arms, plot_dir / "goodhart.png", has_gold=info.has_gold),
        "behavior": plots.plot_behaviors(arms, info, plot_dir / "behavior.png"),
        "side_by_side": plots.plot_side_by_side(arms, info, plot_dir / "side_by_side.png"),
    }
    evals_png = plots.plot_evals(arms, plot_dir / "evals.png")
    if evals_png is not None:
        figures["evals"] = evals_png
    if info.has_gold:
        figures["gold_parts"] = plots.plot_gold_parts(arms, info.gold_parts, plot_dir / "gold_parts.png")
    ex = example_run(arms)
    example_block = None
    if ex is not None:
        arm, run = ex
        ex_rows = pick_examples(run, summary["arms"][arm.name]["methods"][run.name], k=examples,
                                highlight=info.highlight)  # fmt: skip
        example_block = {"arm": arm.name, "method": run.name, "biased": arm.biased, "stages": ex_rows}
    panel = judge.judge_panel(run_dir)  # the AI judge's numbers and SL-CAI's rounds, when the run has them
    if panel.has_judge:
        figures["judge"] = judge.plot_judge(panel, plot_dir / "judge.png")
        summary["judge"] = {"rows": panel.rows, "means": panel.means}
    if panel.slcai:
        summary["slcai"] = panel.slcai
    summary["figures"] = {k: str(v.relative_to(run_dir)) for k, v in figures.items()}
    summary = _clean(summary)
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2, allow_nan=False) + "\n")
    title = f"rewardlab audit: {run_dir.resolve().name}"
    sections = [judge.render_panel(panel, figures.get("judge")), *study_sections(run_dir)]
    page = html.render_report(summary, figures, example_block, title=title, sections=sections)
    return atomic_write_text(run_dir / "report.html", page)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rewardlab.report.build RUN_DIR``: build the report and print its path."""
    parser = argparse.ArgumentParser(
        prog="rewardlab report", description="Build the audit report (HTML) of a run folder."
    )
    parser.add_argument("run_dir", type=Path, help="run folder holding <arm>/<method>/audit.jsonl")
    parser.add_argument("--examples", type=int, default=3, help="example responses per stage (default 3)")
    args = parser.parse_args(argv)
    try:
        path = build_report(args.run_dir, examples=args.examples)
    except RewardlabError as e:
        print(f"rewardlab: error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
