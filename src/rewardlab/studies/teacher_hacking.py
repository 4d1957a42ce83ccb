"""Study 4: teacher hacking in distillation (Tiapkin et al. 2025, "On Teacher Hacking in Language Model
Distillation"), on the default task's tiny LMs.

    rewardlab study teacher-hacking configs/study-teacher-hacking.yaml

The controlled setup of the paper, scaled down:

* the **oracle** is the ground-truth distribution: the SFT model of a finished run (trained on the task's
  demonstrations);
* the **teacher** is the oracle's imperfect distillation: the pretrained base model trained for a few steps
  on a small fixed set of oracle samples with the token-level forward-KL loss;
* the **student** starts from the same base model and is distilled from the teacher with the same loss
  (:func:`rewardlab.losses.distillation_loss`), on one of two kinds of data. *offline*: a fixed dataset of
  teacher samples on ``offline_prompts`` prompts, reused epoch after epoch; *online*: every step fresh
  training prompts and responses sampled from the student itself, each token scored by the teacher's
  next-token distribution (on-policy distillation, Agarwal et al. 2024).

Over training, on held-out prompts, it measures the student's **proxy** distance (to the teacher) and
**golden** distance (to the oracle): the sequence-level forward KL ``KL(teacher || student)`` along fixed
teacher samples and ``KL(oracle || student)`` along fixed oracle samples, plus the reverse KLs
``KL(student || .)`` along the student's own samples, and gold of the student's samples. Teacher hacking is
the golden distance turning up (a U) while the proxy keeps falling. The detection signal needs no oracle:
a power law ``a t^-b`` fitted to the proxy curve on an early window, and the later points' deviation from it
(:func:`rewardlab.studies.distill.power_law_deviation`).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from rewardlab.config import OptimConfig
from rewardlab.losses import distillation_loss
from rewardlab.pipelines.common import EVAL_SEED
from rewardlab.policies.models import load_causal_lm, load_tokenizer, save_model
from rewardlab.policies.sampling import SampleBatch
from rewardlab.policies.tokenizer import decode_completion
from rewardlab.studies.common import StudyConfig, save_figure, write_table
from rewardlab.studies.distill import (
    eval_steps,
    power_law_deviation,
    response_logits,
    sample_sequences,
    sequence_kl,
    take,
    u_shape,
)
from rewardlab.training import make_optimizer
from rewardlab.utils import RewardlabError, seed_everything, set_threads

Arm = Literal["offline", "online"]
COLUMNS = ["seed", "arm", "golden_start", "golden_min", "golden_min_step", "golden_final", "golden_rise",
           "proxy_start", "proxy_final", "golden_rkl_final", "gold_final", "law_b", "law_r2", "max_deviation",
           "onset", "seconds"]  # fmt: skip


class TeacherHackingConfig(StudyConfig):
    """``configs/study-teacher-hacking.yaml``: the three models, the two kinds of data, the measurement."""

    oracle: str = Field("sft/model", description="the oracle LM, relative to run_dir (or absolute)")
    base: str = Field(
        "pretrain/model", description="teacher's and student's initialization, relative to run_dir"
    )
    teacher_prompts: int = Field(
        128, gt=0, description="prompts of the oracle samples the teacher learns from"
    )
    teacher_steps: int = Field(60, gt=0, description="teacher distillation steps (few: an imperfect teacher)")
    offline_prompts: int = Field(64, gt=0, description="size of the student's fixed offline dataset")
    arms: list[Arm] = Field(default_factory=lambda: ["offline", "online"], min_length=1)
    steps: int = Field(400, gt=0, description="student distillation steps per arm")
    batch_size: int = Field(32, gt=0)
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate (constant after 10 warmup steps)")
    eval_prompts: int = Field(256, gt=0, description="held-out prompts the distances are measured on")
    eval_points: int = Field(16, ge=3, description="about this many log-spaced evaluations (plus step 0)")
    max_new_tokens: int = Field(20, gt=0)
    fit_window: tuple[int, int] = Field(
        (5, 60), description="steps whose proxy points the power law is fitted on"
    )
    threshold: float = Field(0.1, gt=0, description="log-deviation from the law that counts as a departure")
    reverse_kl: bool = Field(
        False, description="also measure KL(student || teacher/oracle) on the student's samples"
    )


# --------------------------------------------------------------------------------- training
def distill(student: torch.nn.Module, teacher: torch.nn.Module, batches: Any, steps: int, lr: float,
            on_step: Any = None) -> None:  # fmt: skip
    """``steps`` AdamW steps of :func:`distillation_loss` on ``batches(step, student) -> SampleBatch``;
    ``on_step(step)`` after each (and before the first, with 0)."""
    opt, sched = make_optimizer(student, OptimConfig(lr=lr, warmup_steps=10, schedule="constant"), steps)
    teacher.eval()
    if on_step:
        on_step(0)
    for step in range(1, steps + 1):
        batch = batches(step, student)
        with torch.no_grad():
            t_logits = response_logits(teacher, batch)
        student.train()
        loss = distillation_loss(t_logits, response_logits(student, batch), batch.response_mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        sched.step()
        student.eval()
        if on_step:
            on_step(step)


def offline_batches(data: Any, batch_size: int, seed: int) -> Any:
    """Epochs over a fixed dataset (a :class:`SampleBatch`), reshuffled each epoch with a seeded RNG."""
    rng, order = random.Random(seed), []

    def batches(step: int, student: torch.nn.Module) -> Any:
        nonlocal order
        if len(order) < batch_size:
            perm = list(range(len(data)))
            rng.shuffle(perm)
            order = order + perm
        idx, order = order[:batch_size], order[batch_size:]
        return take(data, idx)

    return batches


def online_batches(prompts_fn: Any, tokenizer: Any, batch_size: int, max_new_tokens: int, seed: int) -> Any:
    """Fresh prompts every step and responses sampled from the student itself (on-policy)."""

    def batches(step: int, student: torch.nn.Module) -> Any:
        return sample_sequences(student, tokenizer, prompts_fn(batch_size, seed * 100_003 + step), max_new_tokens,
                                seed * 7_919 + step)  # fmt: skip

    return batches


# --------------------------------------------------------------------------------- recipe
@dataclass
class Setup:
    """What one seed's arms share: the task, the three models' pieces and the fixed held-out sequences."""

    task: Any
    tok: Any
    oracle: torch.nn.Module
    teacher: torch.nn.Module
    base_path: Path
    held: list
    teacher_seqs: SampleBatch
    oracle_seqs: SampleBatch

    def prompts(self, n: int, seed: int) -> list[str]:
        return [self.task.prompt(i) for i in self.task.sample_items(n, seed=seed, split="train")]


def run_teacher_hacking(study: TeacherHackingConfig, quiet: bool = False) -> Path:
    out_dir = Path(study.out_dir)
    rows: list[dict[str, Any]] = []
    curves: dict[str, list[dict[str, float]]] = {}
    refs: dict[str, dict[str, float]] = {}
    for seed in study.seeds:
        t0 = time.perf_counter()
        setup, refs[f"s{seed}"] = prepare(study, seed, out_dir)
        # 3. the student's fixed offline dataset: teacher samples on offline_prompts training prompts
        offline_data = sample_sequences(setup.teacher, setup.tok, setup.prompts(study.offline_prompts, seed * 31 + 3),
                                        study.max_new_tokens, seed * 31 + 4)  # fmt: skip
        for arm in study.arms:
            # 4. the student, distilled from the teacher on offline or online data, measured at log-spaced steps
            ta = time.perf_counter()
            batches = (
                offline_batches(offline_data, study.batch_size, seed)
                if arm == "offline"
                else online_batches(setup.prompts, setup.tok, study.batch_size, study.max_new_tokens, seed)
            )
            curve = student_curve(study, setup, batches, seed)
            curves[f"s{seed}/{arm}"] = curve
            # 5. the row: the golden U, the proxy, and the detection signal on the proxy curve
            rows.append(_row(seed, arm, curve, study, time.perf_counter() - ta))
            write_table(out_dir, "teacher_hacking", rows, COLUMNS,
                        {"study": study.model_dump(), "curves": curves, "reference": refs})  # fmt: skip
            if not quiet:
                print(f"seed {seed} {arm}: " + ", ".join(f"{k}={v}" for k, v in rows[-1].items()), flush=True)
        if not quiet:
            print(f"seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
    plot_teacher_hacking(curves, study, out_dir / "study-teacher-hacking.png")
    return out_dir


def prepare(study: TeacherHackingConfig, seed: int, out_dir: Path) -> tuple[Setup, dict[str, float]]:
    """Steps 1-2 of a seed: the oracle, the teacher (trained once, then reused) and the held-out sequences."""
    cfg = study.pipeline_config(seed)
    set_threads(cfg.threads)
    seed_everything(seed)
    task = cfg.build_task()
    # 1. the oracle, and the base model teacher and student start from
    oracle = load_causal_lm(_path(study, study.oracle)).eval()
    tok = load_tokenizer(_path(study, study.oracle))
    base_path = _path(study, study.base)
    # 2. the teacher: the base model distilled briefly from the oracle on a small fixed set of oracle samples
    teacher_dir = out_dir / f"teacher-s{seed}"
    if not (teacher_dir / "config.json").exists():
        teacher = load_causal_lm(base_path)
        items = task.sample_items(study.teacher_prompts, seed=seed * 31 + 1, split="train")
        data = sample_sequences(
            oracle, tok, [task.prompt(i) for i in items], study.max_new_tokens, seed * 31 + 2
        )
        distill(teacher, oracle, offline_batches(data, study.batch_size, seed), study.teacher_steps, study.lr)
        save_model(teacher, tok, teacher_dir)
    teacher = load_causal_lm(teacher_dir).eval()
    # fixed held-out sequences: the teacher's and the oracle's samples (the forward KLs are measured on them)
    held = task.sample_items(study.eval_prompts, seed=EVAL_SEED, split="eval")
    prompts = [task.prompt(i) for i in held]
    setup = Setup(task, tok, oracle, teacher, base_path, held,
                  sample_sequences(teacher, tok, prompts, study.max_new_tokens, EVAL_SEED + 1),
                  sample_sequences(oracle, tok, prompts, study.max_new_tokens, EVAL_SEED + 2))  # fmt: skip
    ref = {"teacher_golden": sequence_kl(oracle, teacher, setup.oracle_seqs),
           "teacher_gold": _gold(setup, teacher, study.max_new_tokens),
           "oracle_gold": _gold(setup, oracle, study.max_new_tokens)}  # fmt: skip
    return setup, ref


def student_curve(
    study: TeacherHackingConfig, setup: Setup, batches: Any, seed: int
) -> list[dict[str, float]]:
    """Distil a fresh student (the base model) from the teacher; the distances at log-spaced steps."""
    torch.manual_seed(seed)
    student = load_causal_lm(setup.base_path)
    checkpoints = set(eval_steps(study.steps, study.eval_points))
    curve: list[dict[str, float]] = []

    def measure(step: int) -> None:
        if step in checkpoints:
            curve.append(distances(setup, student, study, step))

    distill(student, setup.teacher, batches, study.steps, study.lr, on_step=measure)
    return curve


def distances(
    setup: Setup, student: torch.nn.Module, study: TeacherHackingConfig, step: int
) -> dict[str, float]:
    """The student's proxy (to the teacher) and golden (to the oracle) distances, and gold of its samples."""
    prompts = [setup.task.prompt(i) for i in setup.held]
    own = sample_sequences(student, setup.tok, prompts, study.max_new_tokens, EVAL_SEED + 3)
    point = {"step": step, "proxy": sequence_kl(setup.teacher, student, setup.teacher_seqs),
             "golden": sequence_kl(setup.oracle, student, setup.oracle_seqs),
             "gold": _mean_gold(setup.task, setup.held, own, setup.tok)}  # fmt: skip
    if study.reverse_kl:
        point["proxy_rkl"] = sequence_kl(student, setup.teacher, own)
        point["golden_rkl"] = sequence_kl(student, setup.oracle, own)
    return point


