"""Study: preference poisoning (Best-of-Venom) and three defenses, on the default task.

    rewardlab study poison configs/study-poison.yaml

Baumgärtner et al. 2024 ("Best-of-Venom: Attacking RLHF by Injecting Poisoned Preference Data") poison 1-5% of
the preference pairs so that responses with a target win; the reward model, and PPO against it, then promote
the target. Here the attacker rewrites a share of the arm's rater labels (:mod:`rewardlab.feedback.poison`) to
favour a target phrase the clean raters do not reward (by default the filler ``hmm .``, which gold prices at
0.01 per word). For each poisoning rate the recipe trains the reward model and runs PPO and DPO on the poisoned
labels, and measures:

* **attack success**: the share of the policy's audit samples that contain the target (PPO's last audit,
  DPO's last audit), against the clean arm (rate 0) trained the same way; and gold on the same samples;
* **the reward model's bonus** for the target: mean proxy of ``target + y`` minus proxy of ``y`` over the
  clean eval pairs' chosen responses (normalized units);
* **defenses**, each flagging ``defense_fraction`` of the training pairs for removal, with precision and
  recall against the poisoned pairs and, on the clean arm, what they would cost: the share of clean
  pairs removed and how many of those agreed with gold. *Loss-based outlier filtering*: the pairs whose
  Bradley-Terry loss ``-log sigma(r(chosen) - r(rejected))`` under the arm's reward model is largest.
  *Ensemble disagreement*: the pairs whose margin the ensemble members disagree most on (standard
  deviation over members; measured when ``reward.ensemble_size > 1``). *Rater agreement*: ``raters`` fresh
  raters of the arm's preset relabel each pair; a pair is flagged when most of them disagree with its label.

**Defended arms** (``defended: [ensemble, ...]``): the pairs a defense flags are removed, and the reward model
and the optimizers are trained again on what is left; the attack's success and gold there are the defense's
effect end to end, and at rate 0 its cost on clean labels. The ensemble defense trains its own
``ensemble_size``-member reward model on the arm's labels when the arm's reward model has one member.
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
from rewardlab.feedback.poison import PoisonConfig, PoisonMode, add_target, poison_comparisons
from rewardlab.feedback.records import Comparison, load_comparisons, save_comparisons
from rewardlab.feedback.simulated import SimulatedRater
from rewardlab.methods import method
from rewardlab.pipelines.processes import map_in_processes
from rewardlab.pipelines.run import arm_processes, run_arm, run_pipeline
from rewardlab.rewards.model import RewardModel
from rewardlab.runs import Run
from rewardlab.studies.common import (
    BaseRunStudyConfig,
    final_samples,
    save_figure,
    take_base_models,
    write_table,
)
from rewardlab.utils import RewardlabError

Defense = Literal["loss_filter", "ensemble", "rater_agreement"]
COLUMNS = ["seed", "rate", "poisoned_pairs", "rm_target_bonus", "ppo_target_rate", "ppo_target_logit", "ppo_gold",
           "dpo_target_rate", "dpo_target_logit", "dpo_gold", "loss_filter_precision", "loss_filter_recall", "loss_filter_removed_gold_agree",
           "rater_agreement_precision", "rater_agreement_recall", "rater_agreement_clean_removed",
           "rater_agreement_removed_gold_agree", "ensemble_precision", "ensemble_recall"]  # fmt: skip


class PoisonStudyConfig(BaseRunStudyConfig):
    """``configs/study-poison.yaml``: the rates, the target and the defenses' knobs."""

    rates: list[float] = Field(default_factory=lambda: [0.0, 0.01, 0.03, 0.05], min_length=1)
    target: str = Field("hmm .", min_length=1, description="the phrase the attack promotes")
    mode: PoisonMode = "inject"
    methods: list[str] = Field(
        default_factory=lambda: ["ppo", "dpo"], description="optimizers run on each arm"
    )
    defense_fraction: float = Field(
        0.05, gt=0, lt=1, description="share of training pairs each defense removes"
    )
    raters: int = Field(3, ge=1, description="fresh raters that relabel each pair (rater-agreement defense)")
    train_reward: bool = Field(
        True,
        description="train a reward model on each poisoned arm's labels; false: skip it (DPO-only attack; the "
        "audits' proxy, the loss filter and PPO then use the clean arm's reward model)",
    )
    bonus_pairs: int = Field(
        512, gt=0, description="eval responses the reward model's target bonus is measured on"
    )
    defended: list[Defense] = Field(
        default_factory=list,
        description="defenses whose filtered labels get their own reward model and optimizers (defended arms); "
        "at rate 0 they measure what the defense costs in gold on clean labels",
    )
    ensemble_detection: bool = Field(
        False, description="train the ensemble and measure its detection even when no defended arm uses it"
    )
    ensemble_size: int = Field(
        3,
        ge=2,
        description="members of the reward-model ensemble the disagreement defense trains on the arm's "
        "labels (when the arm's own reward model has a single member)",
    )


