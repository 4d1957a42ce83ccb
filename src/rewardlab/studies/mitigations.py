"""Study: mitigations of reward over-optimization on the default task's time-pressed (biased) arm.

    rewardlab study mitigations configs/study-mitigations.yaml

The arm's rater labels are split, by a seeded permutation, into two disjoint halves: half A trains the proxy
(an ensemble of ``ensemble_size`` reward models, each member a different seed on the same pairs), half B trains
one reward model that PPO never sees (the *held-out* evaluator). PPO then runs, from the same SFT policy and
with the same prompts and seed, once per variant:

* ``baseline``: plain PPO against one reward model (member 0 of the ensemble, alone);
* ``mean`` / ``worst`` / ``conservative``: PPO against the whole ensemble, scored by the members' mean, their
  minimum (worst-case optimization) or ``mean - k * std`` (uncertainty-weighted; Coste et al. 2024, "Reward
  Model Ensembles Help Mitigate Overoptimization"), ``k = score_alpha``;
* ``kl_schedule``: the baseline with beta rising from ``ppo.kl_coef`` to ``kl_coef_end`` over the run.

Two early-stopping rules are then evaluated on the baseline run's audit rows (pure functions of the rows):
*ensemble disagreement* stops when the ensemble's std on the policy's audit samples has risen ``disagreement_factor``
times over its value at the start and keeps the last audited policy before that; the *held-out signal* stops when
the held-out reward model's mean score on the policy's audit samples (held-out prompts) falls ``heldout_tolerance``
below its best so far, and keeps the best. Neither reads gold.

For each variant: the gold peak (step, value), the final gold and sycophancy (the task's headline behaviour), the
proxy (the ensemble's mean score, one scale for every variant) and the cost: wall time and reward-model
forward passes (member x sequence scorings during training, plus the monitoring an early-stopping rule needs).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from rewardlab.config import PipelineConfig
from rewardlab.feedback.records import load_comparisons, save_comparisons
from rewardlab.pipelines.ppo import run_ppo
from rewardlab.pipelines.processes import map_in_processes
from rewardlab.pipelines.run import arm_processes, run_arm, run_pipeline
from rewardlab.rewards.model import RewardModel
from rewardlab.runs import Run
from rewardlab.studies.common import (
    BaseRunStudyConfig,
    read_rows,
    save_figure,
    take_base_models,
    write_table,
)
from rewardlab.utils import RewardlabError

Variant = Literal["baseline", "mean", "worst", "conservative", "kl_schedule"]
VARIANTS: tuple[str, ...] = ("baseline", "mean", "worst", "conservative", "kl_schedule")
STOPS: tuple[str, ...] = ("stop_disagreement", "stop_heldout")
COLUMNS = ["seed", "variant", "gold_start", "gold_peak_step", "gold_peak", "gold_final", "headline_final",
           "proxy_final", "kl_final", "stop_step", "seconds", "rm_forwards"]  # fmt: skip
MEAN_COLUMNS = ["variant", "seeds", "gold_peak_step", "gold_peak", "gold_final", "headline_final", "proxy_final",
                "kl_final", "stop_step", "seconds", "rm_forwards"]  # fmt: skip


class MitigationsStudyConfig(BaseRunStudyConfig):
    """``configs/study-mitigations.yaml``: the ensemble, the variants, the KL schedule, the stopping rules."""

    variants: list[Variant] = Field(default_factory=lambda: list(VARIANTS), min_length=1)
    ensemble_size: int = Field(4, ge=2, description="reward models in the proxy ensemble (trained on half A)")
    score_alpha: float = Field(1.0, ge=0, description="k of the conservative score mean - k * std")
    kl_schedule: Literal["linear", "cosine"] = "linear"
    kl_coef_end: float = Field(0.25, ge=0, description="beta at the last step of the kl_schedule variant")
    disagreement_factor: float = Field(
        1.5, gt=1, description="stop when the ensemble std on the samples reaches this times its start"
    )
    heldout_tolerance: float = Field(
        0.05, ge=0, description="stop when the held-out RM's mean falls this far below its best so far"
    )


# --------------------------------------------------------------------------------- early stopping
def _steps(rows: Sequence[dict[str, Any]]) -> list[int]:
    if not rows:
        raise RewardlabError("early stopping needs at least one audit row")
    return [int(r["step"]) for r in rows]


def stop_by_disagreement(rows: Sequence[dict[str, Any]], factor: float,
                         key: str = "ensemble/std") -> tuple[int, int]:  # fmt: skip
    """Early stopping by ensemble disagreement: ``(stop_step, kept_step)``.

    Training stops at the first audit whose ensemble std on the policy's samples is at least ``factor`` times
    the first audit's; the policy kept is the one audited just before (the last one the ensemble still
    agreed on). If the rule never fires the run ends at its last audit, which is kept.
    """
    steps = _steps(rows)
    start = float(rows[0][key])
    for i in range(1, len(rows)):
        if float(rows[i][key]) >= factor * start:
            return steps[i], steps[i - 1]
    return steps[-1], steps[-1]


def stop_by_heldout(rows: Sequence[dict[str, Any]], tolerance: float,
                    key: str = "heldout/proxy") -> tuple[int, int]:  # fmt: skip
    """Early stopping by a held-out gold-free signal: ``(stop_step, kept_step)``.

    The signal is a reward model trained on labels the proxy never saw, scoring the policy's samples on held-out
    prompts. Training stops at the first audit where it is more than ``tolerance`` below its best so far, and
    the best audited policy up to then is kept (the whole run, then its best, if it never falls that far).
    """
    steps = _steps(rows)
    vals = [float(r[key]) for r in rows]
    best = 0
    for i in range(1, len(rows)):
        if vals[i] < vals[best] - tolerance:
            return steps[i], steps[best]
        if vals[i] > vals[best]:
            best = i
    return steps[-1], steps[best]


def gold_peak(rows: Sequence[dict[str, Any]], key: str = "gold/mean") -> tuple[int, float]:
    """The audit step with the highest gold, and that gold (the first of ties)."""
    vals = [float(r[key]) for r in rows]
    i = int(np.argmax(vals))
    return int(rows[i]["step"]), vals[i]


def rm_forwards(members: int, sequences_per_step: int, steps: int) -> int:
    """Reward-model forward passes of PPO's training-time scoring: one per member per sequence per step."""
    return members * sequences_per_step * steps


