"""Language-model training shared by pretraining and SFT: batching, the loss, the loop.

The loop is written on ``accelerate.Accelerator`` so the same code runs on a CPU, one GPU or many:
with several processes each one trains on its rows of the same global batch and the loss is the
global token mean (see :mod:`rewardlab.distributed`). SFT uses a completion-only loss (prompt tokens
are masked with -100, like TRL's ``completion_only_loss``); pretraining trains on every non-pad token.
Training state (weights, optimizer, schedule, data order, RNGs) is checkpointed and resumed with a
:class:`~rewardlab.checkpoint.Checkpointer`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from transformers import PreTrainedModel

from rewardlab.distributed import batch_share, make_accelerator, reduce_sums
from rewardlab.kernels.precision import training_linears
from rewardlab.runs import Run, advance
from rewardlab.training import Cadence, Trainee, make_optimizer
from rewardlab.utils import check_finite

if TYPE_CHECKING:
    from rewardlab.config import OptimConfig

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


def lm_loss(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], reduction: str = "mean"
) -> tuple[torch.Tensor, int]:
    """Next-token cross-entropy over labelled positions (mean, or ``"sum"``); returns (loss, number of tokens)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    n = int((labels != IGNORE).sum())
    loss = F.cross_entropy(  # in float32 whatever the weights' dtype (a no-op for float32 logits)
        logits[:, :-1].float().reshape(-1, logits.size(-1)),
        labels.reshape(-1),
        ignore_index=IGNORE,
        reduction=reduction,
    )
    return loss, n


def length_chunks(batch: dict[str, torch.Tensor], chunks: int) -> list[dict[str, torch.Tensor]]:
    """Split a right-padded batch into ``chunks`` micro-batches of similar length, each trimmed to its
    longest row, so that little compute goes to padding. Rows are sorted by length (stable), so the
    split depends only on the batch."""
    lengths = batch["attention_mask"].sum(1)
    order = torch.sort(lengths, stable=True).indices
    out = []
    for idx in torch.tensor_split(order, min(chunks, len(order))):
        width = int(lengths[idx].max())
        out.append({k: v[idx, :width] for k, v in batch.items()})
    return out


def chunked_lm_backward(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    chunks: int,
    backward: Callable[[torch.Tensor], None],
) -> tuple[torch.Tensor, int]:
    """The token-mean loss of ``batch`` and its gradient, computed over length-sorted micro-batches.

    Each micro-batch back-propagates ``sum of its token losses / tokens in the whole batch``, so the
    accumulated gradient is that of the whole batch's token mean (equal up to float summation order).
    Returns (detached loss, token count).
    """
    parts = length_chunks(batch, chunks)
    n = int((batch["labels"][:, 1:] != IGNORE).sum())
    total = torch.zeros(())
    for part in parts:
        loss_sum, _ = lm_loss(model, part, reduction="sum")
        backward(loss_sum / max(n, 1))
        total += loss_sum.detach()
    return total / max(n, 1), n


LOG_EVERY = 10  # training metrics every N steps (and at the last)


def local_lm_loss(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], acc: Accelerator
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """This process's part of the global token-mean loss of ``batch`` (the global batch, every process
    holding all of it): ``(sum of its rows' token losses) * world / (global token count)``.

    DDP averages gradients over the ``world`` processes, so the gradient is that of the global
    token mean, whatever the split of tokens between processes. Returns (scaled loss, unscaled local
    sum detached, global token count).
    """
    n_global = int((batch["labels"][:, 1:] != IGNORE).sum())
    share = batch_share(acc, batch["input_ids"].shape[0], denominator=n_global)
    local = {k: v[share.rows] for k, v in batch.items()}
    if not share.real:  # a stand-in row: no labelled token, so it adds nothing
        local["labels"] = torch.full_like(local["labels"], IGNORE)
    loss_sum, _ = lm_loss(model, local, reduction="sum")
    return loss_sum * share.scale, loss_sum.detach(), n_global


