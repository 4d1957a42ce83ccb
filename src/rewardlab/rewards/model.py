"""Reward models: a scalar head on an LM backbone, alone or as an ensemble with uncertainty.

Each member is a plain ``AutoModelForSequenceClassification`` (``num_labels=1``) saved with
``save_pretrained``: anyone can load it with transformers directly. A causal LM's score is read at the
last non-pad token (the EOS that ends the completion); an encoder's (BERT, MiniLM) from the masked mean
of its last hidden states or from the BERT pooler on [CLS] (``reward_pooling`` in ``config.json``, see
:func:`member_scores`), on ``[CLS] dialogue [SEP] reply [SEP]`` cut from the dialogue's start
(:func:`encode_for_reward`) to the length it was trained on (``reward_max_length``). Normalization
statistics measured on SFT samples (mean 0, std 1, as in lm-human-preferences and OpenRLHF) are stored
in each member's ``config.json`` as ``reward_mean``/``reward_std`` and applied by :meth:`RewardModel.score`.

An ensemble folder holds ``members/0..k-1`` and ``ensemble.json``; its score is the members' mean,
with their std as the uncertainty and ``mean - alpha * std`` as a conservative proxy. With a verifier
(:mod:`rewardlab.rewards.verifier`) the folder also holds ``verifier/`` (a frozen causal LM) and each
member adds ``verifier_weight * f(x, y)`` to its head's score.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, PreTrainedModel, PreTrainedTokenizerBase

from rewardlab.kernels.readout import hidden_at
from rewardlab.policies.models import check_model_dir, load_causal_lm, load_tokenizer
from rewardlab.policies.packing import (
    PACKABLE_MODEL_TYPES,
    PackedRows,
    pack_shared_prefix,
    split_common_prefix,
)
from rewardlab.policies.tokenizer import (
    Limits,
    Prompt,
    completion_text,
    context_limit,
    encode_examples,
)
from rewardlab.rewards.verifier import verifier_features
from rewardlab.utils import SCORE_BATCH, RewardlabError, atomic_dir, length_sorted_batches


def collate_sequences(seqs: Sequence[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad token sequences into ``input_ids``/``attention_mask``."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` [N, T, H] over the positions where ``attention_mask`` [N, T] is 1 (sentence-transformers'
    mean pooling): [N, H]."""
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)


Backbone = str  # "causal" (score read at the last non-pad token, the EOS) or "encoder" (a [CLS] classifier)


def backbone_of(model: PreTrainedModel) -> Backbone:
    """``encoder`` for sequence classifiers with a ``.classifier`` head (BERT, MiniLM, RoBERTa), else ``causal``."""
    return "encoder" if hasattr(model, "classifier") and not hasattr(model, "score") else "causal"


Pooling = str  # "mean" | "cls" (encoders) or "last" (causal); "auto" picks one at init
POOLINGS = ("auto", "mean", "cls", "last")


def sentence_transformers_pooling(path: Path | str) -> str | None:
    """``mean`` or ``cls`` for a sentence-transformers folder (its ``1_Pooling/config.json``), else None."""
    cfg = Path(path) / "1_Pooling" / "config.json"
    if not cfg.is_file():
        return None
    try:
        modes = json.loads(cfg.read_text())
    except ValueError:
        return None
    if modes.get("pooling_mode_mean_tokens"):
        return "mean"
    return "cls" if modes.get("pooling_mode_cls_token") else None


def resolve_pooling(pooling: Pooling, backbone: Backbone, path: Path | str | None = None) -> str:
    """The pooling a reward model uses. ``auto``: ``last`` for a causal backbone; for an encoder, the pooling its
    sentence-transformers folder was trained with (``mean`` for all-MiniLM-L6-v2), else ``cls``. ``mean``/``cls``
    need an encoder and ``last`` a causal LM; anything else is an error naming ``reward.pooling``."""
    if pooling not in POOLINGS:
        raise RewardlabError(
            f"reward.pooling: unknown pooling {pooling!r} (choose one of {', '.join(POOLINGS)})"
        )
    if pooling == "auto":
        if backbone == "causal":
            return "last"
        return (sentence_transformers_pooling(path) if path is not None else None) or "cls"
    if backbone == "causal" and pooling != "last":
        raise RewardlabError(f"reward.pooling={pooling} needs an encoder backbone; a causal LM reads its last token "
                             "(pooling: last or auto)")  # fmt: skip
    if backbone == "encoder" and pooling == "last":
        raise RewardlabError("reward.pooling=last needs a causal backbone; an encoder pools with mean or cls")
    return pooling


