"""Encoder reward models trained in part: frozen lower layers, or the scalar head alone on pooled features.

With ``reward.train_layers: 0`` the encoder is frozen, so each side of a comparison has one fixed pooled
feature vector ``f`` (the pooling of :func:`rewardlab.rewards.model.member_scores`). The reward is then
linear, ``r = w·f + b``, and the head is fitted once on the cached features with the Bradley-Terry loss
(a linear probe of the frozen encoder): each epoch costs a few matrix products instead of a forward pass
of the encoder, so many epochs are cheap. The fitted ``(w, b)`` go into the member's ``.classifier``, so
the member scores exactly as a fully trained one does (same folder format, same pooling).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from rewardlab.losses import bradley_terry_loss
from rewardlab.rewards.model import backbone_of, collate_sequences, masked_mean, pooling_of
from rewardlab.training import shuffled_batches
from rewardlab.utils import RewardlabError, length_sorted_batches


def freeze_lower_layers(model: PreTrainedModel, train_layers: int | None) -> int:
    """Freeze an encoder's embeddings and all but its top ``train_layers`` transformer layers (the pooler and
    the head stay trainable); ``None`` leaves everything trainable. Returns the number of frozen layers."""
    if train_layers is None:
        return 0
    if backbone_of(model) != "encoder":
        raise RewardlabError(
            "reward.train_layers applies to encoder backbones; leave it unset for a causal LM"
        )
    layers = model.base_model.encoder.layer
    frozen = max(len(layers) - train_layers, 0)
    model.base_model.embeddings.requires_grad_(False)
    for layer in layers[:frozen]:
        layer.requires_grad_(False)
    return frozen


@torch.no_grad()
def pooled_features(model: PreTrainedModel, seqs: Sequence[list[int]], pad_id: int,
                    batch_size: int = 64) -> torch.Tensor:  # fmt: skip
    """The pooled vectors [N, hidden] the head of an encoder member reads, for token sequences: the masked mean
    of the last hidden states (``mean``) or the pooler's output on [CLS] (``cls``); computed in eval mode."""
    if backbone_of(model) != "encoder":
        raise RewardlabError("pooled features need an encoder backbone (reward.train_layers: 0)")
    was_training = model.training
    model.eval()
    out = torch.zeros(len(seqs), model.config.hidden_size)
    mean = pooling_of(model) == "mean"
    for idx in length_sorted_batches([len(s) for s in seqs], batch_size):
        b = collate_sequences([seqs[i] for i in idx], pad_id)
        h = model.base_model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
        out[idx] = (
            masked_mean(h.last_hidden_state, b["attention_mask"]) if mean else h.pooler_output
        ).float()
    model.train(was_training)
    return out


@dataclass
class HeadFit:
    weight: torch.Tensor  # [hidden]
    bias: float
    losses: list[float]  # mean training loss per epoch
    accuracies: list[float]  # training accuracy per epoch


def fit_linear_head(f_chosen: torch.Tensor, f_rejected: torch.Tensor, *, epochs: int, batch_size: int, lr: float,
                    weight_decay: float = 0.0, seed: int = 0, target: torch.Tensor | None = None,
                    margin: torch.Tensor | None = None) -> HeadFit:  # fmt: skip
    """A linear reward ``r(f) = w·f`` fitted on fixed features by the Bradley-Terry loss (see
    :func:`rewardlab.losses.bradley_terry_loss`), AdamW with decoupled ``weight_decay``, seeded minibatches.

    The bias cancels in ``r_c - r_r``, so it stays 0 (the reward's offset is set by normalization)."""
    if f_chosen.shape != f_rejected.shape or f_chosen.ndim != 2 or len(f_chosen) == 0:
        raise RewardlabError(f"fit_linear_head: need two equal [N, H] feature matrices, got "
                             f"{tuple(f_chosen.shape)} and {tuple(f_rejected.shape)}")  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    w = (torch.randn(f_chosen.shape[1], generator=gen) / (f_chosen.shape[1] + 1) ** 0.5).requires_grad_(True)
    opt = torch.optim.AdamW([w], lr=lr, weight_decay=weight_decay)
    rng = random.Random(seed)
    losses, accs = [], []
    for _ in range(epochs):
        total, correct = 0.0, 0.0
        for idx in shuffled_batches(len(f_chosen), batch_size, rng):
            r_c, r_r = f_chosen[idx] @ w, f_rejected[idx] @ w
            loss = bradley_terry_loss(r_c, r_r, margin=None if margin is None else margin[idx],
                                      target=None if target is None else target[idx])  # fmt: skip
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            correct += float((r_c > r_r).float().sum())
        losses.append(total / len(f_chosen))
        accs.append(correct / len(f_chosen))
    return HeadFit(w.detach().clone(), 0.0, losses, accs)


def set_linear_head(model: PreTrainedModel, weight: torch.Tensor, bias: float) -> None:
    """Write ``(w, b)`` into an encoder member's linear ``.classifier`` (1 output)."""
    head = getattr(model, "classifier", None)
    if not isinstance(head, torch.nn.Linear) or head.out_features != 1:
        raise RewardlabError(
            f"{type(model).__name__}: the head-only fit needs a linear .classifier with 1 output"
        )
    with torch.no_grad():
        head.weight.copy_(weight.reshape(1, -1).to(head.weight))
        head.bias.fill_(bias)