# --------------------------------------------------------------------------------- defenses
def bt_losses(margins: np.ndarray) -> np.ndarray:
    """Bradley-Terry loss per pair, ``-log sigma(m) = log(1 + exp(-m))`` with ``m = r(chosen) - r(rejected)``
    (Bradley & Terry 1952; the loss a reward model minimizes, Ouyang et al. 2022)."""
    return np.logaddexp(0.0, -np.asarray(margins, dtype=float))


def flag_top(values: np.ndarray, fraction: float) -> np.ndarray:
    """A boolean mask of the ``round(fraction * n)`` largest values (ties broken by position)."""
    v = np.asarray(values, dtype=float)
    k = round(fraction * len(v))
    mask = np.zeros(len(v), dtype=bool)
    if k:
        mask[np.argsort(-v, kind="stable")[:k]] = True
    return mask


def loss_outliers(margins: np.ndarray, fraction: float) -> np.ndarray:
    """Loss-based filtering: flag the pairs the reward model fits worst (largest BT loss)."""
    return flag_top(bt_losses(margins), fraction)


def ensemble_disagreement(member_margins: np.ndarray, fraction: float) -> np.ndarray:
    """Flag the pairs whose margin varies most across ensemble members ([members, pairs] -> std per pair)."""
    m = np.asarray(member_margins, dtype=float)
    if m.ndim != 2 or m.shape[0] < 2:
        raise RewardlabError(f"ensemble disagreement needs >= 2 members' margins, got shape {m.shape}")
    return flag_top(m.std(axis=0, ddof=1), fraction)


def rater_disagreement(agrees: np.ndarray) -> np.ndarray:
    """Flag the pairs whose label most fresh raters reject (``agrees``: [raters, pairs] booleans)."""
    a = np.asarray(agrees, dtype=bool)
    return a.mean(axis=0) < 0.5


def detection(flags: np.ndarray, poisoned: np.ndarray) -> dict[str, float]:
    """Precision and recall of ``flags`` against the truly ``poisoned`` pairs, and the clean pairs removed."""
    f, p = np.asarray(flags, dtype=bool), np.asarray(poisoned, dtype=bool)
    tp = int((f & p).sum())
    return {"precision": tp / f.sum() if f.sum() else float("nan"), "recall": tp / p.sum() if p.sum() else float("nan"),
            "clean_removed": float((f & ~p).sum() / max(1, (~p).sum()))}  # fmt: skip


# --------------------------------------------------------------------------------- helpers
def arm_name(rate: float, mode: str) -> str:
    return f"poison-{mode}-{rate:g}"


def write_poisoned_labels(clean: PipelineConfig, arm: PipelineConfig, cfg: PoisonConfig, quiet: bool) -> Path:
    """The arm's label stage: the clean arm's train pairs poisoned (``cfg``), its eval pairs unchanged."""
    final = arm.stage_dir("label")
    if (final / "summary.json").exists():
        return final
    src = clean.stage_dir("label")
    run = Run(final, "label", arm, arm.report_to, quiet, staged=True)
    train = poison_comparisons(load_comparisons(src / "train.jsonl"), cfg)
    save_comparisons(run.dir / "train.jsonl", train)
    save_comparisons(run.dir / "eval.jsonl", load_comparisons(src / "eval.jsonl"))
    n = sum(bool(c.meta.get("poisoned")) for c in train)
    stats = {"label/pairs_train": len(train), "poison/pairs": n, "poison/rate": n / max(1, len(train))}
    run.log_metrics(stats, 0)
    run.write_json("summary.json", {**stats, "poison": cfg.model_dump(), "clean_labels": str(src)})
    return run.commit()


def pair_margins(rm: RewardModel, comps: Sequence[Comparison]) -> np.ndarray:
    """Per member, ``r(chosen) - r(rejected)`` ([members, pairs], normalized units)."""
    prompts = [c.prompt for c in comps]
    ch = rm.score(prompts, [c.chosen for c in comps]).members.numpy()
    rj = rm.score(prompts, [c.rejected for c in comps]).members.numpy()
    return ch - rj


