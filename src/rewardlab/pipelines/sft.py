"""Recipe: supervised fine-tuning on expert demonstrations (completion-only loss, length bucketing)."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from rewardlab.audit.policy_eval import evaluate_policy
from rewardlab.checkpoint import Checkpointer
from rewardlab.config import PipelineConfig
from rewardlab.distributed import make_accelerator, stage_run
from rewardlab.feedback.records import load_prompt_completions
from rewardlab.optimize.lm import Example, collate_lm, lm_loss, train_lm
from rewardlab.pipelines.common import (
    eval_problems,
    finish_lm_stage,
    load_stage_policy,
    setup_stage,
    stage_input,
)
from rewardlab.policies.models import load_tokenizer
from rewardlab.policies.tokenizer import Limits, encode_examples
from rewardlab.tasks.base import has_capability
from rewardlab.training import BatchOrder, Cadence, bucket_batches, shuffled_batches
from rewardlab.utils import RewardlabError, write_jsonl


def run_sft(cfg: PipelineConfig, quiet: bool = False) -> Path:
    task = setup_stage(cfg, 2)
    sc = cfg.sft
    base = stage_input(cfg, sc.model_path, "pretrain", "model", "base model")
    acc = make_accelerator()
    run = stage_run(acc, cfg.stage_dir("sft"), "sft", cfg, cfg.report_to, quiet)
    tokenizer = load_tokenizer(base)
    policy = load_stage_policy(cfg, run, base, sc.lora, acc.device)
    model = policy.model
    pad = int(tokenizer.pad_token_id)  # type: ignore[arg-type]

    if sc.data_path:
        rows = load_prompt_completions(sc.data_path)
    else:
        if not has_capability(task, "demos"):
            raise RewardlabError(f"task {task.info.name} has no demonstrations: give sft.data_path")
        demo = task.demos(sc.demos)  # type: ignore[attr-defined]
        rng = random.Random(cfg.seed * 7 + 2)
        items = [task.sample_item(rng) for _ in range(sc.num_demos)]
        rows = [{"prompt": task.prompt(i), "completion": demo(i, rng)} for i in items]
        if acc.is_main_process:
            write_jsonl(run.dir / "demos.jsonl", rows)
    limits = Limits.for_stage(tokenizer, sc, "sft")
    examples: list[Example] = encode_examples(
        tokenizer, [r["prompt"] for r in rows], [r["completion"] for r in rows], limits
    )
    if limits.describe():
        run.info(limits.describe())  # type: ignore[arg-type]
        run.record("data/truncated", limits.cut)
    n_eval = max(1, int(len(examples) * sc.eval_fraction))
    eval_ex, train_ex = examples[:n_eval], examples[n_eval:]
    if not train_ex:
        raise RewardlabError("sft: no training examples left after the eval split")
    run.info(f"{len(train_ex)} train / {len(eval_ex)} eval demonstrations from {base}")

    lengths = [len(p) + len(c) for p, c in train_ex]

    def epoch(rng: random.Random) -> list[list[int]]:  # reversed: SFT has always taken batches from the end
        if sc.packing == "bucket":
            return bucket_batches(lengths, sc.batch_size, rng)[::-1]
        return shuffled_batches(len(train_ex), sc.batch_size, rng)[::-1]

    order = BatchOrder(epoch, random.Random(cfg.seed))

    def next_batch(step: int) -> dict:
        return collate_lm([train_ex[j] for j in order.next()], pad, completion_only=True)

    held_out = eval_problems(task, sc.eval_prompts)

    def evaluate(step: int) -> dict[str, float]:
        with torch.no_grad():
            losses = [lm_loss(model, collate_lm(eval_ex[i : i + 256], pad, True))[0].item()
                      for i in range(0, len(eval_ex), 256)]  # fmt: skip
        m, _ = evaluate_policy(
            model, tokenizer, task, held_out, max_new_tokens=cfg.label.max_new_tokens, seed=step
        )
        return {"eval/loss": sum(losses) / len(losses), **{f"eval/{k}": v for k, v in m.items()}}

    ckpt = Checkpointer(
        run, every=sc.checkpoint_every, total_steps=sc.steps, resume=cfg.resume, accelerator=acc
    )
    model = train_lm(model, next_batch, sc.optim, run, Cadence(sc.steps, eval_every=sc.eval_every, evaluate=evaluate,
                     checkpoint=ckpt), accelerator=acc, data_state=order)  # fmt: skip
    if acc.is_main_process:
        finish_lm_stage(run, model, tokenizer, task, held_out, cfg.label.max_new_tokens, policy=policy)
    acc.wait_for_everyone()
    return run.commit() / "model"