def pooling_of(model: PreTrainedModel) -> str:
    """The pooling stored in a member's config (``reward_pooling``); without it ``cls`` (encoder) or ``last``."""
    stored = getattr(model.config, "reward_pooling", None)
    return str(stored) if stored else ("cls" if backbone_of(model) == "encoder" else "last")


def member_scores(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """A member's raw scalar reward [N] for right-padded sequences.

    ``last``/``cls``: the sequence classifier's own logit (the last non-pad token's value for a causal LM, there
    computed with the last layer at that token only where :func:`rewardlab.kernels.readout.hidden_at` can; the
    BERT pooler's ``tanh(W h_[CLS])`` then ``.classifier``). ``mean``: the masked mean of the base model's last
    hidden states (:func:`masked_mean`), then the model's dropout and ``.classifier`` (a linear layer)."""
    if can_pack_pairs(model):  # the classifier's read, with its last layer at the read token only
        return model.score(hidden_at(_decoder(model), last_non_pad_index(input_ids, model), input_ids=input_ids,
                                     attention_mask=attention_mask))[:, 0, 0]  # fmt: skip
    if pooling_of(model) != "mean":
        return model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0]
    head = getattr(model, "classifier", None)
    if not isinstance(head, torch.nn.Linear):
        raise RewardlabError(f"mean pooling needs a linear .classifier head; {type(model).__name__} has "
                             f"{type(head).__name__}")  # fmt: skip
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    pooled = masked_mean(hidden, attention_mask)
    drop = getattr(model, "dropout", None)
    return head(drop(pooled) if drop is not None else pooled)[:, 0]


def last_non_pad_index(input_ids: torch.Tensor, model: PreTrainedModel) -> torch.Tensor:
    """Where transformers' sequence classifier reads each row [N, 1]: its rightmost token that is not the config's
    ``pad_token_id`` (the last column without one)."""
    pad = model.config.get_text_config().pad_token_id
    if pad is None:
        return torch.full((input_ids.shape[0], 1), input_ids.shape[1] - 1, device=input_ids.device)
    cols = torch.arange(input_ids.shape[-1], device=input_ids.device, dtype=torch.int32)
    return (cols * (input_ids != pad).to(torch.int32)).argmax(-1, keepdim=True)


def _decoder(model: PreTrainedModel) -> torch.nn.Module:
    return getattr(model, model.base_model_prefix)  # type: ignore[no-any-return]


def can_pack_pairs(model: PreTrainedModel) -> bool:
    """Whether :func:`packed_pair_scores` applies: a causal member read at its last token (exactly
    ``.score(last_hidden_state)`` at the last non-pad token), of a packable type."""
    return (
        backbone_of(model) == "causal"
        and pooling_of(model) == "last"
        and getattr(model.config, "model_type", None) in PACKABLE_MODEL_TYPES
        and isinstance(getattr(model, "score", None), torch.nn.Linear)
        and getattr(model, getattr(model, "base_model_prefix", ""), None) is not None
    )


def _last_non_pad(seq: Sequence[int], pad_id: int) -> int:
    """Where a sequence classifier reads a right-padded row: its last token that is not ``pad_id`` (0 if none)."""
    return max((j for j, t in enumerate(seq) if t != pad_id), default=0)