def _path(study: TeacherHackingConfig, p: str) -> Path:
    q = Path(p) if Path(p).is_absolute() else Path(study.run_dir) / p
    if not q.exists():
        raise RewardlabError(f"teacher-hacking: model folder {q} not found (a finished run's {p})")
    return q


def _mean_gold(task: Any, items: list, batch: Any, tok: Any) -> float:
    golds = [
        task.gold(i, decode_completion(tok, r.tolist()))
        for i, r in zip(items, batch.response_ids, strict=True)
    ]
    vals = [g for g in golds if g is not None]
    return float(np.mean(vals)) if vals else float("nan")


def _gold(setup: Setup, model: torch.nn.Module, max_new_tokens: int) -> float:
    prompts = [setup.task.prompt(i) for i in setup.held]
    own = sample_sequences(model, setup.tok, prompts, max_new_tokens, EVAL_SEED + 3)
    return _mean_gold(setup.task, setup.held, own, setup.tok)


def _row(
    seed: int, arm: str, curve: list[dict[str, float]], study: TeacherHackingConfig, seconds: float
) -> dict:
    steps = [int(c["step"]) for c in curve]
    g = u_shape(steps, [c["golden"] for c in curve])
    fit = power_law_deviation(steps, [c["proxy"] for c in curve], study.fit_window, study.threshold)
    return {"seed": seed, "arm": arm, "golden_start": curve[0]["golden"], "golden_min": g["min"],
            "golden_min_step": g["min_step"], "golden_final": g["final"], "golden_rise": g["rise"],
            "proxy_start": curve[0]["proxy"], "proxy_final": curve[-1]["proxy"],
            "golden_rkl_final": curve[-1].get("golden_rkl"), "gold_final": curve[-1]["gold"], "law_b": fit.b,
            "law_r2": fit.r2, "max_deviation": fit.max_deviation, "onset": fit.onset, "seconds": round(seconds, 1)}  # fmt: skip


