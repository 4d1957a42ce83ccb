"""Held-out metrics of a reward model per group of comparisons (e.g. HH-RLHF's subsets), and their figure.

For each group (and ``all``): the number of pairs, the accuracy (share of pairs with ``r(chosen) >
r(rejected)``; a tie counts as wrong), the expected calibration error of the Bradley-Terry probability
``σ(r_c - r_r)`` on the **raw** (unnormalized) rewards (Guo et al. 2017; :func:`rewardlab.losses.
expected_calibration_error`), and the mean and std of the chosen and rejected rewards.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rewardlab.feedback.records import Comparison
from rewardlab.losses import expected_calibration_error
from rewardlab.rewards.model import RewardModel
from rewardlab.utils import RewardlabError, atomic_write_text

METRICS = ("n_pairs", "accuracy", "ece", "chosen_mean", "chosen_std", "rejected_mean", "rejected_std")


def group_metrics(s_chosen: torch.Tensor, s_rejected: torch.Tensor) -> dict[str, float]:
    """:data:`METRICS` of one group of pairs from their rewards [N] (std: unbiased; 0 for one pair)."""
    if s_chosen.shape != s_rejected.shape or s_chosen.numel() == 0:
        raise RewardlabError(f"group_metrics: need two equal non-empty reward vectors, got "
                             f"{tuple(s_chosen.shape)} and {tuple(s_rejected.shape)}")  # fmt: skip
    c, r = s_chosen.double().flatten(), s_rejected.double().flatten()
    p = torch.sigmoid(c - r)

    def std(x: torch.Tensor) -> float:
        return float(x.std(unbiased=True)) if len(x) > 1 else 0.0

    return {
        "n_pairs": float(len(c)),
        "accuracy": float((c > r).double().mean()),
        "ece": expected_calibration_error(p, torch.ones_like(p)),
        "chosen_mean": float(c.mean()),
        "chosen_std": std(c),
        "rejected_mean": float(r.mean()),
        "rejected_std": std(r),
    }


def metrics_by_group(s_chosen: torch.Tensor, s_rejected: torch.Tensor,
                     groups: Sequence[str]) -> dict[str, dict[str, float]]:  # fmt: skip
    """``{"all": ..., group: ...}`` of :func:`group_metrics`, groups in sorted order after ``all``."""
    if len(groups) != len(s_chosen):
        raise RewardlabError(f"metrics_by_group: {len(groups)} group labels for {len(s_chosen)} pairs")
    out = {"all": group_metrics(s_chosen, s_rejected)}
    for g in sorted(set(groups)):
        idx = [i for i, x in enumerate(groups) if x == g]
        out[g] = group_metrics(s_chosen[idx], s_rejected[idx])
    return out


def raw_pair_scores(rm: RewardModel, comps: Sequence[Comparison]) -> tuple[torch.Tensor, torch.Tensor]:
    """The ensemble-mean raw rewards of each pair's chosen and rejected sides (non-tie pairs only)."""
    keep = [c for c in comps if not c.meta.get("tie")]
    if not keep:
        raise RewardlabError("reward eval: no comparisons without a tie")
    prompts = [c.prompt for c in keep]
    s_c = rm.score(prompts, [c.chosen for c in keep], normalized=False).mean  # type: ignore[arg-type]
    s_r = rm.score(prompts, [c.rejected for c in keep], normalized=False).mean  # type: ignore[arg-type]
    return s_c, s_r


def evaluate_by_subset(rm: RewardModel, comps: Sequence[Comparison], key: str = "subset") -> dict[str, dict[str, float]]:  # fmt: skip
    """:func:`metrics_by_group` of a reward model on comparisons grouped by ``meta[key]`` (``-`` when absent)."""
    keep = [c for c in comps if not c.meta.get("tie")]
    s_c, s_r = raw_pair_scores(rm, keep)
    return metrics_by_group(s_c, s_r, [str(c.meta.get(key, "-")) for c in keep])


