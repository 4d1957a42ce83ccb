"""The DPH / IFT comparison table and figures from a run folder of ``configs/dph-ift.yaml`` (docs/dph-ift.md).

    rewardlab run configs/dph-ift.yaml --run-dir runs/dph-ift --seeds 0,1,2 --reuse
    python scripts/dph_ift_table.py runs/dph-ift --img docs/img

Reads each arm's ``bon``, ``dph``, ``dpo`` and ``ift`` audits and summaries (and the shared ``sft`` summary for
SFT's wall time) and prints Markdown tables of the mean and standard deviation over the arms (seeds) found:

1. the rerankers at n = ``bon.max_n`` (the same samples, picked by the separate reward model or by the preference
   head) and DPO's last audit, each against the SFT policy's own samples (n = 1);
2. IFT's last audit against SFT (n = 1 of best-of-n) and SFT-then-DPO (DPO's last audit), with wall times.

Each table uses the arms where its methods finished. With ``--img`` it draws ``dph-rerank.png`` (gold and
sycophancy vs sqrt(KL)) and ``ift-vs-sft-dpo.png`` (gold and sycophancy of the base, SFT, SFT then DPO and IFT).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

GOLD, ACC, SYC = "gold/mean", "gold/accuracy", "behavior/sycophancy_rate"


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def load_arm(arm: Path) -> dict[str, Any]:
    """One seed's audits and summaries of the methods that finished there (``done``: their names)."""
    out: dict[str, Any] = {"name": arm.name, "reward": _json(arm / "reward" / "summary.json"), "done": set()}
    for m in ("bon", "dph", "dpo", "ift"):
        if (arm / m / "summary.json").is_file():  # written last: the method finished
            out[m] = _rows(arm / m / "audit.jsonl")
            out[f"{m}_summary"] = _json(arm / m / "summary.json")
            out["done"].add(m)
    return out


def _kl(row: dict[str, Any]) -> float:
    return float(row["kl"]) if "kl" in row and "kl/k1" not in row else float(row["kl/k1"])


def _cell(values: list[float], fmt: str = "{:+.3f}") -> str:
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return "n/a"
    if len(v) == 1:
        return fmt.format(v[0])
    return f"{fmt.format(float(np.mean(v)))} ± {float(np.std(v, ddof=1)):.3f}"


def rerank_table(arms: list[dict[str, Any]]) -> str:
    n = max(r["n"] for r in arms[0]["bon"])
    lines = [f"| policy (n = {n} samples per prompt for the rerankers) | gold | accuracy | sycophancy | KL (nats) |"
             " reranker accuracy vs rater / vs gold |", "|---|---|---|---|---|---|"]  # fmt: skip
    picks: list[tuple[str, Any, Any]] = [
        ("SFT policy (one sample, n = 1)", lambda a: a["bon"][0], None),
        (f"best-of-{n}, separate reward model", lambda a: a["bon"][-1],
         lambda a: (a["reward"].get("eval/accuracy_rater"), a["reward"].get("eval/accuracy_gold"))),
        (f"DPH rerank best-of-{n} (head on the frozen SFT policy)", lambda a: a["dph"][-1],
         lambda a: (a["dph_summary"]["head"].get("head/accuracy_rater"),
                    a["dph_summary"]["head"].get("head/accuracy_gold"))),
        (f"DPO ({arms[0]['dpo'][-1]['step']} steps), last audit", lambda a: a["dpo"][-1],
         lambda a: (a["dpo"][-1].get("implicit/accuracy_rater"), a["dpo"][-1].get("implicit/accuracy_gold"))),
    ]  # fmt: skip
    for label, row, acc in picks:
        rows = [row(a) for a in arms]
        accs = [acc(a) for a in arms] if acc else None
        acc_cell = (f"{_cell([x[0] for x in accs], '{:.3f}')} / {_cell([x[1] for x in accs], '{:.3f}')}"
                    if accs else "-")  # fmt: skip
        lines.append(f"| {label} | {_cell([r[GOLD] for r in rows])} | {_cell([r[ACC] for r in rows], '{:.3f}')} | "
                     f"{_cell([r[SYC] for r in rows], '{:.3f}')} | {_cell([_kl(r) for r in rows], '{:.3f}')} | "
                     f"{acc_cell} |")  # fmt: skip
    return "\n".join(lines)