def pack_comparisons(
    chosen: Sequence[Sequence[int]],
    rejected: Sequence[Sequence[int]],
    pad_id: int,
    dtype: torch.dtype = torch.float32,
) -> PackedRows:
    """Each comparison's two token sequences as one row, sharing their longest common prefix (the prompt, and
    more when the completions start alike): ``first_last``/``second_last`` point at the token
    :func:`member_scores` would read in each sequence alone (its last non-pad token)."""
    triples = [split_common_prefix(c, r) for c, r in zip(chosen, rejected, strict=True)]
    packed = pack_shared_prefix(triples, pad_id, dtype)
    for i, (c, r, (prefix, _, _)) in enumerate(zip(chosen, rejected, triples, strict=True)):
        p, jc, jr = len(prefix), _last_non_pad(c, pad_id), _last_non_pad(r, pad_id)
        packed.first_last[i] = jc  # the chosen side sits right after the prefix: its index j is column j
        packed.second_last[i] = jr if jr < p else jr + len(c) - p
    return packed


def packed_pair_scores(model: PreTrainedModel, packed: PackedRows) -> torch.Tensor:
    """Raw scores [2B] (chosen then rejected) of B packed comparisons (:func:`pack_comparisons`): one decoder pass
    over ``prefix + chosen + rejected`` rows, its last layer and the head on the two read positions of each row only
    (:func:`rewardlab.kernels.readout.hidden_at`). Equal, up to
    float rounding, to :func:`member_scores` on the 2B sequences (a test checks it)."""
    read = torch.stack([packed.first_last, packed.second_last], dim=1)
    hidden = hidden_at(
        _decoder(model), read, input_ids=packed.input_ids, attention_mask=packed.attention_mask,
        position_ids=packed.position_ids,
    )  # fmt: skip
    return model.score(torch.cat([hidden[:, 0], hidden[:, 1]]))[:, 0]


def dialogue_text(prompt: Prompt) -> str:
    """A prompt as plain text for an encoder: a string as is; chat messages one per line as ``Role: content``
    (``user`` -> ``Human``, ``assistant`` -> ``Assistant``, as in HH-RLHF's transcripts), so who said what stays."""
    if isinstance(prompt, str):
        return prompt
    names = {"user": "Human", "assistant": "Assistant"}
    return "\n".join(f"{names.get(m['role'], str(m['role']).capitalize())}: {m['content']}" for m in prompt)


def cut_pair(
    prompt: list[int], completion: list[int], budget: int, keep_end: bool
) -> tuple[list[int], list[int]]:
    """Cut (prompt, completion) token lists to ``budget`` tokens in all: the completion keeps its start (up to
    the whole budget), the prompt fills what is left with its newest tokens (``keep_end``) or its oldest."""
    completion = completion[:budget]
    room = budget - len(completion)
    prompt = (prompt[len(prompt) - room :] if room else []) if keep_end else prompt[:room]
    return prompt, completion


def pair_template(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int], list[int]]:
    """The special tokens the tokenizer puts before, between and after a pair (BERT: [CLS], [SEP], [SEP]),
    read from its encoding of a two-word pair."""
    a = tokenizer("a", add_special_tokens=False)["input_ids"]
    b = tokenizer("b", add_special_tokens=False)["input_ids"]
    ids = tokenizer("a", "b")["input_ids"]
    i = next(k for k in range(len(ids)) if ids[k : k + len(a)] == a)
    j = next(k for k in range(len(ids) - len(b), i + len(a) - 1, -1) if ids[k : k + len(b)] == b)
    return ids[:i], ids[i + len(a) : j], ids[j + len(b) :]