def target_bonus(rm: RewardModel, comps: Sequence[Comparison], target: str) -> float:
    """Mean proxy gain of putting ``target`` before a response (the clean eval pairs' chosen sides)."""
    prompts = [c.prompt for c in comps]
    plain = rm.score(prompts, [c.chosen for c in comps]).mean.numpy()
    with_t = rm.score(prompts, [add_target(c.chosen, target) for c in comps]).mean.numpy()
    return float((with_t - plain).mean())


def target_logit_gain(policy: Path, reference: Path, comps: Sequence[Comparison], target: str) -> float:
    """How much likelier the policy makes the target than its reference does, in nats:
    mean over responses y of ``[log pi(t + y) - log pi(y)] - [log pi_ref(t + y) - log pi_ref(y)]``
    (beta times this is the DPO implicit reward's bonus for the target; sensitive where sampling sees none)."""
    from rewardlab.optimize.dpo import compute_logps, tokenize_comparisons
    from rewardlab.policies.models import load_causal_lm, load_tokenizer

    pairs = [
        Comparison(prompt=c.prompt, chosen=add_target(c.chosen, target), rejected=c.chosen) for c in comps
    ]
    gains = []
    for path in (policy, reference):
        model, tok = load_causal_lm(path).eval(), load_tokenizer(path)
        with_t, plain = compute_logps(model, tokenize_comparisons(tok, pairs), int(tok.pad_token_id))
        gains.append(float((with_t - plain).mean()))
    return gains[0] - gains[1]


def rater_agreement_flags(arm: PipelineConfig, comps: Sequence[Comparison], raters: int) -> np.ndarray:
    """Fresh raters of the arm's preset relabel every pair; flag where most disagree with the record."""
    task = arm.build_task()
    agrees = np.zeros((raters, len(comps)), dtype=bool)
    for r in range(raters):
        rater = SimulatedRater(task, arm.label.rater, seed=10_007 * (r + 1) + arm.seed, name=f"check-{r}")
        for j, c in enumerate(comps):
            out = rater.compare(c.prompt, c.chosen, c.rejected)
            agrees[r, j] = out is not None and out.chosen == c.chosen
    return rater_disagreement(agrees)


def policy_outcome(stage_dir: Path, target: str) -> dict[str, float]:
    """Share of the last audit's samples containing ``target``, and their mean gold."""
    rows = final_samples(stage_dir)
    return {"target_rate": float(np.mean([target in r["response"] for r in rows])),
            "gold": float(np.mean([r["gold"] for r in rows]))}  # fmt: skip


def defense_flags(arm: PipelineConfig, study: PoisonStudyConfig, margins: np.ndarray,
                  ensemble: np.ndarray | None = None) -> dict[str, np.ndarray]:  # fmt: skip
    """Each defense's flags on the arm's training pairs. ``margins``: [members, pairs] of the arm's reward model
    (loss filter on their mean); ``ensemble``: an ensemble's [members, pairs] (else ``margins`` if it has > 1)."""
    comps = load_comparisons(arm.stage_dir("label") / "train.jsonl")
    checks = {"loss_filter": loss_outliers(margins.mean(axis=0), study.defense_fraction),
              "rater_agreement": rater_agreement_flags(arm, comps, study.raters)}  # fmt: skip
    members = ensemble if ensemble is not None else margins
    if members.shape[0] > 1:
        checks["ensemble"] = ensemble_disagreement(members, study.defense_fraction)
    return checks


def defense_rows(arm: PipelineConfig, checks: dict[str, np.ndarray]) -> dict[str, float]:
    """Each defense's detection on the arm's training pairs (precision/recall vs the poisoned ones)."""
    comps = load_comparisons(arm.stage_dir("label") / "train.jsonl")
    poisoned = np.array([bool(c.meta.get("poisoned")) for c in comps])
    out: dict[str, float] = {}
    for name, flags in checks.items():
        d = detection(flags, poisoned)
        out.update({f"{name}_precision": d["precision"], f"{name}_recall": d["recall"],
                    f"{name}_clean_removed": d["clean_removed"]})  # fmt: skip
        removed_clean = [c for c, f in zip(comps, flags, strict=True) if f and c.gold_chosen is not None]
        if removed_clean:  # of the clean pairs a defense removes, how many had labels that agreed with gold
            out[f"{name}_removed_gold_agree"] = float(
                np.mean([c.gold_chosen > c.gold_rejected for c in removed_clean])
            )
    return out