def monitor_forwards(members: int, eval_prompts: int, audits: int) -> int:
    """Forward passes an early-stopping rule spends scoring the policy's audit samples (``audits`` audits)."""
    return members * eval_prompts * audits


# --------------------------------------------------------------------------------- stages
def split_labels(clean: PipelineConfig, half: PipelineConfig, which: int, seed: int, quiet: bool) -> Path:
    """The label stage of one half (``which`` 0 or 1) of the clean arm's training pairs, by a seeded
    permutation; the eval pairs are the clean arm's, whole."""
    final = half.stage_dir("label")
    if (final / "summary.json").exists():
        return final
    src = clean.stage_dir("label")
    train = load_comparisons(src / "train.jsonl")
    order = np.random.default_rng(seed * 1_009 + 17).permutation(len(train))
    mine = sorted(order[which::2].tolist())
    run = Run(final, "label", half, half.report_to, quiet, staged=True)
    save_comparisons(run.dir / "train.jsonl", [train[i] for i in mine])
    save_comparisons(run.dir / "eval.jsonl", load_comparisons(src / "eval.jsonl"))
    stats = {"label/pairs_train": len(mine), "split/half": which, "split/of": len(train)}
    run.log_metrics(stats, 0)
    run.write_json("summary.json", {**stats, "clean_labels": str(src)})
    return run.commit()


def single_member(ensemble_dir: Path, out: Path) -> Path:
    """Member 0 of an ensemble saved alone (its own normalization and the shared verifier): the baseline's proxy."""
    if (out / "ensemble.json").exists():
        return out
    rm = RewardModel.load(ensemble_dir)
    return RewardModel([rm.members[0]], rm.tokenizer, rm.alpha, rm.verifier).save(out)


def variant_overrides(variant: str, study: MitigationsStudyConfig, single: Path, ensemble: Path) -> list[str]:
    """The PPO settings of one variant (``--set`` style)."""
    if variant == "baseline":
        return [f"ppo.reward_path={single}"]
    if variant == "kl_schedule":
        return [f"ppo.reward_path={single}", f"ppo.kl_schedule={study.kl_schedule}",
                f"ppo.kl_coef_end={study.kl_coef_end}"]  # fmt: skip
    return [f"ppo.reward_path={ensemble}", f"ppo.score={variant}", f"ppo.score_alpha={study.score_alpha}"]


