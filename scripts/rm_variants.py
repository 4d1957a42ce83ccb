"""Reward-model variants on the default task (issue 24, methods 1-3): plain vs segment-level vs goal-conditioned
vs domain-knowledge reward models, their accuracy against rater and gold labels by difficulty, the label-count
learning curve of the domain-knowledge model vs the plain one, and PPO against the plain vs the segment-level
(dense) reward model, over seeds. Reuses a base run's SFT model and time-pressed labels (no pretraining, SFT or
labelling); writes ``<out>/results.json``, ``<out>/table.md`` and the figures ``docs/img/rmv-*.png``.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/rm_variants.py --base /work/artifacts/study-base \\
        --out /work/artifacts/rmv-study --seeds 0 1 2

Every reward model trains with the same loop, data subset, batch size, learning rate and epochs (``--pairs``
comparisons drawn per seed from the base arm's train.jsonl); accuracy is on the base arm's held-out eval.jsonl.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path
from typing import Any

import torch

from rewardlab.config import RewardConfig, load_config
from rewardlab.feedback.records import Comparison, load_comparisons
from rewardlab.pipelines.ppo import run_ppo
from rewardlab.policies.models import load_causal_lm, load_tokenizer
from rewardlab.rewards.domain import DomainRewardModel
from rewardlab.rewards.goal import train_goal_member
from rewardlab.rewards.model import RewardModel, init_reward_backbone
from rewardlab.rewards.segment import train_segment_member
from rewardlab.rewards.train import comparison_accuracies, reward_stats
from rewardlab.runs import Run
from rewardlab.tasks.arithmetic import ArithmeticTask

VARIANTS = ("plain", "goal", "segment", "domain")


def accuracy(rm: Any, comps: list[Comparison]) -> dict[str, float]:
    prompts = [c.prompt for c in comps]
    s_c = rm.score(prompts, [c.chosen for c in comps]).mean
    s_r = rm.score(prompts, [c.rejected for c in comps]).mean
    return comparison_accuracies(s_c, s_r, comps)


def reward_cfg(args: argparse.Namespace, n: int, **kw: Any) -> RewardConfig:
    """The same optimizer for every neural variant; at least ``--min-steps`` steps however few the labels."""
    epochs = max(args.epochs, math.ceil(args.min_steps * args.batch_size / max(n, 1)))
    return RewardConfig(epochs=epochs, batch_size=args.batch_size, verifier=False, eval_every=10**6,
                        optim={"lr": args.lr, "warmup_steps": 10}, **kw)  # fmt: skip


def train_variant(kind: str, pairs: list[Comparison], args: argparse.Namespace, seed: int, out: Path) -> Any:
    """One reward model of ``kind`` on ``pairs``, normalized on its training completions (mean 0, std 1)."""
    sft = Path(args.base) / "sft" / "model"
    tok = load_tokenizer(sft)
    task = ArithmeticTask()
    run = Run(out / f"{kind}-n{len(pairs)}-s{seed}", "reward", quiet=True)
    norm_p = [c.prompt for c in pairs[:512] for _ in (0, 1)]
    norm_c = [x for c in pairs[:512] for x in (c.chosen, c.rejected)]
    if kind == "domain":
        return DomainRewardModel.fit(task, pairs, args.domain_l2)
    model = init_reward_backbone(sft, tok, seed=seed * 100)
    if kind == "segment":
        cfg = reward_cfg(args, len(pairs), segment_entropy_threshold=args.threshold)
        rm = train_segment_member(model, load_causal_lm(sft), tok, pairs, cfg, run, seed=seed * 100)
        rm.fit_normalizer(norm_p, norm_c)
        return rm
    cfg = reward_cfg(args, len(pairs), goal_weight=args.goal_weight if kind == "goal" else 0.0)
    member = train_goal_member(model, tok, pairs, cfg, run, seed=seed * 100)
    rm = RewardModel([member], tok)
    member.config.reward_mean, member.config.reward_std = reward_stats(rm.score(norm_p, norm_c, normalized=False).mean)  # fmt: skip
    return rm


def draw(pairs: list[Comparison], n: int, seed: int) -> list[Comparison]:
    return random.Random(seed).sample(pairs, min(n, len(pairs)))


def part_accuracy(args, train, evals, out) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """1. each variant on ``--pairs`` labels per seed: accuracy vs rater and gold, by difficulty; the saved
    plain and segment models for PPO."""
    rows: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    for seed in args.seeds:
        sub = draw(train, args.pairs, seed)
        for kind in VARIANTS:
            t0 = time.time()
            rm = train_variant(kind, sub, args, seed, out / "rm")
            m = accuracy(rm, evals)
            m["seconds"] = time.time() - t0
            rows[kind].append(m)
            if kind in ("plain", "segment"):
                rm.save(out / "models" / f"{kind}-s{seed}")
            if kind == "domain":
                m["weights"] = rm.describe()  # type: ignore[assignment]
            print(f"[acc] seed {seed} {kind}: rater {m.get('eval/accuracy_rater'):.3f} gold "
                  f"{m.get('eval/accuracy_gold'):.3f} ({m['seconds']:.0f}s)", flush=True)  # fmt: skip
            (out / "partial.json").write_text(json.dumps({"accuracy": rows}, indent=1))
    return rows


def part_curve(args, train, evals, out, acc=None) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """2. accuracy vs gold against the number of labels: domain-knowledge vs plain (the plain model at
    ``--pairs`` labels is part 1's, trained on the same draw)."""
    curve: dict[str, dict[int, list[float]]] = {"plain": {}, "domain": {}}
    acc = acc or (read(out / "partial.json") or {}).get("accuracy")
    for n in args.curve:
        for i, seed in enumerate(args.seeds):
            sub = draw(train, n, seed)
            for kind in ("domain", "plain"):
                if kind == "plain" and n not in args.curve_plain and n != args.pairs:
                    continue
                if kind == "plain" and n == args.pairs and acc and i < len(acc["plain"]):
                    m = acc["plain"][i]
                else:
                    m = accuracy(train_variant(kind, sub, args, seed, out / "curve"), evals)
                curve[kind].setdefault(n, []).append(m["eval/accuracy_gold"])
                print(f"[curve] n {n} seed {seed} {kind}: gold {m['eval/accuracy_gold']:.3f}", flush=True)
        (out / "curve.json").write_text(json.dumps(curve, indent=1))
    return curve


def part_ppo(args, out) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """3. PPO from the SFT model against the plain and the segment-level (dense) reward model, per seed."""
    base = Path(args.base)
    res: dict[str, list[list[dict[str, float]]]] = {"plain": [], "segment": []}
    for seed in args.seeds:
        for kind in ("plain", "segment"):
            sets = [f"seed={seed}", f"run_dir={out / 'ppo'}", f"label.name={kind}", "threads=1",
                    f"ppo.policy_path={base / 'sft' / 'model'}", f"ppo.reward_path={out / 'models' / f'{kind}-s{seed}'}",
                    f"ppo.steps={args.ppo_steps}", f"ppo.prompts_per_step={args.ppo_prompts}", "ppo.samples_per_prompt=2",
                    f"ppo.eval_every={args.ppo_eval_every}", f"ppo.eval_prompts={args.ppo_eval_prompts}",
                    "ppo.samples_to_save=16", "ppo.checkpoint_every=0", f"ppo.dense_rewards={kind == 'segment'}",
                    "ppo.value_init=policy"]  # fmt: skip
            t0 = time.time()
            folder = run_ppo(load_config("configs/default.yaml", sets), quiet=True).parent
            rows = [
                json.loads(line) for line in (folder / "audit.jsonl").read_text().splitlines() if line.strip()
            ]
            res[kind].append(rows)
            print(f"[ppo] seed {seed} {kind}: {time.time() - t0:.0f}s, gold {rows[0].get('gold/mean'):.3f} -> "
                  f"{rows[-1].get('gold/mean'):.3f}", flush=True)  # fmt: skip
            (out / "ppo.json").write_text(json.dumps(res, indent=1))
    return res


def mean_sd(xs: list[float]) -> str:
    xs = [x for x in xs if x == x]
    if not xs:
        return "-"
    m = sum(xs) / len(xs)
    sd = (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5 if len(xs) > 1 else 0.0
    return f"{m:.3f} ± {sd:.3f}"


def read(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def report(out: Path, img: Path) -> str:
    """The markdown tables and the figures ``img/rmv-ppo.png``, ``img/rmv-curve.png`` from whatever parts finished
    (``partial.json``, ``ppo.json``, ``curve.json``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    lines: list[str] = []
    acc = (read(out / "partial.json") or {}).get("accuracy")
    if acc:
        keys = [("eval/accuracy_rater", "rater"), ("eval/accuracy_gold", "gold")]
        keys += [(f"eval/accuracy_gold_d{d}", f"gold d{d}") for d in (1, 2, 3)]
        lines += ["| reward model | seeds | " + " | ".join(k[1] for k in keys) + " | wall s |",
                  "|---|---|" + "---|" * (len(keys) + 1)]  # fmt: skip
        for kind, rows in acc.items():
            if rows:
                cells = [mean_sd([r.get(k, float("nan")) for r in rows]) for k, _ in keys]
                wall = sum(r["seconds"] for r in rows) / len(rows)
                lines.append(f"| {kind} | {len(rows)} | " + " | ".join(cells) + f" | {wall:.0f} |")
    ppo = read(out / "ppo.json")
    if ppo:
        fig = Figure(figsize=(10, 4))
        ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
        lines += ["", "| PPO against | seeds | gold at start | peak gold (step) | gold at end | KL (k1) at end |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for kind, colour in (("plain", "tab:blue"), ("segment", "tab:orange")):
            runs = ppo.get(kind) or []
            for i, rows in enumerate(runs):
                label = f"{kind}{' (dense)' if kind == 'segment' else ''}" if i == 0 else None
                ax1.plot(
                    [r["step"] for r in rows],
                    [r["gold/mean"] for r in rows],
                    color=colour,
                    alpha=0.7,
                    label=label,
                )
                ax2.plot([r["kl/sqrt"] for r in rows], [r["gold/mean"] for r in rows], color=colour, alpha=0.7,
                         marker=".", label=label)  # fmt: skip
            if runs:
                peaks = [max(rows, key=lambda r: r["gold/mean"]) for rows in runs]
                peak = (
                    mean_sd([p["gold/mean"] for p in peaks])
                    + f" ({', '.join(str(p['step']) for p in peaks)})"
                )
                lines.append(f"| {kind}{' (dense)' if kind == 'segment' else ''} | {len(runs)} | "
                             f"{mean_sd([rows[0]['gold/mean'] for rows in runs])} | {peak} | "
                             f"{mean_sd([rows[-1]['gold/mean'] for rows in runs])} | "
                             f"{mean_sd([rows[-1]['kl/k1'] for rows in runs])} |")  # fmt: skip
        ax1.set(xlabel="PPO step", ylabel="gold (held-out prompts)", title="gold along PPO")
        ax2.set(xlabel="sqrt(KL to SFT)", ylabel="gold", title="gold vs sqrt(KL)")
        ax1.legend()
        fig.tight_layout()
        FigureCanvasAgg(fig).print_png(str(img / "rmv-ppo.png"))
    curve = read(out / "curve.json")
    if curve:
        fig = Figure(figsize=(5, 4))
        ax = fig.add_subplot(1, 1, 1)
        lines += ["", "| labels | " + " | ".join(curve) + " |", "|---|" + "---|" * len(curve)]
        ns = sorted({int(n) for c in curve.values() for n in c})
        for n in ns:
            lines.append(f"| {n} | " + " | ".join(mean_sd(c.get(str(n), [])) for c in curve.values()) + " |")
        for kind, c in curve.items():
            xs = sorted(int(n) for n in c)
            ys = [sum(c[str(n)]) / len(c[str(n)]) for n in xs]
            ax.plot(xs, ys, marker="o", label=kind)
        ax.set(xscale="log", xlabel="preference labels", ylabel="accuracy vs gold (held-out pairs)",
               title="labels needed")  # fmt: skip
        ax.legend()
        fig.tight_layout()
        FigureCanvasAgg(fig).print_png(str(img / "rmv-curve.png"))
    text = "\n".join(lines) + "\n"
    (out / "table.md").write_text(text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--base", default="/work/artifacts/study-base", help="run folder with sft/ and <arm>/label/"
    )
    ap.add_argument("--arm", default="time-pressed-s0")
    ap.add_argument("--out", default="/work/artifacts/rmv-study")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--parts", nargs="+", default=["accuracy", "curve", "ppo"])
    ap.add_argument("--pairs", type=int, default=1000, help="labels per reward model (part 1)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--min-steps", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--threshold", type=float, default=0.5, help="segment entropy threshold (nats)")
    ap.add_argument("--goal-weight", type=float, default=0.5)
    ap.add_argument("--domain-l2", type=float, default=0.01)
    ap.add_argument("--curve", type=int, nargs="+", default=[25, 50, 100, 200, 400, 1000])
    ap.add_argument(
        "--curve-plain", type=int, nargs="*", default=[100, 400], help="plain RMs trained for the curve"
    )
    ap.add_argument("--ppo-steps", type=int, default=20)
    ap.add_argument("--ppo-prompts", type=int, default=8)
    ap.add_argument("--ppo-eval-every", type=int, default=4)
    ap.add_argument("--ppo-eval-prompts", type=int, default=128)
    ap.add_argument("--img", default="docs/img", help="where report writes rmv-*.png")
    args = ap.parse_args()
    if args.parts == ["report"]:
        print(report(Path(args.out), Path(args.img)))
        return
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    label = Path(args.base) / args.arm / "label"
    train, evals = load_comparisons(label / "train.jsonl"), load_comparisons(label / "eval.jsonl")
    results: dict[str, Any] = {"args": vars(args)}
    if "accuracy" in args.parts:
        results["accuracy"] = part_accuracy(args, train, evals, out)
    if "ppo" in args.parts:
        results["ppo"] = part_ppo(args, out)
    if "curve" in args.parts:
        results["curve"] = part_curve(args, train, evals, out, results.get("accuracy"))
    (out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