def encode_for_reward(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Prompt], completions: Sequence[Any],
                      backbone: Backbone = "causal", limits: Limits | None = None) -> list[tuple[list[int], list[int]]]:  # fmt: skip
    """(prompt_ids, completion_ids) for scoring, cut to ``limits`` (default: the model's positions, keeping the
    prompt's end). Causal: the policy's encoding, ending in EOS. Encoder: the tokenizer's own pair encoding
    (``[CLS] prompt [SEP] completion [SEP]``), returned whole as the prompt part with an empty completion; a
    longer one loses the prompt's oldest tokens (``keep_end``: the final turns stay) or its newest
    (``keep_start``), and the completion's end only when the completion alone does not fit."""
    if backbone == "causal":
        return encode_examples(tokenizer, prompts, completions, limits)
    p_ids = tokenizer([dialogue_text(p) for p in prompts], add_special_tokens=False)["input_ids"]
    c_ids = tokenizer([completion_text(c) for c in completions], add_special_tokens=False)["input_ids"]
    if limits is None:
        limits = Limits(min(context_limit(tokenizer) or 512, 512))
    limit = limits.max_length
    head, mid, tail = pair_template(tokenizer)
    extra = len(head) + len(mid) + len(tail)
    over = [i for i, (p, c) in enumerate(zip(p_ids, c_ids, strict=True))
            if limit is not None and len(p) + len(c) + extra > limit]  # fmt: skip
    limits.seen += len(p_ids)
    if over and limits.truncation == "error":
        i = over[0]
        raise RewardlabError(f"{limits.where}: example {i + 1} has {len(p_ids[i]) + len(c_ids[i]) + extra} tokens, "
                             f"more than the limit of {limit} (set truncation: keep_end or keep_start to cut it, or "
                             "raise max_length)")  # fmt: skip
    limits.cut += len(over)
    for i in over:
        p_ids[i], c_ids[i] = cut_pair(p_ids[i], c_ids[i], int(limit) - extra, limits.truncation == "keep_end")  # type: ignore[arg-type]
    return [(head + p + mid + c + tail, []) for p, c in zip(p_ids, c_ids, strict=True)]


def init_reward_backbone(path: Path | str, tokenizer: PreTrainedTokenizerBase, seed: int,
                         pooling: Pooling = "auto") -> PreTrainedModel:  # fmt: skip
    """A sequence-classification model (1 label) initialised from a checkpoint's backbone: a causal LM
    (head ``.score`` on the last token) or an encoder (head ``.classifier`` on the mean of its last hidden
    states or on [CLS], see :func:`resolve_pooling`), the pooling stored in its config as ``reward_pooling``."""
    p = check_model_dir(path, "reward-model backbone")
    torch.manual_seed(seed)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(str(p), num_labels=1, dtype=torch.float32)
    except Exception as e:
        raise RewardlabError(f"cannot build a reward model from {p}: {e}") from e
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.reward_pooling = resolve_pooling(pooling, backbone_of(model), p)
    with torch.no_grad():  # small head init so initial rewards are near 0
        head = model.score if hasattr(model, "score") else getattr(model, "classifier", None)
        head = getattr(head, "out_proj", head)  # RoBERTa-style classifiers end in out_proj
        if head is None or not hasattr(head, "weight"):
            raise RewardlabError(f"{p}: no .score or .classifier head on {type(model).__name__}")
        head.weight.normal_(0.0, 1.0 / (model.config.hidden_size + 1) ** 0.5)
    return model


@dataclass
class RewardScores:
    mean: torch.Tensor
    std: torch.Tensor
    members: torch.Tensor  # [k, N]

    def conservative(self, alpha: float) -> torch.Tensor:
        return self.mean - alpha * self.std


