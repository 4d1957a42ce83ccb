"""Language-model training shared by pretraining and SFT: batching, the loss, the loop.

The loop is written on ``accelerate.Accelerator`` so the same code runs on a CPU, one GPU or many.
SFT uses a completion-only loss (prompt tokens are masked with -100, like TRL's
``completion_only_loss``); pretraining trains on every non-pad token.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rewardlab.config import OptimConfig
from rewardlab.runs import Run, advance
from rewardlab.utils import atomic_dir, check_finite

Example = tuple[list[int], list[int]]  # (prompt_ids, completion_ids ending in EOS)
IGNORE = -100


def collate_lm(examples: Sequence[Example], pad_id: int, completion_only: bool) -> dict[str, torch.Tensor]:
    """Right-pad prompt+completion sequences; labels are -100 on padding (and on the prompt if completion_only)."""
    seqs = [p + c for p, c in examples]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    labels = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
    for i, ((p, _c), s) in enumerate(zip(examples, seqs, strict=True)):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
        start = len(p) if completion_only else 0
        labels[i, start : len(s)] = torch.tensor(s[start:])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def bucket_batches(
    lengths: Sequence[int], batch_size: int, rng: random.Random, window: int = 64
) -> list[list[int]]:
    """Length bucketing: shuffle, sort within windows of ``window`` batches, cut batches, shuffle batches.

    Batches hold sequences of similar length, so little compute is spent on padding.
    """
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = batch_size * window
    batches: list[list[int]] = []
    for i in range(0, len(order), chunk):
        part = sorted(order[i : i + chunk], key=lambda j: lengths[j])
        batches.extend(part[k : k + batch_size] for k in range(0, len(part), batch_size))
    rng.shuffle(batches)
    return batches


def lm_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Mean next-token cross-entropy over labelled positions; returns (loss, number of tokens)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    n = int((labels != IGNORE).sum())
    loss = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=IGNORE
    )
    return loss, n


def make_optimizer(
    model: torch.nn.Module, cfg: OptimConfig, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (no decay on biases/norms) with linear warmup then cosine, linear or constant."""
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "norm" in n else decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=cfg.betas,
    )

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        progress = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
        progress = min(1.0, progress)
        if cfg.schedule == "linear":
            return max(0.0, 1.0 - progress)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def save_model(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, path: Path, **extra_config: object
) -> Path:
    """``save_pretrained`` model + tokenizer into ``path`` atomically (temp folder, then rename)."""
    for k, v in extra_config.items():
        setattr(model.config, k, v)

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)

    return atomic_dir(path, write)


def train_lm(
    model: PreTrainedModel,
    next_batch: Callable[[int], dict[str, torch.Tensor]],
    *,
    steps: int,
    optim: OptimConfig,
    run: Run,
    evaluate: Callable[[int], dict[str, float]] | None = None,
    eval_every: int = 0,
    log_every: int = 10,
    accelerator: Accelerator | None = None,
) -> PreTrainedModel:
    """Train ``model`` for ``steps`` optimizer steps on ``next_batch(step)``; log, evaluate, check for NaN."""
    acc = accelerator or Accelerator()
    opt, sched = make_optimizer(model, optim, steps)
    model, opt = acc.prepare(model, opt)
    model.train()
    tokens = 0
    with run.progress(steps, "training") as prog:
        for step in range(1, steps + 1):
            batch = {k: v.to(acc.device) for k, v in next_batch(step).items()}
            loss, n = lm_loss(model, batch)
            check_finite(loss, "loss", step, run.stage)
            acc.backward(loss)
            gnorm = acc.clip_grad_norm_(model.parameters(), optim.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            tokens += n
            if step % log_every == 0 or step == steps:
                metrics = {"train/loss": loss.item(), "train/grad_norm": float(gnorm), "train/lr": sched.get_last_lr()[0],
                           "train/tokens": tokens, "time/elapsed": run.elapsed}  # fmt: skip
                run.log_metrics(metrics, step)
            if evaluate is not None and eval_every and (step % eval_every == 0 or step == steps):
                model.eval()
                em = evaluate(step)
                model.train()
                run.log_metrics(em, step)
                run.info(
                    f"step {step}: "
                    + ", ".join(f"{k}={v:.3f}" for k, v in em.items() if isinstance(v, float))
                )
            advance(prog, f"loss {loss.item():.3f}")
    model.eval()
    return acc.unwrap_model(model)
