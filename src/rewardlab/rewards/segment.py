"""Segment-level reward model (Yin et al. 2025, "Segmenting Text and Learning Their Rewards for Improved RLHF in
Language Model").

1. **Dynamic segmentation**: a frozen LM (the SFT policy, the *segmenter*) reads each completion; token ``y_t``
   starts a new segment when the entropy of the segmenter's next-token distribution before it,
   ``H(pi(. | x, y_<t))``, exceeds ``reward.segment_entropy_threshold`` (the first token always starts one).
2. **Segment reward**: the reward head read at each segment's last token, ``r(x, y_<=end_k)``.
3. **Training from sequence preferences**: the sequence score is the *average* of its segment rewards,
   ``e(x, y) = (1/K) sum_k r_k``, and the Bradley-Terry loss is taken on ``e``.
4. **Location-aware normalization**: a segment's reward is normalized by a mean and a std that depend on where the
   segment ends, ``p = end / len(y)`` in (0, 1]: ``mu(p) = a + b p`` and ``sigma(p) = c + d p`` fitted by least
   squares on SFT samples' segments (the paper's regression normalizer, linear in ``p``).
5. **Dense rewards for PPO**: each token of segment ``k`` gets ``r_k_hat / (K * len_k)`` (the segment's reward
   spread evenly over its tokens), so a response's token rewards sum to its normalized sequence score
   ``(1/K) sum_k r_k_hat``: denser credit, the same total as the sequence-level proxy.

A folder holds ``members/0`` (the ``AutoModelForSequenceClassification``; PPO's critic can start from it as from a
plain reward model), ``segmenter/`` (the frozen LM), the tokenizer and ``segment.json`` (threshold, normalizer).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import AutoModelForSequenceClassification, PreTrainedModel, PreTrainedTokenizerBase

from rewardlab.feedback.records import Comparison
from rewardlab.losses import bradley_terry_loss
from rewardlab.policies.models import check_model_dir, load_causal_lm, load_tokenizer
from rewardlab.rewards.domain import META as DOMAIN_META
from rewardlab.rewards.domain import DomainRewardModel
from rewardlab.rewards.model import RewardModel, RewardScores, collate_sequences
from rewardlab.rewards.token_rm import (
    Encoded,
    batch_of,
    encode_completions,
    encode_pairs,
    fit_pairs,
    token_outputs,
)
from rewardlab.runs import Run
from rewardlab.tasks.base import Task
from rewardlab.utils import RewardlabError, atomic_dir, length_sorted_batches

if TYPE_CHECKING:
    from rewardlab.config import RewardConfig

META = "segment.json"


# ----------------------------------------------------------------------------- segmentation (pure)
def next_token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of ``softmax(logits)`` over the last dimension."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def segment_starts(entropy: torch.Tensor, threshold: float) -> torch.Tensor:
    """[L] bool: token ``t`` starts a segment when ``entropy[t]`` (the segmenter's entropy before it) exceeds
    ``threshold``; token 0 always does."""
    starts = entropy > threshold
    if len(starts):
        starts[0] = True
    return starts


def segment_ends(starts: torch.Tensor) -> torch.Tensor:
    """[L] bool: the last token of each segment (the token before the next start, and the final token)."""
    ends = torch.zeros_like(starts)
    if len(starts):
        ends[:-1] = starts[1:]
        ends[-1] = True
    return ends


@dataclass(frozen=True)
class Segments:
    """One completion's segments: the head's raw reward at each segment end, where each ends (relative, in
    (0, 1]) and how many tokens each spans."""

    rewards: torch.Tensor  # [K]
    positions: torch.Tensor  # [K]
    lengths: torch.Tensor  # [K] long


def segments_of(values: torch.Tensor, ends: torch.Tensor) -> Segments:
    """Segments of one completion from its per-token head values [L] and segment-end mask [L]."""
    idx = torch.nonzero(ends, as_tuple=False)[:, 0]
    lengths = torch.diff(idx, prepend=torch.tensor([-1]))
    return Segments(values[idx], (idx + 1).float() / len(values), lengths)


def aggregate(values: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """The sequence score of a batch [N]: the mean of the values [N, T] at the segment ends [N, T] (bool)."""
    e = ends.to(values.dtype)
    return (values * e).sum(-1) / e.sum(-1).clamp(min=1)


def dense_rewards(rewards: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Per-token rewards [L] from segment rewards [K] spanning ``lengths`` [K] tokens: ``r_k / (K * len_k)`` on
    each token of segment ``k``, so they sum to ``mean_k r_k`` (the sequence score)."""
    k = len(rewards)
    return torch.repeat_interleave(rewards / (k * lengths.to(rewards.dtype)), lengths)


@dataclass
class LocationNormalizer:
    """``(r - mu(p)) / sigma(p)`` with ``mu(p) = a + b p`` and ``sigma(p) = max(c + d p, floor)``."""

    a: float = 0.0
    b: float = 0.0
    c: float = 1.0
    d: float = 0.0
    floor: float = 1e-3

    def __call__(self, rewards: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        mu = self.a + self.b * positions
        sd = (self.c + self.d * positions).clamp(min=self.floor)
        return (rewards - mu) / sd

    @classmethod
    def fit(cls, rewards: torch.Tensor, positions: torch.Tensor) -> LocationNormalizer:
        """Least squares of ``r`` on ``[1, p]`` for the mean, then of ``|r - mu(p)| * sqrt(pi / 2)`` on ``[1, p]``
        for the std (the mean absolute deviation of a normal is ``sigma * sqrt(2 / pi)``)."""
        x = torch.stack([torch.ones_like(positions), positions], 1).double()
        y = rewards.double()[:, None]
        ab = torch.linalg.lstsq(x, y).solution[:, 0]
        dev = (y[:, 0] - x @ ab).abs() * (torch.pi / 2) ** 0.5
        cd = torch.linalg.lstsq(x, dev[:, None]).solution[:, 0]
        return cls(float(ab[0]), float(ab[1]), float(cd[0]), float(cd[1]), max(float(dev.mean()) * 0.1, 1e-3))


# ----------------------------------------------------------------------------- the segmenter
@torch.no_grad()
def completion_entropies(segmenter: PreTrainedModel, enc: Encoded, pad: int, batch_size: int = 256) -> list[torch.Tensor]:  # fmt: skip
    """Per completion token, the segmenter's next-token entropy before it ([L_i] each)."""
    out: list[torch.Tensor] = [torch.empty(0)] * len(enc.seqs)
    for idx in length_sorted_batches([len(s) for s in enc.seqs], batch_size):
        b = collate_sequences([enc.seqs[i] for i in idx], pad)
        logits = segmenter(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        ent = next_token_entropy(logits)
        for row, i in enumerate(idx):  # the entropy at position j - 1 is the one before token j
            out[i] = ent[row, enc.starts[i] - 1 : enc.ends[i] - 1].cpu()
    return out


def end_masks(entropies: Sequence[torch.Tensor], enc: Encoded, threshold: float) -> list[torch.Tensor]:
    """Each sequence's segment-end mask over its full (prompt + completion) length."""
    out = []
    for ent, seq, s in zip(entropies, enc.seqs, enc.starts, strict=True):
        m = torch.zeros(len(seq), dtype=torch.bool)
        m[s : s + len(ent)] = segment_ends(segment_starts(ent, threshold))
        out.append(m)
    return out


def pad_masks(masks: Sequence[torch.Tensor], width: int) -> torch.Tensor:
    out = torch.zeros(len(masks), width, dtype=torch.bool)
    for i, m in enumerate(masks):
        out[i, : len(m)] = m
    return out


# ----------------------------------------------------------------------------- the proxy
class SegmentRewardModel:
    """The segment-level proxy: ``score`` gives the normalized sequence score (mean of normalized segment
    rewards), ``dense`` the per-token rewards PPO consumes with ``ppo.dense_rewards``."""

    alpha = 0.0  # no ensemble spread: ppo.score=conservative is the mean

    def __init__(self, model: PreTrainedModel, segmenter: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 threshold: float, normalizer: LocationNormalizer | None = None) -> None:  # fmt: skip
        self.model, self.segmenter, self.tokenizer = model.eval(), segmenter.eval(), tokenizer
        self.threshold = threshold
        self.normalizer = normalizer or LocationNormalizer()
        self.members = [model]

    @torch.no_grad()
    def segments(self, prompts: Sequence[str], completions: Sequence[str], batch_size: int = 256) -> list[Segments]:  # fmt: skip
        """Each completion's segments with the head's raw rewards."""
        pad = int(self.tokenizer.pad_token_id)  # type: ignore[arg-type]
        enc = encode_completions(self.tokenizer, prompts, completions)
        ends = end_masks(completion_entropies(self.segmenter, enc, pad, batch_size), enc, self.threshold)
        out: list[Segments] = [None] * len(enc.seqs)  # type: ignore[list-item]
        for idx in length_sorted_batches([len(s) for s in enc.seqs], batch_size):
            b = batch_of(enc, idx, pad)
            values = token_outputs(self.model, b["input_ids"], b["attention_mask"]).values.float()
            for row, i in enumerate(idx):
                span = slice(enc.starts[i], enc.ends[i])
                out[i] = segments_of(values[row, span].cpu(), ends[i][span])
        return out

    def score(
        self, prompts: Sequence[str], completions: Sequence[str], normalized: bool = True
    ) -> RewardScores:
        segs = self.segments(prompts, completions)
        mean = torch.tensor([float((self.normalizer(s.rewards, s.positions) if normalized else s.rewards).mean())
                             for s in segs])  # fmt: skip
        return RewardScores(mean=mean, std=torch.zeros_like(mean), members=mean[None])

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        return self.score(prompts, completions).mean.tolist()

    def dense(self, prompts: Sequence[str], completions: Sequence[str]) -> list[torch.Tensor]:
        """Per-token normalized rewards over each completion's tokens (ending in EOS); each sums to its score."""
        return [dense_rewards(self.normalizer(s.rewards, s.positions), s.lengths)
                for s in self.segments(prompts, completions)]  # fmt: skip

    def fit_normalizer(self, prompts: Sequence[str], completions: Sequence[str]) -> LocationNormalizer:
        """Fit the location-aware normalizer on these completions' segments and keep it."""
        segs = self.segments(prompts, completions)
        self.normalizer = LocationNormalizer.fit(torch.cat([s.rewards for s in segs]),
                                                 torch.cat([s.positions for s in segs]))  # fmt: skip
        return self.normalizer

    def save(self, path: Path | str) -> Path:
        def write(tmp: Path) -> None:
            self.model.save_pretrained(tmp / "members" / "0", safe_serialization=True)
            self.segmenter.save_pretrained(tmp / "segmenter", safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)
            meta = {"kind": "segment", "threshold": self.threshold, "normalizer": asdict(self.normalizer)}
            (tmp / META).write_text(json.dumps(meta, indent=2))

        return atomic_dir(path, write)

    @classmethod
    def load(cls, path: Path | str) -> SegmentRewardModel:
        p = Path(path)
        try:
            meta = json.loads((p / META).read_text())
            threshold, norm = float(meta["threshold"]), LocationNormalizer(**meta["normalizer"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise RewardlabError(f"{p / META}: not a segment reward model ({e})") from None
        mp = check_model_dir(p / "members" / "0", "segment reward model")
        model = AutoModelForSequenceClassification.from_pretrained(str(mp), dtype=torch.float32)
        segmenter = load_causal_lm(p / "segmenter").requires_grad_(False)
        return cls(model, segmenter, load_tokenizer(p), threshold, norm)


def load_proxy(
    path: Path | str, task: Task | None = None
) -> RewardModel | SegmentRewardModel | DomainRewardModel:
    """Any reward-model folder as a proxy: segment-level (``segment.json``), domain-knowledge (``domain.json``, over
    ``task``'s features) or a plain/ensemble :class:`RewardModel`."""
    p = Path(path)
    if (p / META).is_file():
        return SegmentRewardModel.load(p)
    if (p / DOMAIN_META).is_file():
        if task is None:
            raise RewardlabError(f"{p}: a domain-knowledge reward model needs its task to score")
        return DomainRewardModel.load(p, task)
    return RewardModel.load(p)


# ----------------------------------------------------------------------------- training
def train_segment_member(model: PreTrainedModel, segmenter: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                         pairs: Sequence[Comparison], cfg: RewardConfig, run: Run, *, seed: int,
                         evaluate: Callable[[SegmentRewardModel], dict[str, float]] | None = None,
                         ) -> SegmentRewardModel:  # fmt: skip
    """Train the head and backbone by Bradley-Terry on the average of segment rewards (step 3 of the module
    docstring); segments are cut once, by the frozen segmenter, before training."""
    pad = int(tokenizer.pad_token_id)  # type: ignore[arg-type]
    segmenter.eval().requires_grad_(False)
    ch, rj = encode_pairs(tokenizer, pairs)
    th = cfg.segment_entropy_threshold
    ends_c = end_masks(completion_entropies(segmenter, ch, pad), ch, th)
    ends_r = end_masks(completion_entropies(segmenter, rj, pad), rj, th)
    n_seg = sum(int(m.sum()) for m in ends_c + ends_r) / (2 * len(pairs))
    run.info(f"segment RM: {n_seg:.2f} segments per completion (entropy threshold {th})")
    target = torch.tensor([0.5 if c.meta.get("tie") else 1.0 for c in pairs])

    def side(enc: Encoded, ends: list[torch.Tensor], idx: list[int]) -> torch.Tensor:
        b = batch_of(enc, idx, pad)
        values = token_outputs(model, b["input_ids"], b["attention_mask"]).values
        return aggregate(values, pad_masks([ends[i] for i in idx], values.shape[1]))

    def loss_of(idx: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        r_c, r_r = side(ch, ends_c, idx), side(rj, ends_r, idx)
        return bradley_terry_loss(r_c, r_r, target=target[idx]), r_c.detach(), r_r.detach()

    fit_pairs(model, len(pairs), loss_of, cfg, run, seed=seed, what="segment reward model",
              evaluate=(lambda m: evaluate(SegmentRewardModel(m, segmenter, tokenizer, th))) if evaluate else None)  # fmt: skip
    return SegmentRewardModel(model, segmenter, tokenizer, th)