class RewardModel:
    """The proxy: one or more scalar-head members with normalization, scoring (prompt, completion) pairs."""

    def __init__(self, members: Sequence[PreTrainedModel], tokenizer: PreTrainedTokenizerBase, alpha: float = 1.0,
                 verifier: PreTrainedModel | None = None) -> None:  # fmt: skip
        if not members:
            raise RewardlabError("a reward model needs at least one member")
        self.members = list(members)
        self.tokenizer = tokenizer
        self.alpha = alpha
        self.verifier = verifier
        self.backbone = backbone_of(self.members[0])
        self.pooling = pooling_of(self.members[0])
        if self.backbone == "encoder" and verifier is not None:
            raise RewardlabError(
                "the verifier feature needs a causal backbone (it scores the completion's tokens)"
            )

    @property
    def device(self) -> torch.device:
        return next(self.members[0].parameters()).device

    def raw_member_scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                          feature: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """Unnormalized scores [k, N] for tokenized sequences (plus ``w * feature`` with a verifier)."""
        outs = []
        for m in self.members:
            s = member_scores(m, input_ids, attention_mask)
            if feature is not None:
                s = s + float(getattr(m.config, "verifier_weight", 0.0)) * feature.to(s.device)
            outs.append(s)
        return torch.stack(outs)

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        """Apply each member's stored (mean, std) to raw member scores [k, N]."""
        mu = torch.tensor(
            [float(getattr(m.config, "reward_mean", 0.0)) for m in self.members], device=raw.device
        )
        sd = torch.tensor(
            [float(getattr(m.config, "reward_std", 1.0)) for m in self.members], device=raw.device
        )
        return (raw - mu[:, None]) / sd[:, None]

    def scoring_limits(self) -> Limits | None:
        """An encoder member's training cut (``reward_max_length``/``reward_truncation`` in its config), so it scores
        sequences cut as it was trained; ``None`` (the defaults of :func:`encode_for_reward`) otherwise."""
        n = getattr(self.members[0].config, "reward_max_length", None)
        if self.backbone != "encoder" or not n:
            return None
        return Limits(
            int(n), getattr(self.members[0].config, "reward_truncation", "keep_end"), "reward model"
        )

    @torch.no_grad()
    def score(self, prompts: Sequence[Prompt], completions: Sequence[str], batch_size: int = SCORE_BATCH,
              normalized: bool = True) -> RewardScores:  # fmt: skip
        pad = int(self.tokenizer.pad_token_id)  # type: ignore[arg-type]
        for m in self.members:
            m.eval()
        ex = encode_for_reward(self.tokenizer, prompts, completions, self.backbone, self.scoring_limits())
        feats = (
            verifier_features(self.verifier, self.tokenizer, ex, batch_size)
            if self.verifier is not None
            else None
        )
        members = torch.zeros(len(self.members), len(ex))
        for idx in length_sorted_batches([len(p) + len(c) for p, c in ex], batch_size):
            b = collate_sequences([ex[i][0] + ex[i][1] for i in idx], pad)
            f = feats[idx] if feats is not None else None
            raw = self.raw_member_scores(
                b["input_ids"].to(self.device), b["attention_mask"].to(self.device), f
            )
            members[:, idx] = (self.normalize(raw) if normalized else raw).float().cpu()
        std = members.std(dim=0, unbiased=True) if len(self.members) > 1 else torch.zeros(members.shape[1])
        return RewardScores(mean=members.mean(dim=0), std=std, members=members)

    def __call__(self, prompts: Sequence[Prompt], completions: Sequence[str]) -> list[float]:
        """Proxy reward per (prompt, completion): the ensemble mean (normalized)."""
        return self.score(prompts, completions).mean.tolist()

    # --------------------------------------------------------------- persistence
    def save(self, path: Path | str) -> Path:
        def write(tmp: Path) -> None:
            for i, m in enumerate(self.members):
                m.save_pretrained(tmp / "members" / str(i), safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)
            if self.verifier is not None:
                self.verifier.save_pretrained(tmp / "verifier", safe_serialization=True)
            meta = {
                "k": len(self.members),
                "alpha": self.alpha,
                "verifier": self.verifier is not None,
                "backbone": self.backbone,
                "pooling": self.pooling,
            }
            (tmp / "ensemble.json").write_text(json.dumps(meta, indent=2))

        return atomic_dir(path, write)

    @classmethod
    def load(cls, path: Path | str) -> RewardModel:
        p = Path(path)
        meta_path = p / "ensemble.json"
        if not meta_path.is_file():
            raise RewardlabError(f"reward model path {p} is not a rewardlab reward model (no ensemble.json)")
        try:
            meta = json.loads(meta_path.read_text())
            k, alpha, has_verifier = (
                int(meta["k"]),
                float(meta.get("alpha", 1.0)),
                bool(meta.get("verifier", False)),
            )
        except (ValueError, KeyError) as e:
            raise RewardlabError(f"{meta_path}: malformed ({e})") from None
        members = []
        for i in range(k):
            mp = check_model_dir(p / "members" / str(i), "reward-model member")
            members.append(
                AutoModelForSequenceClassification.from_pretrained(str(mp), dtype=torch.float32).eval()
            )
        verifier = load_causal_lm(p / "verifier").eval().requires_grad_(False) if has_verifier else None
        rm = cls(members, load_tokenizer(p), alpha, verifier)
        if meta.get("backbone", rm.backbone) != rm.backbone:
            raise RewardlabError(
                f"{meta_path}: records a {meta['backbone']} backbone but its members are {rm.backbone}"
            )
        return rm
