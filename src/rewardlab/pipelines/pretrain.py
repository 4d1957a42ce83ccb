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
from rewardlab.policies.tokenizer import build_task_tokenizer, encode_examples
from rewardlab.tasks.arithmetic import TASK_WORDS, sample_corpus_response


def run_pretrain(cfg: PipelineConfig, quiet: bool = False) -> Path:
    task = setup_stage(cfg, 1)
    pc = cfg.pretrain
    acc = make_accelerator()
    run = stage_run(acc, cfg.stage_dir("pretrain"), "pretrain", cfg, cfg.report_to, quiet)
    tokenizer = build_task_tokenizer(TASK_WORDS, model_max_length=pc.model.max_position_embeddings)
    model = build_causal_lm(pc.model, tokenizer, seed=cfg.seed)
    run.info(
        f"base model: {pc.model.arch}, {num_parameters(model) / 1e6:.2f}M parameters, vocab {len(tokenizer)}"
    )
    pad = int(tokenizer.pad_token_id)  # type: ignore[arg-type]

    def next_batch(step: int) -> dict:
        rng = random.Random(cfg.seed * 1_000_003 + step)
        problems = [task.sample_problem(rng) for _ in range(pc.batch_size)]
        responses = [sample_corpus_response(task, p, pc.corpus, rng) for p in problems]
        return collate_lm(
            encode_examples(tokenizer, [p.text for p in problems], responses), pad, completion_only=False
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
    model = train_lm(model, next_batch, steps=pc.steps, optim=pc.optim, run=run, evaluate=evaluate,
                     eval_every=pc.eval_every, accelerator=acc, checkpoint=ckpt,
                     chunks=pc.length_chunks)  # fmt: skip
    out = run.dir / "model"
    if acc.is_main_process:
        out, _ = finish_lm_stage(
            run, model, tokenizer, task, held_out, cfg.label.max_new_tokens, params=num_parameters(model)
        )
    acc.wait_for_everyone()
    run.close()
    return out