def annotate_rows(stage: Path, ensemble: RewardModel, heldout: RewardModel) -> list[dict[str, Any]]:
    """The run's audit rows with, per audit, the ensemble's mean and std and the held-out reward model's mean
    on that audit's samples (``samples/step_<N>.jsonl``; every eval prompt's sample is saved)."""
    rows = read_rows(stage / "audit.jsonl")
    for row in rows:
        samples = read_rows(stage / "samples" / f"step_{row['step']}.jsonl")
        prompts, responses = [s["prompt"] for s in samples], [s["response"] for s in samples]
        ens = ensemble.score(prompts, responses)
        row["ensemble/mean"] = float(ens.mean.mean())
        row["ensemble/std"] = float(ens.std.mean())
        row["heldout/proxy"] = float(heldout.score(prompts, responses).mean.mean())
        row["audit/samples"] = len(samples)
    return rows


def elapsed_at(stage: Path, step: int) -> float:
    """Training wall time at ``step`` (``time/elapsed`` of the stage's metrics.jsonl)."""
    for row in read_rows(stage / "metrics.jsonl"):
        if int(row.get("step", -1)) == step and "time/elapsed" in row:
            return float(row["time/elapsed"])
    raise RewardlabError(f"{stage}/metrics.jsonl: no time/elapsed at step {step}")


def outcome(rows: Sequence[dict[str, Any]], kept_step: int, headline: str) -> dict[str, Any]:
    """Gold start / peak / at the kept step, the headline behaviour, the ensemble proxy and KL at the kept step."""
    kept = next(r for r in rows if int(r["step"]) == kept_step)
    upto = [r for r in rows if int(r["step"]) <= kept_step]
    peak_step, peak = gold_peak(upto)
    return {"gold_start": float(rows[0]["gold/mean"]), "gold_peak_step": peak_step, "gold_peak": peak,
            "gold_final": float(kept["gold/mean"]), "headline_final": float(kept.get(f"behavior/{headline}", np.nan)),
            "proxy_final": float(kept["ensemble/mean"]), "proxy_own_final": float(kept["proxy/mean"]),
            "kl_final": float(kept["kl/k1"]), "stop_step": kept_step}  # fmt: skip


# --------------------------------------------------------------------------------- recipe
BASE = ["controls=[]", "methods=[ppo]"]  # the time-pressed arm alone, PPO its only optimizer


def seed_configs(study: MitigationsStudyConfig, seed: int, threads: int) -> tuple[PipelineConfig, ...]:
    """One seed's time-pressed arm, and its half A (the proxy ensemble's labels) and half B (the held-out
    reward model's), every stage at ``threads`` torch threads."""
    base = [*BASE, f"threads={threads}", "arm_processes=1"]
    clean = study.pipeline_config(seed, base)
    half_a = study.pipeline_config(seed, [*base, "label.name=mitig-a", f"reward.ensemble_size={study.ensemble_size}",
                                          f"reward.ensemble_alpha={study.score_alpha}"])  # fmt: skip
    half_b = study.pipeline_config(seed, [*base, "label.name=mitig-b", "reward.ensemble_size=1"])
    return clean, half_a, half_b


def variant_config(study: MitigationsStudyConfig, seed: int, variant: str, threads: int) -> PipelineConfig:
    """The PPO config of one variant of one seed: half A's run folder, every audit's samples saved."""
    _, half_a, _ = seed_configs(study, seed, threads)
    ensemble_dir = half_a.stage_dir("reward") / "model"
    single = half_a.stage_dir("reward-single") / "model"
    return study.pipeline_config(seed, [*BASE, f"threads={threads}", "arm_processes=1", "label.name=mitig-a",
                                        f"ppo.samples_to_save={half_a.ppo.eval_prompts}",
                                        *variant_overrides(variant, study, single, ensemble_dir)])  # fmt: skip


def labels_and_reward_models(study_json: str, seed: int, threads: int, quiet: bool) -> float:
    """One seed's rater labels, their two halves, the proxy ensemble (half A, and its member 0 alone) and the
    held-out reward model (half B); returns the wall seconds. Module-level with plain arguments, so that it
    runs in a worker process."""
    study = MitigationsStudyConfig.model_validate_json(study_json)
    clean, half_a, half_b = seed_configs(study, seed, threads)
    t = time.perf_counter()
    run_arm(clean, [], {"label"}, reuse=True, quiet=quiet)
    for which, half in enumerate((half_a, half_b)):
        split_labels(clean, half, which, seed, quiet)
        run_arm(half, [], {"reward"}, reuse=True, quiet=quiet)
    single_member(half_a.stage_dir("reward") / "model", half_a.stage_dir("reward-single") / "model")
    return time.perf_counter() - t


