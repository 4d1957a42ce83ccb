"""Intuitive Fine-Tuning's training step and loop (Hua et al. 2024, arXiv:2405.11870).

One step, as the official trainer does it (TsinghuaC3I/Intuitive-Fine-Tuning, ``src/trainers.py``, loss
``ift``; config ``config/loss/ift.yaml``: λ = 0.2, γ = 0.95):

1. a no-gradient forward on the demonstration gives the model's greedy prediction ŷ_t of every response
   token from the true prefix (prompt positions keep their tokens);
2. the training forward reads the mixed input embeddings ``(1 - λ)·e(y_t) + λ·e(ŷ_t)`` (the *temporal
   residual connection*; :func:`rewardlab.losses.ift_mixed_embeddings`), with e a frozen copy of the
   model's input embedding table taken at the start when that table is not tied to the LM head (the
   official models'), else the live table (:func:`freeze_inputs`);
3. the loss is each response token's NLL weighted by the discounted loss of the tokens after it
   (:func:`rewardlab.losses.ift_loss`).

With λ = 0 and γ = 0 (and the live input table) this is rewardlab's SFT step exactly
(:func:`rewardlab.optimize.lm.lm_loss`; a test checks the loss and every gradient). One process only.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from rewardlab.config import IFTConfig
from rewardlab.kernels.precision import training_linears
from rewardlab.losses import ift_loss, ift_mixed_embeddings, selective_log_softmax
from rewardlab.optimize.lm import IGNORE, LOG_EVERY
from rewardlab.runs import Run, advance
from rewardlab.training import Cadence, Trainee
from rewardlab.utils import RewardlabError


def embeddings_tied(model: nn.Module) -> bool:
    """Whether ``model``'s input embedding table is its LM head's weight (``tie_word_embeddings``)."""
    head = model.get_output_embeddings()
    return head is not None and head.weight is model.get_input_embeddings().weight


def freeze_inputs(model: nn.Module, cfg: IFTConfig) -> bool:
    """``ift.freeze_input_embeddings`` resolved for ``model``: the frozen copy by default only for an untied
    input table. With tied embeddings the live table trains through the LM head, so inputs read from a frozen
    copy would differ, more every step, from the inputs the model reads when it samples (measured: IFT's
    samples stopped ending and gold fell below the base model's); asking for it explicitly is an error."""
    tied = embeddings_tied(model)
    if cfg.freeze_input_embeddings is None:
        return not tied
    if cfg.freeze_input_embeddings and tied:
        raise RewardlabError(
            "ift.freeze_input_embeddings: true needs an input embedding table that is not tied to the LM head; "
            "this model ties them (tie_word_embeddings), so the head's updates move the table the model samples "
            "with away from the frozen copy it trains on: leave it unset (live table) or set false"
        )
    return cfg.freeze_input_embeddings


def frozen_embedding(model: nn.Module) -> nn.Embedding:
    """A frozen copy of ``model``'s input embedding table, taken now (IFT's ``e``)."""
    live = model.get_input_embeddings()
    return nn.Embedding.from_pretrained(
        live.weight.detach().clone(), freeze=True, padding_idx=live.padding_idx
    )


@torch.no_grad()
def greedy_inputs(model: nn.Module, embeds: Tensor, batch: dict[str, Tensor]) -> Tensor:
    """The input ids with every labelled (response) position replaced by the model's greedy prediction of it
    from the true prefix: ŷ_t = argmax π(· | y_<t), read from the logits at position t - 1."""
    logits = model(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits
    ids = batch["input_ids"]
    shifted = torch.cat([ids[:, :1], logits[:, :-1].argmax(-1)], dim=1)
    return torch.where(batch["labels"] != IGNORE, shifted, ids)


def ift_step_loss(model: nn.Module, frozen: nn.Embedding, batch: dict[str, Tensor], cfg: IFTConfig
                  ) -> tuple[Tensor, int, dict[str, float]]:  # fmt: skip
    """IFT's loss on one right-padded ``collate_lm`` batch (completion-only labels); returns (loss, number of
    response tokens, stats: the plain NLL of the mixed-input forward, the share of response tokens the greedy
    prediction gets right, the largest token weight)."""
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    table = frozen if freeze_inputs(model, cfg) else model.get_input_embeddings()
    gold = table(ids)
    if cfg.lam > 0:  # 1. the greedy prediction of every response token (no gradient), from the same table
        predicted_ids = greedy_inputs(model, gold.detach(), batch)
        embeds = ift_mixed_embeddings(gold, table(predicted_ids).to(gold.dtype), cfg.lam)
    else:  # λ = 0: the demonstration alone (the first pass would not change the input)
        predicted_ids, embeds = None, gold
    # 2. the training forward on the mixed inputs; 3. the weighted NLL of the response tokens
    logits = model(inputs_embeds=embeds, attention_mask=mask).logits[:, :-1].float()
    target = labels[:, 1:]
    m = target != IGNORE
    logp = selective_log_softmax(logits, target.clamp(min=0))
    loss, w = ift_loss(logp, m, cfg.gamma)
    n = int(m.sum())
    stats = {"ift/nll": float(-(logp.detach() * m).sum() / max(n, 1)), "ift/weight_max": float(w.max())}
    if predicted_ids is not None:
        stats["ift/prediction_match"] = float(((predicted_ids == ids) & (labels != IGNORE)).sum() / max(n, 1))
    return loss, n, stats


def train_ift(trainee: Trainee, next_batch: Callable[[int], dict[str, Tensor]], cfg: IFTConfig, run: Run,
              cadence: Cadence, frozen: nn.Embedding) -> dict[str, float]:  # fmt: skip
    """Steps ``cadence.start + 1 .. cadence.steps`` of IFT; logs ``train/loss`` (the weighted loss),
    ``train/grad_norm``, ``train/lr``, ``train/tokens`` (lm.py's names) and the ``ift/*`` stats every
    ``LOG_EVERY`` steps; evaluates as the cadence says. Returns throughput stats."""
    model, acc = trainee.model, trainee.acc
    tokens, train_seconds = 0, 0.0
    model.train()
    with training_linears(model), run.progress(cadence.steps, "ift steps") as prog:
        for step in cadence.range():
            t0 = time.perf_counter()
            batch = {k: v.to(acc.device) for k, v in next_batch(step).items()}
            loss, n, stats = ift_step_loss(model, frozen, batch, cfg)
            gnorm = trainee.update(loss, cfg.optim.max_grad_norm, step, run.stage)
            train_seconds += time.perf_counter() - t0
            tokens += n
            if step % LOG_EVERY == 0 or step == cadence.steps:
                run.log_metrics({"train/loss": loss.item(), "train/grad_norm": gnorm,
                                 "train/lr": trainee.sched.get_last_lr()[0], "train/tokens": tokens, **stats,
                                 "time/elapsed": run.elapsed}, step)  # fmt: skip
            cadence.after_step(step, model, tokens=tokens)
            advance(prog, f"loss {loss.item():.3f}")
    model.eval()
    return {"tokens": float(tokens), "train_seconds": train_seconds,
            "tokens_per_second": tokens / max(train_seconds, 1e-9)}  # fmt: skip