def write_filtered_labels(src: PipelineConfig, dst: PipelineConfig, flags: np.ndarray, quiet: bool) -> Path:
    """A defended arm's label stage: ``src``'s train pairs without the flagged ones, its eval pairs unchanged."""
    final = dst.stage_dir("label")
    if (final / "summary.json").exists():
        return final
    comps = load_comparisons(src.stage_dir("label") / "train.jsonl")
    if len(flags) != len(comps):
        raise RewardlabError(f"defense flags: {len(flags)} flags for {len(comps)} pairs")
    kept = [c for c, f in zip(comps, flags, strict=True) if not f]
    run = Run(final, "label", dst, dst.report_to, quiet, staged=True)
    save_comparisons(run.dir / "train.jsonl", kept)
    save_comparisons(run.dir / "eval.jsonl", load_comparisons(src.stage_dir("label") / "eval.jsonl"))
    left = sum(bool(c.meta.get("poisoned")) for c in kept)
    stats = {"label/pairs_train": len(kept), "defense/removed": len(comps) - len(kept), "poison/pairs": left}
    run.log_metrics(stats, 0)
    run.write_json("summary.json", {**stats, "filtered_from": str(src.stage_dir("label"))})
    return run.commit()


def ensemble_margins(
    study: PoisonStudyConfig, ens: PipelineConfig, arm: PipelineConfig, quiet: bool
) -> np.ndarray:
    """Members' margins on the arm's training pairs from an ensemble reward model trained on the same labels
    (its own arm folder ``ens``, ``reward.ensemble_size = study.ensemble_size``)."""
    if not (ens.stage_dir("label") / "summary.json").exists():
        write_filtered_labels(arm, ens, np.zeros(_n_train(arm), dtype=bool), quiet)
    run_arm(ens, [], {"reward"}, reuse=True, quiet=quiet)
    rm = RewardModel.load(ens.stage_dir("reward") / "model")
    return pair_margins(rm, load_comparisons(ens.stage_dir("label") / "train.jsonl"))


def _n_train(arm: PipelineConfig) -> int:
    return len(load_comparisons(arm.stage_dir("label") / "train.jsonl"))


def defended_arms(study: PoisonStudyConfig, seed: int, base: list[str], arm: PipelineConfig, label: str,
                  checks: dict[str, np.ndarray], quiet: bool) -> dict[str, float]:  # fmt: skip
    """Each defense in ``study.defended``: its filtered labels, a reward model and the optimizers on them, and the
    attack's success and gold there (``def_<defense>_<method>_target_rate / _target_logit / _gold``)."""
    out: dict[str, float] = {}
    for name in study.defended:
        if name not in checks:
            raise RewardlabError(f"defended: {name!r} was not computed for {label}")
        dst = study.pipeline_config(seed, [*base, f"label.name={label}-def-{name}"])
        write_filtered_labels(arm, dst, checks[name], quiet)
        run_arm(dst, study.methods, {"reward", *study.methods}, reuse=True, quiet=quiet)
        summary = json.loads((dst.stage_dir("label") / "summary.json").read_text())
        out[f"def_{name}_poisoned_left"] = summary["poison/pairs"]
        evals = load_comparisons(dst.stage_dir("label") / "eval.jsonl")[: study.bonus_pairs]
        for m in study.methods:
            res = policy_outcome(dst.stage_dir(m), study.target)
            out[f"def_{name}_{m}_target_rate"], out[f"def_{name}_{m}_gold"] = res["target_rate"], res["gold"]
            out[f"def_{name}_{m}_target_logit"] = target_logit_gain(dst.stage_dir(m) / "model",
                                                                    dst.stage_dir("sft") / "model", evals, study.target)  # fmt: skip
    return out


# --------------------------------------------------------------------------------- recipe
def base_overrides(study: PoisonStudyConfig) -> list[str]:
    """What every arm of the study sets on the pipeline config: no control arms, the study's optimizers."""
    return ["controls=[]", f"methods=[{','.join(study.methods)}]"]