def ppo_variant(study_json: str, seed: int, variant: str, threads: int, quiet: bool) -> list[dict[str, Any]]:
    """One variant's PPO run (reused when finished) and its audit rows, each annotated with the ensemble's and the
    held-out reward model's scores of that audit's samples. Module-level, for a worker process."""
    study = MitigationsStudyConfig.model_validate_json(study_json)
    _, half_a, half_b = seed_configs(study, seed, threads)
    cfg = variant_config(study, seed, variant, threads)
    stage = cfg.stage_dir(f"ppo-{variant}")
    if not (stage / "summary.json").exists():
        run_ppo(cfg, quiet=quiet, stage=f"ppo-{variant}")
    ensemble = RewardModel.load(half_a.stage_dir("reward") / "model")
    return annotate_rows(stage, ensemble, RewardModel.load(half_b.stage_dir("reward") / "model"))


def variant_rows(study: MitigationsStudyConfig, seed: int, variant: str, audit: Sequence[dict[str, Any]],
                 headline: str) -> list[dict[str, Any]]:  # fmt: skip
    """The table rows of one finished variant: its outcome and cost, and for the baseline the two early-stopping
    rules evaluated on its audit rows (no gold read): where each stops, what it keeps, what it costs."""
    cfg = variant_config(study, seed, variant, 1)
    pc, stage = cfg.ppo, cfg.stage_dir(f"ppo-{variant}")
    members = study.ensemble_size if variant in ("mean", "worst", "conservative") else 1
    seconds = float(json.loads((stage / "summary.json").read_text())["seconds"])
    per_step = pc.prompts_per_step * pc.samples_per_prompt
    rows = [{"seed": seed, "variant": variant, **outcome(audit, int(audit[-1]["step"]), headline),
             "seconds": seconds, "rm_forwards": rm_forwards(members, per_step, pc.steps)}]  # fmt: skip
    if variant == "baseline":
        rules = {"stop_disagreement": (stop_by_disagreement(audit, study.disagreement_factor), study.ensemble_size),
                 "stop_heldout": (stop_by_heldout(audit, study.heldout_tolerance), 1)}  # fmt: skip
        n_eval = int(audit[0]["audit/samples"])
        for name, ((stop, kept), monitor) in rules.items():
            audits = sum(int(r["step"]) <= stop for r in audit)
            rows.append({"seed": seed, "variant": name, **outcome(audit, kept, headline), "stop_at": stop,
                         "seconds": elapsed_at(stage, stop) if stop > 0 else 0.0,
                         "rm_forwards": rm_forwards(1, per_step, stop) + monitor_forwards(monitor, n_eval, audits)})  # fmt: skip
    return rows


