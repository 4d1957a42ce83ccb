"""Encoder reward models trained in part: frozen lower layers, or the scalar head alone on pooled features.

With ``reward.train_layers: 0`` the encoder is frozen, so each side of a comparison has one fixed pooled
feature vector ``f`` (the pooling of :func:`rewardlab.rewards.model.member_scores`). The reward is then
linear, ``r = w·f + b``, and the head is fitted once on the cached features with the Bradley-Terry loss
(a linear probe of the frozen encoder): each epoch costs a few matrix products instead of a forward pass
of the encoder, so many epochs are cheap. The fitted ``(w, b)`` go into the member's ``.classifier``, so
the member scores exactly as a fully trained one does (same folder format, same pooling).
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel
from transformers.masking_utils import create_bidirectional_mask

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


# Frozen lower layers computed once (reward.cache_frozen): the top N layers fine-tuned from cached hidden states.


def bert_parts(model: PreTrainedModel) -> tuple[torch.nn.Module, torch.nn.ModuleList]:
    """An encoder member's base model and its transformer layers (BERT-style: ``.embeddings``,
    ``.encoder.layer``, ``.pooler``, a linear ``.classifier``); anything else is an error naming ``reward.cache_frozen``."""
    base = model.base_model
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if (backbone_of(model) != "encoder" or layers is None or not hasattr(base, "embeddings")
            or not isinstance(getattr(model, "classifier", None), torch.nn.Linear)):  # fmt: skip
        raise RewardlabError(f"reward.cache_frozen needs a BERT-style encoder (embeddings, encoder.layer, a linear "
                             f".classifier); {type(model).__name__} is not one")  # fmt: skip
    return base, layers


def frozen_layer_count(model: PreTrainedModel, train_layers: int | None) -> int:
    """How many of an encoder's layers ``reward.train_layers`` freezes (all but the top ``train_layers``)."""
    if train_layers is None or train_layers == 0:
        raise RewardlabError("reward.cache_frozen needs reward.train_layers >= 1 (the top layers it fine-tunes); "
                             "train_layers: 0 already caches the pooled features, null trains every layer")  # fmt: skip
    _, layers = bert_parts(model)
    return max(len(layers) - train_layers, 0)


def eval_frozen(model: PreTrainedModel, train_layers: int | None) -> None:
    """Put the frozen embeddings and lower layers in eval mode (no dropout), so they compute what a cache of
    them holds; a no-op when every layer trains."""
    if train_layers is None or backbone_of(model) != "encoder":
        return
    base = model.base_model
    layers = base.encoder.layer
    base.embeddings.eval()
    for layer in layers[: max(len(layers) - train_layers, 0)]:
        layer.eval()


def _bidirectional_mask(model: PreTrainedModel, hidden: torch.Tensor, attention_mask: torch.Tensor) -> Any:
    """The attention mask the encoder's layers take, built as its own forward builds it."""
    return create_bidirectional_mask(
        config=model.base_model.config, inputs_embeds=hidden, attention_mask=attention_mask
    )