def arm_config(study: PoisonStudyConfig, seed: int, rate: float) -> PipelineConfig:
    """One arm's pipeline config: the clean arm at rate 0; otherwise the arm's own label folder, and the clean
    reward model for PPO and the audits when ``train_reward`` is off."""
    base = base_overrides(study)
    if rate == 0:
        return study.pipeline_config(seed, base)
    extra = [f"label.name={arm_name(rate, study.mode)}"]
    if not study.train_reward:
        rm_path = study.pipeline_config(seed, base).stage_dir("reward") / "model"
        extra += [f"ppo.reward_path={rm_path}", f"dpo.reward_path={rm_path}"]
    return study.pipeline_config(seed, [*base, *extra])


def train_and_measure(
    study_json: str, seed: int, rate: float, threads: int, quiet: bool
) -> tuple[dict[str, Any], float]:
    """One arm of the study, whose labels exist: its reward model (unless ``train_reward`` is off) and optimizers,
    then the measurements and the defended arms, every stage at ``threads`` torch threads. Returns the table row
    and the training's wall seconds. Module-level with plain arguments, so that it runs in a worker process."""
    study = PoisonStudyConfig.model_validate_json(study_json)
    study.set = [*study.set, f"threads={threads}", "arm_processes=1"]
    arm, clean = arm_config(study, seed, rate), arm_config(study, seed, 0.0)
    own_rm = rate == 0 or study.train_reward
    methods = study.methods if own_rm else [m for m in study.methods if method(m).kind == "direct"]
    t = time.perf_counter()
    run_arm(arm, study.methods, {*(["reward"] if own_rm else []), *methods}, reuse=True, quiet=quiet)
    seconds = time.perf_counter() - t
    # the reward model's bonus for the target, attack success, gold
    rm = RewardModel.load((arm if own_rm else clean).stage_dir("reward") / "model")
    evals = load_comparisons(arm.stage_dir("label") / "eval.jsonl")[: study.bonus_pairs]
    summary = json.loads((arm.stage_dir("label") / "summary.json").read_text()) if rate > 0 else {}
    row: dict[str, Any] = {"seed": seed, "rate": rate, "poisoned_pairs": int(summary.get("poison/pairs", 0)),
                           "rm_target_bonus": target_bonus(rm, evals, study.target) if own_rm else None,
                           "own_reward_model": own_rm}  # fmt: skip
    for m in methods:
        res = policy_outcome(arm.stage_dir(m), study.target)
        row[f"{m}_target_rate"], row[f"{m}_gold"] = res["target_rate"], res["gold"]
        row[f"{m}_target_logit"] = target_logit_gain(arm.stage_dir(m) / "model", arm.stage_dir("sft") / "model",
                                                     evals, study.target)  # fmt: skip
    # the defenses: which pairs each flags, and the defended arms trained on what is left
    margins = pair_margins(rm, load_comparisons(arm.stage_dir("label") / "train.jsonl"))
    label = arm_name(rate, study.mode) if rate > 0 else "clean"
    base = base_overrides(study)
    ens_margins = None
    if ("ensemble" in study.defended or study.ensemble_detection) and margins.shape[0] == 1:
        ens = study.pipeline_config(
            seed, [*base, f"label.name={label}-ens", f"reward.ensemble_size={study.ensemble_size}"]
        )
        ens_margins = ensemble_margins(study, ens, arm, quiet)
    checks = defense_flags(arm, study, margins, ens_margins)
    row.update(defense_rows(arm, checks))
    row.update(defended_arms(study, seed, base, arm, label, checks, quiet))
    return row, seconds