def markdown_table(metrics: dict[str, dict[str, float]]) -> str:
    """The per-group metrics as a Markdown table (one row per group)."""
    rows = ["| subset | pairs | accuracy | ECE | chosen reward (mean ± std) | rejected reward (mean ± std) |",
            "|---|---:|---:|---:|---|---|"]  # fmt: skip
    for g, m in metrics.items():
        rows.append(f"| {g} | {int(m['n_pairs'])} | {m['accuracy']:.3f} | {m['ece']:.3f} | "
                    f"{m['chosen_mean']:+.3f} ± {m['chosen_std']:.3f} | {m['rejected_mean']:+.3f} ± {m['rejected_std']:.3f} |")  # fmt: skip
    return "\n".join(rows)


def plot_distributions(s_chosen: torch.Tensor, s_rejected: torch.Tensor, groups: Sequence[str], path: Path | str,
                       title: str = "reward distributions") -> Path:  # fmt: skip
    """A violin plot of the chosen and rejected rewards per group (and all pairs), written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["all", *sorted(set(groups))]
    fig, ax = plt.subplots(figsize=(2.0 + 1.6 * len(names), 4.0))
    for k, name in enumerate(names):
        idx = list(range(len(groups))) if name == "all" else [i for i, g in enumerate(groups) if g == name]
        for side, (vals, color) in enumerate(((s_chosen, "tab:green"), (s_rejected, "tab:red"))):
            v = ax.violinplot(
                [vals[idx].double().numpy()], positions=[3 * k + side], showmedians=True, widths=0.9
            )
            for body in v["bodies"]:  # type: ignore[union-attr]
                body.set_facecolor(color)
                body.set_alpha(0.5)
    ax.set_xticks([3 * k + 0.5 for k in range(len(names))], [n.replace("helpful-", "helpful-\n") for n in names],
                  fontsize=8)  # fmt: skip
    ax.set_ylabel("raw reward")
    ax.set_title(f"{title} (green: chosen, red: rejected)", fontsize=9)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out)
    return out


def write_subset_report(rm: RewardModel, comps: Sequence[Comparison], out_dir: Path, name: str) -> dict[str, dict[str, float]]:  # fmt: skip
    """Per-subset metrics of ``comps`` into ``<out_dir>/<name>_by_subset.json`` and the violin plot
    ``<name>_rewards.png``; returns the metrics."""
    keep = [c for c in comps if not c.meta.get("tie")]
    s_c, s_r = raw_pair_scores(rm, keep)
    groups = [str(c.meta.get("subset", "-")) for c in keep]
    metrics = metrics_by_group(s_c, s_r, groups)
    atomic_write_text(out_dir / f"{name}_by_subset.json", json.dumps(metrics, indent=2) + "\n")
    plot_distributions(
        s_c, s_r, groups, out_dir / f"{name}_rewards.png", title=f"{name}: reward distributions"
    )
    return metrics


def default_hh_dir() -> Path:
    """``$REWARDLAB_DATA/hh-rlhf``, else ``../shared/data/hh-rlhf`` beside the repository."""
    import os

    root = os.environ.get("REWARDLAB_DATA")
    return (
        Path(root) / "hh-rlhf"
        if root
        else Path(__file__).resolve().parents[4] / "shared" / "data" / "hh-rlhf"
    )


def reward_eval_command(args: Any) -> int:
    """``rewardlab reward-eval MODEL [--data PATH] [--split test] [--limit N] [--out DIR]``: per-subset metrics of
    a saved reward model on held-out pairs (printed as a table, written as JSON and a figure)."""
    from rewardlab.feedback.readers import read_preferences

    rm = RewardModel.load(args.model_dir)
    data = args.data or default_hh_dir()
    comps = read_preferences(data, split=args.split, skip_bad_records=True, limit=args.limit).comparisons
    out = args.out or Path(args.model_dir).resolve().parent
    t = time.time()
    metrics = write_subset_report(rm, comps, out, args.split)
    print(f"{args.model_dir} on {data} ({args.split}, {len(comps)} pairs; {rm.backbone} backbone, {rm.pooling} "
          f"pooling; {time.time() - t:.0f}s)\n{markdown_table(metrics)}\nwritten: {out / f'{args.split}_by_subset.json'}, "
          f"{out / f'{args.split}_rewards.png'}")  # fmt: skip
    return 0
