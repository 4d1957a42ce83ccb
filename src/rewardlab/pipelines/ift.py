"""Recipe: Intuitive Fine-Tuning (IFT) from the base model on positive data, audited like the other optimizers.

Hua et al. 2024, "Intuitive Fine-Tuning: Towards Simplifying Alignment into a Single Process" (arXiv:2405.11870):
SFT and preference optimization as one token-level process (:mod:`rewardlab.optimize.ift`). It is the
one-stage counterpart of SFT-then-DPO, so it starts where SFT starts (the pretrained base) and reads the same
data that pipeline reads, minus what IFT cannot use: the SFT stage's demonstrations and the *chosen* side of
the arm's rater labels (``ift.data``); the rejected side is never seen. ``ift.steps`` defaults to
``sft.steps + dpo.steps``. The audit is the optimizers' (``AuditLog``): proxy (the arm's separate reward
model), gold, behaviours and KL to the SFT model, at step 0 (the base) and every ``ift.eval_every`` steps.
"""

from __future__ import annotations

import random
from pathlib import Path

from rewardlab.audit.tracker import AuditLog, AuditSpec, scheduled_evals
from rewardlab.config import PipelineConfig
from rewardlab.distributed import make_accelerator, stage_run
from rewardlab.feedback.records import load_comparisons, load_prompt_completions
from rewardlab.optimize.ift import freeze_inputs, frozen_embedding, train_ift
from rewardlab.optimize.lm import collate_lm
from rewardlab.pipelines.common import (
    eval_problems,
    load_stage_model,
    load_stage_policy,
    setup_stage,
    stage_input,
)
from rewardlab.policies.models import load_tokenizer
from rewardlab.policies.tokenizer import Limits, encode_examples
from rewardlab.rewards.model import RewardModel
from rewardlab.training import BatchOrder, Cadence, Trainee, make_optimizer, shuffled_batches
from rewardlab.utils import RewardlabError


def training_pairs(cfg: PipelineConfig) -> tuple[list, list, dict[str, int]]:
    """IFT's (prompts, completions): the SFT stage's demonstrations and/or the chosen side of the arm's
    non-tie labels (``ift.data``), and how many came from each."""
    ic = cfg.ift
    prompts: list = []
    completions: list = []
    counts = {"demos": 0, "chosen": 0}
    if ic.data in ("demos", "both"):
        path = stage_input(cfg, ic.demos_path or cfg.sft.data_path, "sft", "demos.jsonl", "demonstrations")
        rows = load_prompt_completions(path)
        prompts += [r["prompt"] for r in rows]
        completions += [r["completion"] for r in rows]
        counts["demos"] = len(rows)
    if ic.data in ("chosen", "both"):
        comps = [c for c in load_comparisons(stage_input(cfg, ic.labels_path, "label", "train.jsonl", "comparisons"))
                 if not c.tie]  # fmt: skip
        prompts += [c.prompt for c in comps]
        completions += [c.chosen for c in comps]
        counts["chosen"] = len(comps)
    if not prompts:
        raise RewardlabError(f"ift: no training data (ift.data={ic.data})")
    return prompts, completions, counts


def run_ift(cfg: PipelineConfig, quiet: bool = False) -> Path:
    # 1. the task and the inputs: the base model, the SFT model (KL reference), the arm's RM (audit proxy)
    task = setup_stage(cfg, 9)
    ic = cfg.ift
    base = stage_input(cfg, ic.model_path, "pretrain", "model", "base model")
    ref_path = stage_input(cfg, ic.reference_path, "sft", "model", "SFT model (the audit's reference)")
    reward_path = stage_input(cfg, ic.reward_path, "reward", "model", "reward model")
    acc = make_accelerator()
    if acc.num_processes > 1:
        raise RewardlabError("ift runs in one process (no data-parallel path): run it without torchrun")
    run = stage_run(acc, cfg.stage_dir("ift"), "ift", cfg, cfg.report_to, quiet)
    run.write_json("../arm.json", cfg.arm_info())
    tok = load_tokenizer(base)
    pad = int(tok.pad_token_id)  # type: ignore[arg-type]
    policy = load_stage_policy(cfg, run, base, None, acc.device)
    model = policy.model

    # 2. the data, tokenized once (completion-only labels), drawn in shuffled batches
    prompts, completions, counts = training_pairs(cfg)
    limits = Limits.for_stage(tok, ic, "ift")
    examples = encode_examples(tok, prompts, completions, limits)
    order = BatchOrder(
        lambda rng: shuffled_batches(len(examples), ic.batch_size, rng), random.Random(cfg.seed * 1000 + 9)
    )
    steps = ic.steps or cfg.sft.steps + cfg.dpo.steps
    frozen_table = freeze_inputs(model, ic)
    table = "a frozen copy of the input table" if frozen_table else "the live (tied) input table"
    run.info(f"IFT lambda={ic.lam:g} gamma={ic.gamma:g}: {counts['demos']} demonstrations + {counts['chosen']} chosen "
             f"label sides, {steps} steps of {ic.batch_size} from {base}; e() reads {table}")  # fmt: skip

    def next_batch(step: int) -> dict:
        return collate_lm([examples[j] for j in order.next()], pad, completion_only=True)

    # 3. the audit (reference: the SFT model, so IFT's KL is comparable with the other optimizers')
    ref = load_stage_model(cfg, run, ref_path, acc.device).eval().requires_grad_(False)
    rm = RewardModel.load(reward_path)
    for m in rm.members:
        m.requires_grad_(False).to(acc.device)
    spec = AuditSpec(task, eval_problems(task, ic.eval_prompts), ic.max_new_tokens, cfg.seed, temperature=ic.temperature,
                     samples_to_save=ic.samples_to_save, evals=scheduled_evals(cfg.audit_evals))  # fmt: skip
    audit = AuditLog(run, ref, tok, rm, spec)

    # 4. train: the frozen embedding copy is taken before the first update; audit at 0 and on the cadence
    frozen = frozen_embedding(model).to(acc.device)
    opt, sched = make_optimizer(model, ic.optim, steps)
    model, opt = acc.prepare(model, opt)
    audit(acc.unwrap_model(model), 0, **{"ift/lambda": ic.lam, "ift/gamma": ic.gamma})
    cadence = Cadence(steps, 0, ic.eval_every, lambda s: audit(acc.unwrap_model(model), s))
    stats = train_ift(Trainee(model, opt, sched, acc), next_batch, ic, run, cadence, frozen)

    # 5. save the policy and the summary
    policy.save(tok, run.dir / "model")
    run.write_json("summary.json", {"start": audit.rows[0], "end": audit.rows[-1], "train": stats, "steps": steps,
                                    "data": counts, "lambda": ic.lam, "gamma": ic.gamma,
                                    "frozen_input_table": frozen_table, "seconds": run.elapsed})  # fmt: skip
    run.info(f"{stats['tokens_per_second']:.0f} tokens/s; saved {run.final / 'model'} in {run.elapsed:.0f}s")
    return run.commit() / "model"
