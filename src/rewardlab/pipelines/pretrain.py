"""Recipe: pretrain the base model from scratch on the task's mixed-quality corpus."""

from __future__ import annotations

import random
from pathlib import Path

from rewardlab.audit.policy_eval import evaluate_policy
from rewardlab.checkpoint import Checkpointer
from rewardlab.config import PipelineConfig
from rewardlab.distributed import make_accelerator, stage_run
from rewardlab.optimize.lm import collate_lm, train_lm
from rewardlab.pipelines.common import eval_problems, finish_lm_stage, setup_stage
from rewardlab.policies.models import build_causal_lm, num_parameters
from rewardlab.policies.tokenizer import encode_examples, tokenizer_for_task
from rewardlab.tasks.base import has_capability
from rewardlab.training import Cadence
from rewardlab.utils import RewardlabError


def run_pretrain(cfg: PipelineConfig, quiet: bool = False) -> Path:
    task = setup_stage(cfg, 1)
    pc = cfg.pretrain
    acc = make_accelerator()
    run = stage_run(acc, cfg.stage_dir("pretrain"), "pretrain", cfg, cfg.report_to, quiet)
    if not has_capability(task, "corpus"):
        raise RewardlabError(
            f"task {task.info.name} has no pretraining corpus: give sft.model_path (a base model)"
        )
    corpus = task.corpus(pc.corpus)  # type: ignore[attr-defined]
    tokenizer = tokenizer_for_task(task, model_max_length=pc.model.max_position_embeddings)
    model = build_causal_lm(pc.model, tokenizer, seed=cfg.seed)
    run.info(
        f"base model: {pc.model.arch}, {num_parameters(model) / 1e6:.2f}M parameters, vocab {len(tokenizer)}"
    )
    pad = int(tokenizer.pad_token_id)  # type: ignore[arg-type]

    def next_batch(step: int) -> dict:
        rng = random.Random(cfg.seed * 1_000_003 + step)
        items = [task.sample_item(rng) for _ in range(pc.batch_size)]
        responses = [corpus(item, rng) for item in items]
        return collate_lm(
            encode_examples(tokenizer, [task.prompt(i) for i in items], responses), pad, completion_only=False
        )

    held_out = eval_problems(task, pc.eval_prompts)

    def evaluate(step: int) -> dict[str, float]:
        m, _ = evaluate_policy(
            model, tokenizer, task, held_out, max_new_tokens=cfg.label.max_new_tokens, seed=step
        )
        return {f"eval/{k}": v for k, v in m.items()}

    ckpt = Checkpointer(
        run, every=pc.checkpoint_every, total_steps=pc.steps, resume=cfg.resume, accelerator=acc
    )
    model = train_lm(model, next_batch, pc.optim, run, Cadence(pc.steps, eval_every=pc.eval_every, evaluate=evaluate,
                     checkpoint=ckpt), accelerator=acc, chunks=pc.length_chunks)  # fmt: skip
    if acc.is_main_process:
        finish_lm_stage(
            run, model, tokenizer, task, held_out, cfg.label.max_new_tokens, params=num_parameters(model)
        )
    acc.wait_for_everyone()
    return run.commit() / "model"