def train_lm(model: PreTrainedModel, next_batch: Callable[[int], dict[str, torch.Tensor]], optim: OptimConfig,
             run: Run, cadence: Cadence, *, accelerator: Accelerator | None = None, data_state: Any = None,
             chunks: int = 1) -> PreTrainedModel:  # fmt: skip
    """Train ``model`` for ``cadence.steps`` optimizer steps on ``next_batch(step)``; log, evaluate, check for NaN.

    ``next_batch(step)`` gives the *global* batch; with several processes each trains on its rows.
    ``cadence.evaluate(step) -> metrics`` runs on the main process only, in eval mode, and is logged. With
    ``cadence.checkpoint``, the weights, optimizer, schedule, ``data_state`` (an object with
    ``state_dict``, e.g. a :class:`BatchOrder`) and RNGs are saved as it says and restored when resuming.
    ``chunks > 1`` computes each (single-process) step over that many length-sorted micro-batches
    (:func:`chunked_lm_backward`): the same loss, less padding.
    """
    # 1. optimizer and schedule, and the training state to resume from
    acc = accelerator or make_accelerator()
    world = acc.num_processes
    chunked = world == 1 and chunks > 1
    opt, sched = make_optimizer(model, optim, cadence.steps)
    model, opt = acc.prepare(model, opt)
    trainee = Trainee(model, opt, sched, acc)
    run.health.vocab_size = getattr(
        getattr(acc.unwrap_model(model), "config", None), "vocab_size", None
    )  # loss at ln|V|: collapsed
    tokens, start, ckpt = 0, 0, cadence.checkpoint
    if ckpt is not None:
        ckpt.total_steps = cadence.steps
        ckpt.track(model=model, optimizer=opt, scheduler=sched, data=data_state)
        start = ckpt.restore()
        tokens = int(ckpt.extra.get("tokens", 0))
    evaluate = cadence.evaluate

    def evaluate_and_log(step: int) -> None:
        if (
            evaluate is None or not acc.is_main_process
        ):  # the others go on to the next all-reduce and wait there
            return
        model.eval()
        em = evaluate(step)
        model.train()
        run.log_metrics(em, step)  # type: ignore[arg-type]
        run.info(f"step {step}: " + ", ".join(f"{k}={v:.3f}" for k, v in em.items() if isinstance(v, float)))  # type: ignore[union-attr]

    cadence = dataclasses.replace(cadence, start=start, evaluate=evaluate_and_log if evaluate else None)
    model.train()
    with training_linears(model), run.progress(cadence.steps, "training") as prog:
        if start:
            advance(prog, n=start)
        for step in cadence.range():
            # 2. the loss on the global batch (this process's share of its token mean), and the update
            batch = {k: v.to(acc.device) for k, v in next_batch(step).items()}
            if chunked:  # back-propagates inside, one micro-batch at a time
                loss, n = chunked_lm_backward(model, batch, chunks, acc.backward)
                logged = loss
                check_finite(loss, "loss", step, run.stage)
                gnorm = trainee.apply(optim.max_grad_norm)
            else:
                if world == 1:
                    loss, n = lm_loss(model, batch)
                    logged = loss
                else:
                    loss, local_sum, n = local_lm_loss(model, batch, acc)
                    logged = local_sum / max(
                        n, 1
                    )  # this process's share; the logged value is all-reduced below
                gnorm = trainee.update(loss, optim.max_grad_norm, step, run.stage)
            tokens += n
            # 3. metrics every LOG_EVERY steps, evaluation and checkpoint when due
            if step % LOG_EVERY == 0 or step == cadence.steps:
                loss_value = (
                    loss.item() if world == 1 else reduce_sums(acc, [float(local_sum)])[0] / max(n, 1)
                )
                metrics = {"train/loss": loss_value, "train/grad_norm": gnorm, "train/lr": sched.get_last_lr()[0],
                           "train/tokens": tokens, "time/elapsed": run.elapsed}  # fmt: skip
                run.log_metrics(metrics, step)
            cadence.after_step(step, model, tokens=tokens)
            advance(prog, f"loss {logged.item():.3f}")
    model.eval()
    return acc.unwrap_model(model)