def run_mitigations_study(study: MitigationsStudyConfig, quiet: bool = False) -> Path:
    """The study's recipe. Seeds and variants run ``arm_processes`` at a time (the pipeline's own setting: with
    ``threads: 2`` and ``arm_processes: 0``, two processes of one thread each), each with the same threads as
    alone, so the table does not depend on how many ran at once."""
    from rewardlab.runs import FolderLock, console

    out_dir, t0 = Path(study.out_dir), time.perf_counter()
    cfg = study.pipeline_config(study.seeds[0], BASE)
    headline = cfg.build_task().info.headline or ""
    runs = [(seed, variant) for seed in study.seeds for variant in study.variants]
    n_proc = arm_processes(cfg, len(runs))
    threads = max(1, cfg.threads // n_proc) if cfg.threads else 0
    timings: dict[str, float] = {}
    # 1. pretrain and SFT, shared by every seed (taken from ``base_run`` where its settings match)
    for note in take_base_models(cfg, study.base_run):
        if not quiet:
            console.print(f"[bold]mitigations study:[/] {note}")
    t = time.perf_counter()
    run_pipeline(cfg, reuse=True, stages=["pretrain", "sft"], quiet=quiet)
    timings["pretrain+sft"] = time.perf_counter() - t
    lock = FolderLock(Path(study.run_dir) / ".rewardlab-run.lock", f"the run folder {study.run_dir}")
    note = lock.acquire()
    if note and not quiet:
        console.print(f"[bold]rewardlab:[/] {note}")
    js, hush = study.model_dump_json(), quiet or n_proc > 1
    audits: dict[str, list[dict[str, Any]]] = {}
    rows: list[dict[str, Any]] = []
    curves: dict[str, list[dict[str, Any]]] = {}
    try:
        # 2. per seed: the time-pressed raters' labels, split in two disjoint halves; A trains the proxy
        #    ensemble, B the held-out reward model
        seed_jobs = [(f"s{s}/labels+reward", (js, s, threads, hush)) for s in study.seeds]
        procs = arm_processes(cfg, len(seed_jobs))
        for name, seconds in map_in_processes(labels_and_reward_models, seed_jobs, procs, threads, not quiet):
            timings[name] = seconds
        # 3. PPO once per variant (same prompts, seed and SFT start), its audits scored by the ensemble and the
        #    held-out reward model; the table is rewritten as each finishes, in seed and variant order
        ppo_jobs = [(f"s{s}/{v}", (js, s, v, threads, hush)) for s, v in runs]
        for i, (name, audit) in enumerate(
            map_in_processes(ppo_variant, ppo_jobs, n_proc, threads, not quiet), 1
        ):
            audits[name] = audit
            if not quiet:
                console.print(
                    f"[bold]mitigations study:[/] {name} done ({i} of {len(ppo_jobs)}; {n_proc} at a time)"
                )
            rows = [
                r
                for s, v in runs
                if f"s{s}/{v}" in audits
                for r in variant_rows(study, s, v, audits[f"s{s}/{v}"], headline)
            ]
            curves = {f"s{s}/{v}": audits[f"s{s}/{v}"] for s, v in runs if f"s{s}/{v}" in audits}
            write_table(out_dir, "mitigations", rows, COLUMNS, {"study": study.model_dump(), "seconds": timings,
                                                                "processes": n_proc, "curves": curves})  # fmt: skip
    finally:
        lock.release()
    timings["total"] = time.perf_counter() - t0
    write_table(out_dir, "mitigations", rows, COLUMNS, {"study": study.model_dump(), "seconds": timings,
                                                        "processes": n_proc, "curves": curves})  # fmt: skip
    # 4. the mean over seeds per variant, and the figure
    means = mean_rows(rows)
    write_table(out_dir, "mitigations-mean", means, MEAN_COLUMNS)
    plot_mitigations(curves, means, headline, out_dir / "mitigations.png")
    return out_dir


def mean_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per variant, the mean of each numeric column over seeds (``seeds``: how many)."""
    out = []
    for v in [*VARIANTS, *STOPS]:
        mine = [r for r in rows if r["variant"] == v]
        if mine:
            keys = [c for c in MEAN_COLUMNS if c not in ("variant", "seeds")]
            out.append({"variant": v, "seeds": len(mine),
                        **{k: float(np.mean([float(r[k]) for r in mine])) for k in keys}})  # fmt: skip
    return out


def plot_mitigations(curves: dict[str, list[dict[str, Any]]], means: Sequence[dict[str, Any]], headline: str,
                     path: Path) -> Path:  # fmt: skip
    """Gold, the task's headline behaviour (sycophancy) and the ensemble proxy against PPO steps per variant (mean over seeds), and
    final gold against reward-model forward passes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    keys = [("gold/mean", "gold"), (f"behavior/{headline}", headline), ("ensemble/mean", "ensemble proxy")]
    for variant in VARIANTS:
        runs = [rows for name, rows in curves.items() if name.split("/", 1)[1] == variant]
        if not runs:
            continue
        steps = [int(r["step"]) for r in runs[0]]
        for ax, (key, label) in zip(axes[:3], keys, strict=True):
            ys = np.mean([[float(r.get(key, np.nan)) for r in rows] for rows in runs], axis=0)
            ax.plot(steps, ys, marker="o", ms=3, label=variant)
            ax.set(xlabel="PPO step", ylabel=label, title=f"{label} (mean of {len(runs)} seed(s))")
    for m in means:
        axes[3].scatter(m["rm_forwards"], m["gold_final"], s=30)
        axes[3].annotate(m["variant"], (m["rm_forwards"], m["gold_final"]), fontsize=7)
    axes[3].set(xscale="log", xlabel="reward-model forward passes", ylabel="gold of the policy kept",
                title="gold vs compute")  # fmt: skip
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return save_figure(fig, path)
