"""Direct Preference Heads: the head, the frozen policy's hidden states it reads, its training, reranking.

Hadji-Kyriacou & Arandjelović 2024, "Would I Lie To You? Inference Time Alignment of Language Models using
Direct Preference Heads" (arXiv:2405.20053). A small head reads the language model's final hidden state at
the response's last token (its EOS) and outputs a scalar reward; it is trained on preference pairs with the
paper's label-smoothed objectives (:func:`rewardlab.losses.dph_loss`) while the language model (body and LM
head) stays frozen, so the policy's output distribution is exactly unchanged. At inference the policy samples
n responses and the head keeps its favourite.

Because the body is frozen, every sequence's hidden state is computed once (:func:`final_hidden_states`) and
the head trains on those cached features: an epoch over 10,000 pairs is a few milliseconds of small matrix
products. Metrics use TRL's reward-trainer names where the quantity is the same (``loss``,
``rewards/chosen``, ``rewards/rejected``, ``rewards/margins``, ``rewards/accuracies``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rewardlab.config import DPHConfig
from rewardlab.losses import dph_loss
from rewardlab.optimize.lm import Example
from rewardlab.runs import Run, advance
from rewardlab.training import make_optimizer
from rewardlab.utils import RewardlabError, check_finite, length_sorted_batches


class PreferenceHead(nn.Module):
    """``r(h) = w₂ᵀ tanh(W₁ h + b₁) + b₂`` (``pooler``) or ``wᵀ h + b``: a scalar reward from a hidden state."""

    def __init__(self, hidden_size: int, pooler: bool = True) -> None:
        super().__init__()
        self.hidden_size, self.pooler = hidden_size, pooler
        self.dense = nn.Linear(hidden_size, hidden_size) if pooler else None
        self.out = nn.Linear(hidden_size, 1)

    def forward(self, hidden: Tensor) -> Tensor:
        h = torch.tanh(self.dense(hidden)) if self.dense is not None else hidden
        return self.out(h).squeeze(-1)


def _decoder(model: nn.Module) -> nn.Module | None:
    """The transformer body of an HF causal LM (``model.model`` for Llama), or ``None``."""
    return getattr(model, getattr(model, "base_model_prefix", ""), None)


@torch.no_grad()
def final_hidden_states(model: nn.Module, examples: Sequence[Example], pad_id: int,
                        batch_size: int = 64) -> Tensor:  # fmt: skip
    """The final-layer hidden state ``[N, H]`` at the last token (the completion's EOS) of each ``prompt +
    completion``, in order; right-padded batches of similar length, the model in eval mode (no dropout)."""
    if not examples:
        return torch.zeros(0, int(model.config.hidden_size))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: Tensor | None = None
    lengths = [len(p) + len(c) for p, c in examples]
    for idx in length_sorted_batches(lengths, batch_size):
        seqs = [examples[i][0] + examples[i][1] for i in idx]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for j, s in enumerate(seqs):
            ids[j, : len(s)], mask[j, : len(s)] = torch.tensor(s), 1
        ids, mask = ids.to(device), mask.to(device)
        body = _decoder(model)
        if body is not None:
            hidden = body(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        else:
            hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
        last = hidden[torch.arange(len(seqs), device=device), mask.sum(1) - 1].float().cpu()
        if out is None:
            out = torch.zeros(len(examples), last.shape[-1])
        out[idx] = last
    model.train(was_training)
    assert out is not None
    return out


@dataclass
class PairFeatures:
    """The frozen policy's final hidden states of each pair's chosen and rejected side ``[N, H]``."""

    chosen: Tensor
    rejected: Tensor

    def __len__(self) -> int:
        return int(self.chosen.shape[0])


def head_loss(
    head: PreferenceHead, feats: PairFeatures, idx: Sequence[int], cfg: DPHConfig
) -> tuple[Tensor, dict]:
    """The mean DPH loss of pairs ``idx`` and TRL's reward metrics (detached) for them."""
    out = dph_loss(head(feats.chosen[list(idx)]), head(feats.rejected[list(idx)]), kind=cfg.loss,
                   label_smoothing=cfg.label_smoothing)  # fmt: skip
    c, r = out.chosen_rewards, out.rejected_rewards
    metrics = {"rewards/chosen": float(c.mean()), "rewards/rejected": float(r.mean()),
               "rewards/margins": float((c - r).mean()), "rewards/accuracies": float((c > r).float().mean())}  # fmt: skip
    return out.losses.mean(), metrics


def train_head(
    head: PreferenceHead, feats: PairFeatures, cfg: DPHConfig, run: Run, seed: int
) -> dict[str, float]:
    """``cfg.epochs`` shuffled passes over the pairs' cached features; logs TRL's metric names per step.

    Only the head's parameters are given to the optimizer (the language model is not even in the graph:
    the features are detached tensors). Returns the last step's metrics and the number of steps.
    """
    if len(feats) == 0:
        raise RewardlabError("dph: no training pairs")
    rng = random.Random(seed)
    per_epoch = -(-len(feats) // cfg.batch_size)
    total = cfg.epochs * per_epoch
    opt, sched = make_optimizer(head, cfg.optim, total)
    head.train()
    step, m = 0, {}
    with run.progress(total, "dph head steps") as prog:
        for _ in range(cfg.epochs):
            order = list(range(len(feats)))
            rng.shuffle(order)
            for i in range(0, len(order), cfg.batch_size):
                step += 1
                loss, m = head_loss(head, feats, order[i : i + cfg.batch_size], cfg)
                check_finite(loss, "loss", step, run.stage)
                loss.backward()
                gnorm = float(nn.utils.clip_grad_norm_(head.parameters(), cfg.optim.max_grad_norm))
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                m = {"loss": loss.item(), **m, "grad_norm": gnorm, "learning_rate": sched.get_last_lr()[0]}
                if step % 10 == 0 or step == total:
                    run.log_metrics(m, step)
                advance(prog, f"loss {m['loss']:.3f} acc {m['rewards/accuracies']:.2f}")
    head.eval()
    return {**m, "steps": float(step)}


@torch.no_grad()
def head_scores(head: PreferenceHead, features: Tensor) -> Tensor:
    """The head's reward of each feature row ``[N]``."""
    head.eval()
    return head(features)
