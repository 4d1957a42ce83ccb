"""Markdown tables and figures of the RLAIF study (issue 20, docs/rlaif.md) from a `rewardlab run configs/rlaif.yaml`
run folder: the judge panel (rewardlab.report.judge), PPO start -> end per arm and seed, the target per seed, SL-CAI.

    .venv/bin/python scripts/rlaif_summary.py RUN_DIR [--img docs/img] [--control unbiased-12k unbiased] [--far 0.1]

The target (issue 20): RLAIF with <= 1,000 human labels ends within 0.05 gold of the unbiased control and far
above the time-pressed arm, on at least 2 of 3 seeds. Per seed and judge arm trained on unbiased labels:
`gold_end(judge) >= gold_end(control) - 0.05` and `gold_end(judge) - gold_end(time-pressed) >= --far`.
Gold at the end is the last audit row's `gold/mean` (held-out prompts). Writes rlaif-judge.png and rlaif-ppo.png.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from rewardlab.report.judge import (
    JUDGE_COLUMNS,
    SLCAI_COLUMNS,
    JudgePanel,
    judge_panel,
    plot_judge,
    rows_with_means,
)

WITHIN = 0.05


def _f(v: Any, spec: str = ".3f") -> str:
    return "—" if v is None else format(v, spec)


def ppo_rows(run_dir: Path) -> list[dict[str, Any]]:
    """First and last audit row of every arm's PPO (``<arm>/ppo/audit.jsonl``), with the arm's name and seed."""
    out = []
    for d in sorted(p for p in run_dir.iterdir() if (p / "ppo" / "audit.jsonl").is_file()):
        rows = [json.loads(x) for x in (d / "ppo" / "audit.jsonl").read_text().splitlines() if x.strip()]
        meta = json.loads((d / "arm.json").read_text()) if (d / "arm.json").is_file() else {}
        name, _, seed = d.name.rpartition("-s")
        out.append({"arm": d.name, "name": meta.get("name", name), "seed": int(meta.get("seed", seed)),
                    "start": rows[0], "end": rows[-1], "rows": rows})  # fmt: skip
    return out


def judge_table(panel: JudgePanel) -> list[str]:
    heads = ["arm", "seed", "K (rater)", *(h for _, h, _ in JUDGE_COLUMNS)]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for r in rows_with_means(panel):
        seed = f"mean of {r['n_seeds']}" if "n_seeds" in r else str(r["seed"])
        k = f"{r['judge_labels']} ({r['judge_rater']})" if r.get("judge_labels") is not None else "—"
        lines.append(
            f"| {r['name']} | {seed} | {k} | " + " | ".join(_f(r[c], f) for c, _, f in JUDGE_COLUMNS) + " |"
        )
    return lines


def ppo_table(ppo: Sequence[dict[str, Any]]) -> list[str]:
    lines = ["| arm | seed | gold start -> end | sycophancy start -> end | accuracy end | KL (k1) end | proxy end |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in sorted(ppo, key=lambda r: (r["seed"], r["name"])):
        s, e = r["start"], r["end"]
        lines.append(f"| {r['name']} | {r['seed']} | {s['gold/mean']:+.3f} -> {e['gold/mean']:+.3f} | "
                     f"{s['behavior/sycophancy_rate']:.2f} -> {e['behavior/sycophancy_rate']:.2f} | "
                     f"{e['gold/accuracy']:.3f} | {e['kl/k1']:.2f} | {e['proxy/mean']:+.2f} |")  # fmt: skip
    return lines


def ppo_mean_table(ppo: Sequence[dict[str, Any]]) -> list[str]:
    """Mean over seeds of each arm name's PPO end (and its seeds' range of gold at the end)."""
    lines = ["| arm | seeds | gold end: mean (min, max) | sycophancy end | accuracy end | KL (k1) end |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for name in sorted({r["name"] for r in ppo}):
        ends = [r["end"] for r in ppo if r["name"] == name]
        gold = [e["gold/mean"] for e in ends]
        mean = {
            k: sum(e[k] for e in ends) / len(ends)
            for k in ("behavior/sycophancy_rate", "gold/accuracy", "kl/k1")
        }
        lines.append(f"| {name} | {len(ends)} | {sum(gold) / len(gold):+.3f} ({min(gold):+.3f}, {max(gold):+.3f}) | "
                     f"{mean['behavior/sycophancy_rate']:.2f} | {mean['gold/accuracy']:.3f} | {mean['kl/k1']:.2f} |")  # fmt: skip
    return lines


def target_table(ppo: Sequence[dict[str, Any]], panel: JudgePanel, control: str, far: float) -> list[str]:
    """Per seed and judge arm trained on <= 1,000 unbiased labels: the issue's target, with its two margins."""
    gold = {(r["name"], r["seed"]): r["end"]["gold/mean"] for r in ppo}
    judges = {r["name"] for r in panel.rows
              if r["source"] == "judge" and r["judge_rater"] == "unbiased" and (r["judge_labels"] or 0) <= 1000}  # fmt: skip
    lines = [f"| judge arm | seed | gold end | {control} | judge - control | time-pressed | judge - time-pressed | holds |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name in sorted(judges):
        held = []
        for seed in sorted({s for n, s in gold if n == name}):
            g, c, t = gold[(name, seed)], gold.get((control, seed)), gold.get(("time-pressed", seed))
            if c is None or t is None:
                lines.append(
                    f"| {name} | {seed} | {g:+.3f} | {_f(c, '+.3f')} | — | {_f(t, '+.3f')} | — | not measured |"
                )
                continue
            ok = g >= c - WITHIN and g - t >= far
            held.append(ok)
            lines.append(f"| {name} | {seed} | {g:+.3f} | {c:+.3f} | {g - c:+.3f} | {t:+.3f} | {g - t:+.3f} | "
                         f"{'yes' if ok else 'no'} |")  # fmt: skip
        lines.append(f"| {name} | **{sum(held)} of {len(held)} seeds** | | | | | | |")
    return lines


def slcai_table(panel: JudgePanel) -> list[str]:
    lines = [
        "| arm | round | " + " | ".join(h for _, h, _ in SLCAI_COLUMNS) + " |",
        "|---|---|---|---|---|---|",
    ]
    for r in panel.slcai:
        who = f"{r['name']} (mean of {r['n_seeds']})" if r.get("mean") else r["arm"]
        lines.append(
            f"| {who} | {r['round']} | " + " | ".join(_f(r[k], f) for k, _, f in SLCAI_COLUMNS) + " |"
        )
    return lines


def plot_ppo(ppo: Sequence[dict[str, Any]], out: Path) -> Path:
    """Gold vs sqrt(KL) and sycophancy over PPO steps, one color per arm name, one line per seed."""
    fig = Figure(figsize=(11, 3.8))
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    names = sorted({r["name"] for r in ppo})
    colors = dict(zip(names, [f"C{i}" for i in range(len(names))], strict=True))
    for r in ppo:
        kw = {"color": colors[r["name"]], "marker": "o", "ms": 3, "lw": 1,
              "label": r["name"] if r["seed"] == min(x["seed"] for x in ppo if x["name"] == r["name"]) else None}  # fmt: skip
        left.plot([x["kl/sqrt"] for x in r["rows"]], [x["gold/mean"] for x in r["rows"]], **kw)
        right.plot([x["step"] for x in r["rows"]], [x["behavior/sycophancy_rate"] for x in r["rows"]], **kw)
    left.set(xlabel="sqrt(KL)", ylabel="gold (held-out)", title="PPO: gold vs sqrt(KL) (one line per seed)")
    right.set(xlabel="PPO step", ylabel="sycophancy rate", title="PPO: sycophancy")
    right.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, metadata={"Software": None})
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument(
        "--img", type=Path, default=Path("docs/img"), help="where rlaif-*.png go (default docs/img)"
    )
    p.add_argument("--control", nargs="+", default=["unbiased-12k", "unbiased"],
                   help="the control arm(s) of the target, one table each (default unbiased-12k unbiased)")  # fmt: skip
    p.add_argument(
        "--far", type=float, default=0.1, help="'far above time-pressed': gold margin (default 0.1)"
    )
    args = p.parse_args(argv)
    panel, ppo = judge_panel(args.run_dir), ppo_rows(args.run_dir)
    targets = [target_table(ppo, panel, control, args.far) for control in args.control]
    for block in (
        judge_table(panel),
        ppo_table(ppo),
        ppo_mean_table(ppo),
        *targets,
        slcai_table(panel) if panel.slcai else [],
    ):
        print("\n".join(block) + "\n")
    plot_judge(panel, args.img / "rlaif-judge.png")
    plot_ppo(ppo, args.img / "rlaif-ppo.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