def run_layers(model: PreTrainedModel, layers: Sequence[torch.nn.Module], hidden: torch.Tensor,
               attention_mask: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """``hidden`` [N, T, H] through ``layers`` of the encoder (padding masked as in its forward)."""
    mask = _bidirectional_mask(model, hidden, attention_mask)
    for layer in layers:
        hidden = layer(hidden, mask)
    return hidden


@torch.no_grad()
def frozen_prefix_states(model: PreTrainedModel, seqs: Sequence[list[int]], pad_id: int, frozen: int,
                         batch_size: int = 32, dtype: torch.dtype = torch.float16) -> list[torch.Tensor]:  # fmt: skip
    """Each sequence's hidden states [len, H] after the embeddings and the lower ``frozen`` layers (eval mode:
    no dropout), stored in ``dtype``: what the top layers read. Batched by length; padding does not change them."""
    base, layers = bert_parts(model)
    was = (base.embeddings.training, [layer.training for layer in layers[:frozen]])
    base.embeddings.eval()
    for layer in layers[:frozen]:
        layer.eval()
    out: list[torch.Tensor] = [torch.empty(0)] * len(seqs)
    for idx in length_sorted_batches([len(s) for s in seqs], batch_size):
        b = collate_sequences([seqs[i] for i in idx], pad_id)
        h = run_layers(model, layers[:frozen], base.embeddings(input_ids=b["input_ids"]), b["attention_mask"])
        for row, i in enumerate(idx):
            out[i] = h[row, : len(seqs[i])].to(dtype).clone()
    base.embeddings.train(was[0])
    for layer, mode in zip(layers[:frozen], was[1], strict=True):
        layer.train(mode)
    return out


def collate_states(states: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad cached hidden states into ``hidden`` [N, T, H] (float32, zeros at the padding) and the
    ``attention_mask`` [N, T]."""
    width = max(len(s) for s in states)
    hidden = torch.zeros(len(states), width, states[0].shape[-1])
    mask = torch.zeros(len(states), width, dtype=torch.long)
    for i, s in enumerate(states):
        hidden[i, : len(s)] = s.float()
        mask[i, : len(s)] = 1
    return hidden, mask


def top_scores(model: PreTrainedModel, hidden: torch.Tensor, attention_mask: torch.Tensor,
               frozen: int) -> torch.Tensor:  # fmt: skip
    """A member's raw reward [N] from the cached states ``hidden`` [N, T, H] of its lower ``frozen`` layers:
    the top layers, then the member's pooling and head exactly as :func:`rewardlab.rewards.model.member_scores`
    (``cls``: the BERT pooler on [CLS], dropout, ``.classifier``; ``mean``: the masked mean, dropout, ``.classifier``)."""
    base, layers = bert_parts(model)
    h = run_layers(model, layers[frozen:], hidden, attention_mask)
    if pooling_of(model) == "mean":
        pooled = masked_mean(h, attention_mask)
    else:
        if getattr(base, "pooler", None) is None:
            raise RewardlabError(f"{type(model).__name__} has no pooler: use reward.pooling: mean")
        pooled = base.pooler(h)
    drop = getattr(model, "dropout", None)
    return model.classifier(drop(pooled) if drop is not None else pooled)[:, 0]


def frozen_fingerprint(model: PreTrainedModel, frozen: int, dtype: torch.dtype) -> str:
    """A hash of the frozen part's weights, how many layers it has and the cache's dtype: a cache written for
    other weights (another checkpoint, another ``train_layers``) is never read back."""
    base, layers = bert_parts(model)
    h = hashlib.blake2b(f"{frozen}:{dtype}:{type(model).__name__}".encode(), digest_size=16)
    for module in (base.embeddings, *layers[:frozen]):
        for name, t in module.state_dict().items():
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()


class FrozenPrefixCache:
    """The frozen prefix's hidden states of token sequences (:func:`frozen_prefix_states`), in memory, or on
    disk in ``folder`` as chunks of ``chunk`` sequences written atomically (temp + rename) and named by a hash
    of the frozen weights and the chunk's token ids, so a stopped run resumes and a changed model or data
    recomputes."""

    def __init__(self, model: PreTrainedModel, pad_id: int, frozen: int, dtype: torch.dtype = torch.float16,
                 folder: Path | str | None = None, chunk: int = 256, batch_size: int = 32) -> None:  # fmt: skip
        self.model, self.pad_id, self.frozen, self.dtype = model, pad_id, frozen, dtype
        self.folder = Path(folder) if folder is not None else None
        self.chunk, self.batch_size = chunk, batch_size
        self.key = frozen_fingerprint(model, frozen, dtype) if self.folder is not None else ""
        self.computed = 0  # sequences run through the frozen layers (not read back from disk)

    def chunk_path(self, seqs: Sequence[list[int]]) -> Path:
        h = hashlib.blake2b(self.key.encode(), digest_size=16)
        for s in seqs:
            h.update(np.asarray(s, dtype=np.int64).tobytes() + b"|")
        return self.folder / f"prefix-{h.hexdigest()}.pt"  # type: ignore[operator]

    def _compute(self, seqs: Sequence[list[int]]) -> list[torch.Tensor]:
        self.computed += len(seqs)
        return frozen_prefix_states(self.model, seqs, self.pad_id, self.frozen, self.batch_size, self.dtype)

    def states(
        self, seqs: Sequence[list[int]], on_chunk: Callable[[int], None] | None = None
    ) -> list[torch.Tensor]:
        """The cached states of ``seqs`` [len_i, H] each, computing (and storing) what is missing."""
        if self.folder is None:
            out = []
            for s in range(0, len(seqs), self.chunk):
                out += self._compute(seqs[s : s + self.chunk])
                if on_chunk is not None:
                    on_chunk(len(seqs[s : s + self.chunk]))
            return out
        self.folder.mkdir(parents=True, exist_ok=True)
        out = []
        for s in range(0, len(seqs), self.chunk):
            part = seqs[s : s + self.chunk]
            dest = self.chunk_path(part)
            if dest.is_file():
                flat = torch.load(dest)
                out += list(torch.split(flat["states"], flat["lengths"].tolist()))
            else:
                got = self._compute(part)
                tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
                torch.save({"states": torch.cat(got), "lengths": torch.tensor([len(g) for g in got])}, tmp)
                os.replace(tmp, dest)
                out += got
            if on_chunk is not None:
                on_chunk(len(part))
        return out