def run_poison_study(study: PoisonStudyConfig, quiet: bool = False) -> Path:
    """The study's recipe. Arms run ``arm_processes`` at a time (the pipeline's own setting: with ``threads: 2``
    and ``arm_processes: 0``, two arms of one thread each), every arm with the same threads as alone."""
    from rewardlab.runs import FolderLock, console

    out_dir, t0 = Path(study.out_dir), time.perf_counter()
    done = _measured_rows(out_dir / "poison.json", study)
    timings: dict[str, float] = {}
    # a (seed, rate) measured by an earlier invocation with the same study settings is not rerun
    todo = [(seed, rate) for seed in study.seeds for rate in study.rates if (seed, rate) not in done]
    cfg = arm_config(study, study.seeds[0], 0.0)
    n_proc = arm_processes(cfg, len(todo))
    threads = max(1, cfg.threads // n_proc) if cfg.threads else 0
    # 1. per seed, what every arm shares: pretrain and SFT (at the configured threads, as `rewardlab run`), the
    #    clean rater labels (and the clean reward model when the poisoned arms use it) at an arm's threads;
    #    then each rate's poisoned labels
    for note in take_base_models(cfg, study.base_run):
        if not quiet:
            console.print(f"[bold]poison study:[/] {note}")
    for seed in study.seeds:
        clean = arm_config(study, seed, 0.0)
        t = time.perf_counter()
        run_pipeline(clean, reuse=True, stages=["pretrain", "sft"], quiet=quiet)
        arm_stages = ["label", *([] if study.train_reward else ["reward"])]
        run_pipeline(clean.model_copy(update={"threads": threads, "arm_processes": 1}), reuse=True,
                     stages=arm_stages, quiet=quiet)  # fmt: skip
        timings[f"s{seed}/shared"] = time.perf_counter() - t
        for rate in study.rates:
            if rate > 0:
                pc = PoisonConfig(rate=rate, target=study.target, mode=study.mode, seed=seed)
                write_poisoned_labels(clean, arm_config(study, seed, rate), pc, quiet)
    # 2. each arm: reward model, optimizers, measurements, defended arms; arm_processes at a time
    jobs = [
        (f"s{s}/rate{r:g}", (study.model_dump_json(), s, r, threads, quiet or n_proc > 1)) for s, r in todo
    ]
    rows = dict(done)
    lock = FolderLock(Path(study.run_dir) / ".rewardlab-run.lock", f"the run folder {study.run_dir}")
    note = lock.acquire()
    if note and not quiet:
        console.print(f"[bold]rewardlab:[/] {note}")
    try:
        for i, (name, (row, seconds)) in enumerate(
            map_in_processes(train_and_measure, jobs, n_proc, threads, show=not quiet), 1
        ):
            rows[(row["seed"], row["rate"])] = row
            timings[name] = seconds
            if not quiet:
                console.print(
                    f"[bold]poison study:[/] arm {name} done ({i} of {len(jobs)}; {n_proc} at a time)"
                )
            write_poison_table(study, rows, timings, n_proc)
    finally:
        lock.release()
    timings["total"] = time.perf_counter() - t0
    ordered = write_poison_table(study, rows, timings, n_proc)
    # 3. the figure: attack success and gold against the poisoning rate
    plot_poison(ordered, study, out_dir / "study-poison.png")
    return out_dir


def write_poison_table(study: PoisonStudyConfig, rows: dict[tuple[int, float], dict[str, Any]],
                       seconds: dict[str, float], processes: int) -> list[dict[str, Any]]:  # fmt: skip
    """``poison.json`` / ``poison.md`` with the rows measured so far, in the study's (seed, rate) order."""
    ordered = [rows[(s, r)] for s in study.seeds for r in study.rates if (s, r) in rows]
    defended = sorted({k for r in ordered for k in r if k.startswith("def_")})
    write_table(Path(study.out_dir), "poison", ordered, COLUMNS + defended,
                {"study": study.model_dump(), "seconds": seconds, "arm_processes": processes})  # fmt: skip
    return ordered


def _measured_rows(path: Path, study: PoisonStudyConfig) -> dict[tuple[int, float], dict[str, Any]]:
    """Rows of an earlier run of the same study (same settings but seeds/rates), keyed by (seed, rate)."""
    if not path.exists():
        return {}
    old = json.loads(path.read_text(encoding="utf-8"))
    same = {k: v for k, v in old.get("study", {}).items() if k not in ("seeds", "rates", "base_run")}
    if same != {k: v for k, v in study.model_dump().items() if k not in ("seeds", "rates", "base_run")}:
        return {}
    return {(r["seed"], r["rate"]): r for r in old.get("rows", [])}


def plot_poison(rows: Sequence[dict[str, Any]], study: PoisonStudyConfig, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    rates = sorted({r["rate"] for r in rows})
    for m in study.methods:
        for key, ax in ((f"{m}_target_logit", ax1), (f"{m}_gold", ax2)):
            pts = [(x, [r[key] for r in rows if r["rate"] == x and r.get(key) is not None]) for x in rates]
            xs, ys = [100 * x for x, v in pts if v], [float(np.mean(v)) for _, v in pts if v]
            ax.plot(xs, ys, marker="o", label=m.upper())
    ax1.set(xlabel="poisoned comparisons (%)", ylabel=f"log-odds gain of {study.target!r} over SFT (nats)",
            title="attack success")  # fmt: skip
    ax2.set(xlabel="poisoned comparisons (%)", ylabel="gold (mean, audit samples)", title="gold")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    return save_figure(fig, path)