def ift_table(arms: list[dict[str, Any]], sft_seconds: float | None) -> str:
    lines = ["| policy | gold | accuracy | sycophancy | KL to SFT (nats) | wall time (s) | training loop (s) |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    sft = [a["bon"][0] for a in arms]
    dpo = [a["dpo"][-1] for a in arms]
    ift = [a["ift"][-1] for a in arms]
    dpo_s = [a["dpo_summary"]["seconds"] for a in arms]
    dpo_train = [a["dpo_summary"]["train"]["train_seconds"] for a in arms]
    ift_s = [a["ift_summary"]["seconds"] for a in arms]
    ift_train = [a["ift_summary"]["train"]["train_seconds"] for a in arms]
    sft_cell = f"{sft_seconds:.0f} (shared, one run)" if sft_seconds else "n/a"
    both = [sft_seconds + s for s in dpo_s] if sft_seconds else []
    base = [a["ift"][0] for a in arms]
    rows = [
        ("base model (IFT's start)", base, "0", "-", "-"),
        ("SFT (the shared SFT model; n = 1 of best-of-n)", sft, "-", sft_cell, "-"),
        (f"SFT then DPO ({dpo[0]['step']} steps on the labels)", dpo, "dpo", _cell(both, "{:.0f}") + " (SFT + DPO)",
         _cell(dpo_train, "{:.0f}") + " (DPO)"),
        (f"IFT ({ift[0]['step']} steps on demonstrations + chosen sides)", ift, "ift", _cell(ift_s, "{:.0f}"),
         _cell(ift_train, "{:.0f}")),
    ]  # fmt: skip
    for label, rs, kind, wall, loop in rows:
        kl = "0 (by definition)" if kind == "-" else _cell([_kl(r) for r in rs], "{:.3f}")
        lines.append(f"| {label} | {_cell([r[GOLD] for r in rs])} | {_cell([r[ACC] for r in rs], '{:.3f}')} | "
                     f"{_cell([r[SYC] for r in rs], '{:.3f}')} | {kl} | {wall} | {loop} |")  # fmt: skip
    return "\n".join(lines)


def draw(arms: list[dict[str, Any]], ift_arms: list[dict[str, Any]], img: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img.mkdir(parents=True, exist_ok=True)
    colors = {"bon": "#ff7f0e", "dph": "#1b9e77", "dpo": "#8c564b", "ift": "#7b4173"}
    labels = {"bon": "best-of-n (separate RM)", "dph": "DPH rerank", "dpo": "DPO", "ift": "IFT"}
    out = []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    for m, marker in (("bon", "s"), ("dph", "D"), ("dpo", "o")):
        for key, ax in ((GOLD, axes[0]), (SYC, axes[1])):
            xs = [[math.sqrt(max(_kl(r), 0.0)) for r in a[m]] for a in arms]
            ys = [[r[key] for r in a[m]] for a in arms]
            for x, y in zip(xs, ys, strict=True):
                ax.plot(x, y, color=colors[m], lw=0.7, alpha=0.35)
            k = min(len(x) for x in xs)
            ax.plot(np.mean([x[:k] for x in xs], 0), np.mean([y[:k] for y in ys], 0), color=colors[m], lw=2,
                    marker=marker, ms=4, label=labels[m])  # fmt: skip
    for ax, title in ((axes[0], "gold reward"), (axes[1], "sycophancy rate")):
        ax.set_xlabel("sqrt(KL to the SFT policy)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"DPH rerank vs best-of-n vs DPO, time-pressed raters ({len(arms)} seeds thin, mean bold)\nKL: the analytic"
        " bound for the rerankers, k1 on samples for DPO",
        fontsize=11,
    )
    out.append(img / "dph-rerank.png")
    fig.savefig(out[-1], dpi=110)
    plt.close(fig)
    if not ift_arms:
        return out
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    groups = [("base\n(IFT's start)", lambda a: a["ift"][0], "0.5"), ("SFT", lambda a: a["bon"][0], "0.3"),
              ("SFT then DPO", lambda a: a["dpo"][-1], colors["dpo"]), ("IFT", lambda a: a["ift"][-1], colors["ift"])]  # fmt: skip
    for key, ax in ((GOLD, axes[0]), (SYC, axes[1])):
        for i, (_name, pick, color) in enumerate(groups):
            ys = [pick(a)[key] for a in ift_arms]
            ax.bar(i, float(np.mean(ys)), color=color, alpha=0.45, width=0.6)
            ax.scatter(
                [i + (j - (len(ys) - 1) / 2) * 0.08 for j in range(len(ys))], ys, color=color, zorder=3, s=18
            )
        ax.set_xticks(range(len(groups)), [g[0] for g in groups])
        ax.set_title("gold reward" if key == GOLD else "sycophancy rate")
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"IFT vs SFT then DPO from the same data ({len(ift_arms)} seeds: dots; bars: mean)")
    out.append(img / "ift-vs-sft-dpo.png")
    fig.savefig(out[-1], dpi=110)
    plt.close(fig)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--img", type=Path, default=None, help="folder for dph-rerank.png and ift-vs-sft-dpo.png")
    args = ap.parse_args()
    found = sorted(p for p in args.run_dir.iterdir() if p.is_dir() and (p / "arm.json").is_file())
    arms = [load_arm(p) for p in found]
    rerank = [a for a in arms if {"bon", "dph", "dpo"} <= a["done"]]
    ift = [a for a in arms if {"bon", "dpo", "ift"} <= a["done"]]
    if not rerank:
        raise SystemExit(f"{args.run_dir}: no arm has finished bon, dph and dpo")
    print(f"rerankers and DPO: {', '.join(a['name'] for a in rerank)} (mean ± sd over {len(rerank)})\n")
    print(rerank_table(rerank) + "\n")
    if ift:
        print(f"IFT: {', '.join(a['name'] for a in ift)} (mean ± sd over {len(ift)})\n")
        sft_seconds = _json(args.run_dir / "sft" / "summary.json").get("seconds")
        print(ift_table(ift, sft_seconds))
    if args.img:
        for p in draw(rerank, ift, args.img):
            print(f"\nwrote {p}")


if __name__ == "__main__":
    main()