def plot_teacher_hacking(
    curves: dict[str, list[dict[str, float]]], study: TeacherHackingConfig, path: Path
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    colors = {"offline": "tab:red", "online": "tab:blue"}
    for key, curve in curves.items():
        arm = key.split("/")[1]
        pts = [c for c in curve if c["step"] > 0]
        t = [c["step"] for c in pts]
        kw = {"color": colors.get(arm), "alpha": 0.8, "label": key}
        axes[0].loglog(t, [c["proxy"] for c in pts], marker=".", **kw)
        axes[1].semilogx(t, [c["golden"] for c in pts], marker=".", **kw)
        axes[2].plot([c["proxy"] for c in pts], [c["golden"] for c in pts], marker=".", **kw)
    lo, hi = study.fit_window
    axes[0].axvspan(lo, hi, color="grey", alpha=0.15, label="power-law fit window")
    axes[0].set(
        xlabel="student step", ylabel="proxy: KL(teacher || student)", title="distance to the teacher"
    )
    axes[1].set(xlabel="student step", ylabel="golden: KL(oracle || student)", title="distance to the oracle")
    axes[2].set(xlabel="proxy (to the teacher)", ylabel="golden (to the oracle)", title="golden vs proxy")
    axes[2].invert_xaxis()
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return save_figure(fig, path)
