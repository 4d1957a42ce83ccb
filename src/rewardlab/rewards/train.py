"""Training and evaluating reward models on comparisons (Bradley-Terry) or K-wise rankings (Plackett-Luce).

Evaluation reports accuracy against held-out **rater** labels and against **gold** comparisons (the
same pairs, labelled by the hidden gold): the gap between the two is the misspecification the proxy
absorbed. Calibration (ECE) of P(chosen) = sigmoid(r_chosen - r_rejected) against the rater labels too.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rewardlab.checkpoint import Checkpointer
from rewardlab.distributed import batch_share, make_accelerator, reduce_sums
from rewardlab.feedback.records import Comparison, Ranking
from rewardlab.kernels.precision import training_linears
from rewardlab.losses import bradley_terry_loss, expected_calibration_error, plackett_luce_loss
from rewardlab.policies.packing import PackedRows
from rewardlab.policies.tokenizer import Limits
from rewardlab.rewards.head import (
    FrozenPrefixCache,
    collate_states,
    eval_frozen,
    fit_linear_head,
    freeze_lower_layers,
    frozen_layer_count,
    pooled_features,
    set_linear_head,
    top_scores,
)
from rewardlab.rewards.model import (
    RewardModel,
    backbone_of,
    can_pack_pairs,
    collate_sequences,
    encode_for_reward,
    member_scores,
    pack_comparisons,
    packed_pair_scores,
)
from rewardlab.rewards.verifier import verifier_features
from rewardlab.runs import Run, advance
from rewardlab.training import BatchOrder, Trainee, bucket_batches, make_optimizer, shuffled_batches
from rewardlab.utils import RewardlabError

if TYPE_CHECKING:
    from rewardlab.config import RewardConfig


@dataclass
class TokenizedPairs:
    chosen: list[list[int]]
    rejected: list[list[int]]
    margin: torch.Tensor
    target: torch.Tensor
    feat_chosen: torch.Tensor | None = None
    feat_rejected: torch.Tensor | None = None


def tokenize_pairs(tokenizer: PreTrainedTokenizerBase, comps: Sequence[Comparison], use_margin: bool,
                   verifier: PreTrainedModel | None = None, backbone: str = "causal",
                   limits: Limits | None = None) -> TokenizedPairs:  # fmt: skip
    if not comps:
        raise RewardlabError("reward: no comparisons to train on")
    prompts = [c.prompt for c in comps]
    ch = encode_for_reward(tokenizer, prompts, [c.chosen for c in comps], backbone, limits)  # type: ignore[arg-type]
    rj = encode_for_reward(tokenizer, prompts, [c.rejected for c in comps], backbone, limits)  # type: ignore[arg-type]
    margin = torch.tensor([float(c.margin or 0.0) if use_margin else 0.0 for c in comps])
    target = torch.tensor([0.5 if c.meta.get("tie") else 1.0 for c in comps])
    fc = verifier_features(verifier, tokenizer, ch) if verifier is not None else None
    fr = verifier_features(verifier, tokenizer, rj) if verifier is not None else None
    return TokenizedPairs([p + c for p, c in ch], [p + c for p, c in rj], margin, target, fc, fr)


@dataclass
class TokenizedRankings:
    seqs: list[list[list[int]]]
    order: list[list[int]]
    feats: list[torch.Tensor] | None


def tokenize_rankings(tokenizer: PreTrainedTokenizerBase, ranks: Sequence[Ranking],
                      verifier: PreTrainedModel | None = None, backbone: str = "causal",
                      limits: Limits | None = None) -> TokenizedRankings:  # fmt: skip
    seqs, feats = [], []
    for r in ranks:
        ex = encode_for_reward(tokenizer, [r.prompt] * len(r.completions), r.completions, backbone, limits)  # type: ignore[arg-type]
        seqs.append([p + c for p, c in ex])
        if verifier is not None:
            feats.append(verifier_features(verifier, tokenizer, ex))
    return TokenizedRankings(seqs, [list(r.ranking) for r in ranks], feats if verifier is not None else None)


class ScoredMember(nn.Module):
    """A reward member's score with the optional learned verifier weight: head(h) + w * f."""

    def __init__(self, model: PreTrainedModel, use_feature: bool, frozen: int | None = None) -> None:
        super().__init__()
        self.model = model
        # with cached states of the lower layers (reward.cache_frozen): how many layers are frozen
        self.frozen = frozen
        self.w = (
            nn.Parameter(torch.tensor(float(getattr(model.config, "verifier_weight", 0.5))))
            if use_feature
            else None
        )

    def forward(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None,
                feature: torch.Tensor | None, hidden: torch.Tensor | None = None,
                packed: PackedRows | None = None) -> torch.Tensor:  # fmt: skip
        """Scores of token ids, or (``hidden``) of the cached hidden states of the frozen lower layers, or
        (``packed``) of packed comparisons: chosen then rejected."""
        if packed is not None:
            s = packed_pair_scores(self.model, packed)
        elif hidden is not None and self.frozen is not None and attention_mask is not None:
            s = top_scores(self.model, hidden, attention_mask, self.frozen)
        elif input_ids is not None and attention_mask is not None:
            s = member_scores(self.model, input_ids, attention_mask)
        else:
            raise RewardlabError("ScoredMember: token ids, or cached hidden states with reward.cache_frozen")
        if self.w is not None and feature is not None:
            s = s + self.w * feature.to(s.device)
        return s

    def sync_config(self) -> None:
        if self.w is not None:
            self.model.config.verifier_weight = float(self.w.detach())


@dataclass
class RewardData:
    """What a reward member trains on: comparisons (Bradley-Terry) or rankings (Plackett-Luce), tokenized
    with ``tokenizer``, and the frozen verifier LM whose feature the member weighs (optional)."""

    tokenizer: PreTrainedTokenizerBase
    pairs: Sequence[Comparison] | None = None
    rankings: Sequence[Ranking] | None = None
    verifier: PreTrainedModel | None = None


def train_reward_member(model: PreTrainedModel, data: RewardData, cfg: RewardConfig, run: Run, *, seed: int,
                        member: int = 0, evaluate: Callable[[PreTrainedModel], dict[str, float]] | None = None,
                        accelerator: Accelerator | None = None,
                        checkpoint: Checkpointer | None = None) -> PreTrainedModel:  # fmt: skip
    """Train one scalar-head member with BT (pairs) or PL (rankings); logs ``train/*`` metrics.

    With a verifier, the member also learns the weight of the verifier feature (stored in its
    config as ``verifier_weight``). With several processes each trains on its share of every batch
    and the loss is the mean over the whole batch; ``evaluate`` runs on the main process only. With
    a ``checkpoint`` the member's training state is saved and resumed (it always saves at the last
    step, so a finished member is restored rather than retrained).
    """
    tokenizer, pairs, rankings, verifier = data.tokenizer, data.pairs, data.rankings, data.verifier
    acc = accelerator or make_accelerator()
    world = acc.num_processes
    pad = int(tokenizer.pad_token_id)  # type: ignore[arg-type]
    # 1. tokenize (cut to reward.max_length, counted), and the resumable batch order
    limits = Limits.for_stage(tokenizer, cfg, "reward")
    if cfg.loss == "plackett_luce":
        if not rankings:
            raise RewardlabError("reward.loss=plackett_luce needs K-wise rankings (label.k > 2)")
        tr = tokenize_rankings(tokenizer, rankings, verifier, backbone_of(model), limits)
        n = len(tr.seqs)
    else:
        tp = tokenize_pairs(tokenizer, pairs or [], cfg.use_margin, verifier, backbone_of(model), limits)
        n = len(tp.chosen)
    if member == 0 and limits.describe():
        run.info(limits.describe())  # type: ignore[arg-type]
        run.record("data/truncated", limits.cut)
    if backbone_of(model) == "encoder":  # the member scores as it was trained (RewardModel.scoring_limits)
        model.config.reward_max_length, model.config.reward_truncation = limits.max_length, limits.truncation
    if cfg.cache_frozen and not cfg.train_layers:
        frozen_layer_count(model, cfg.train_layers)  # the error: cache_frozen needs top layers to train
    if cfg.train_layers == 0:
        return train_head_only(model, tp if cfg.loss != "plackett_luce" else None, cfg, run, seed=seed, pad=pad,
                               prefix=f"member{member}/" if cfg.ensemble_size > 1 else "", verifier=verifier,
                               world=world)  # fmt: skip
    if freeze_lower_layers(model, cfg.train_layers) and member == 0:
        run.info(
            f"reward.train_layers={cfg.train_layers}: embeddings and the lower layers frozen (eval mode)"
        )
    cached = (
        frozen_states(model, tp if cfg.loss != "plackett_luce" else None, cfg, run, pad)
        if cfg.cache_frozen
        else None
    )
    steps_per_epoch = (n + cfg.batch_size - 1) // cfg.batch_size
    total = steps_per_epoch * cfg.epochs
    if cfg.packing == "bucket":  # similar lengths in a batch: ~13% less padding on 2,000 synthetic pairs
        if cfg.loss == "plackett_luce":
            lengths = [max(len(s) for s in seqs) for seqs in tr.seqs]
        else:
            lengths = [max(len(c), len(r)) for c, r in zip(tp.chosen, tp.rejected, strict=True)]
        batches = BatchOrder(lambda r: bucket_batches(lengths, cfg.batch_size, r), random.Random(seed))
    else:
        batches = BatchOrder(lambda r: shuffled_batches(n, cfg.batch_size, r), random.Random(seed))
    # 2. the member (head + optional verifier weight), its optimizer, and the state to resume from
    scorer = ScoredMember(model, verifier is not None, cached.frozen if cached is not None else None)
    opt, sched = make_optimizer(scorer, cfg.optim, total)
    scorer, opt = acc.prepare(scorer, opt)
    trainee = Trainee(scorer, opt, sched, acc)
    start = 0
    if checkpoint is not None:
        checkpoint.total_steps = total
        checkpoint.track(scorer=scorer, optimizer=opt, scheduler=sched, data=batches)
        start = checkpoint.restore()
    if cfg.disable_dropout:
        disable_dropout(model)
    scorer.train()
    eval_frozen(model, cfg.train_layers)  # the frozen layers compute what a cache of them holds: no dropout
    prefix = f"member{member}/" if cfg.ensemble_size > 1 else ""
    shared_prompt = cfg.shared_prompt and cached is None and can_pack_pairs(model)
    if cfg.shared_prompt and not shared_prompt and member == 0:
        run.info(f"reward.shared_prompt: two rows per comparison ({type(model).__name__}, "
                 f"{'cached lower layers' if cached is not None else 'not a packable causal member'})")  # fmt: skip

    def loss_of(
        idx: list[int], reduction: str
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The loss of the pairs (or rankings) ``idx`` and, for pairs, their chosen and rejected rewards."""
        if cfg.loss == "plackett_luce":
            k = max(len(tr.seqs[j]) for j in idx)
            b = collate_sequences([s for j in idx for s in tr.seqs[j]], pad)
            feat = torch.cat([tr.feats[j] for j in idx]) if tr.feats is not None else None
            scores = scorer(b["input_ids"].to(acc.device), b["attention_mask"].to(acc.device), feat)
            sc = torch.zeros(len(idx), k, device=acc.device)
            valid = torch.zeros(len(idx), k, dtype=torch.bool, device=acc.device)
            ranking = torch.zeros(len(idx), k, dtype=torch.long, device=acc.device)
            pos = 0
            for row, j in enumerate(idx):
                kk = len(tr.seqs[j])
                sc[row, :kk] = scores[pos : pos + kk]
                ranking[row, : len(tr.order[j])] = torch.tensor(tr.order[j])
                valid[row, : len(tr.order[j])] = True
                pos += kk
            return plackett_luce_loss(sc, ranking, valid, reduction=reduction), None, None  # type: ignore[arg-type]
        feat = (torch.cat([tp.feat_chosen[idx], tp.feat_rejected[idx]])
                if tp.feat_chosen is not None and tp.feat_rejected is not None else None)  # fmt: skip
        if cached is not None:  # the top layers from the frozen layers' cached states of the same sequences
            hidden, mask = collate_states([cached.chosen[j] for j in idx] + [cached.rejected[j] for j in idx])
            scores = scorer(None, mask.to(acc.device), feat, hidden=hidden.to(acc.device))
        elif shared_prompt:  # one row per comparison, the common prefix encoded once
            packed = pack_comparisons([tp.chosen[j] for j in idx], [tp.rejected[j] for j in idx], pad)
            scores = scorer(None, None, feat, packed=packed.to(acc.device))
        else:
            b = collate_sequences([tp.chosen[j] for j in idx] + [tp.rejected[j] for j in idx], pad)
            scores = scorer(b["input_ids"].to(acc.device), b["attention_mask"].to(acc.device), feat)
        scores = scores.float()  # bf16 under mixed precision: the loss in float32
        r_c, r_r = scores[: len(idx)], scores[len(idx) :]
        loss = bradley_terry_loss(
            r_c, r_r, margin=tp.margin[idx].to(acc.device), target=tp.target[idx].to(acc.device),
            center_coef=cfg.center_rewards_coefficient, reduction=reduction,  # type: ignore[arg-type]
        )  # fmt: skip
        return loss, r_c, r_r

    # 3. the loop: this process's share of each batch, the update, metrics, evaluation, checkpoint
    with training_linears(scorer), run.progress(total, f"reward model {member}") as prog:
        if start:
            advance(prog, n=start)
        for step in range(start + 1, total + 1):
            idx = batches.next()
            acc_b, margin_b = float("nan"), float("nan")
            if world == 1:
                loss, r_c, r_r = loss_of(idx, "mean")
                if r_c is not None and r_r is not None:
                    acc_b = float((r_c > r_r).float().mean())
                    margin_b = float((r_c - r_r).detach().mean())
            else:  # this process's pairs; (sum of their losses) * world / batch size, averaged by DDP
                share = batch_share(acc, len(idx))
                loss_sum, r_c, r_r = loss_of(idx[share.rows], "sum")
                loss = loss_sum * share.scale
                part = [float(loss_sum.detach()), 0.0, 0.0]
                if r_c is not None and r_r is not None:
                    part[1:] = [float((r_c > r_r).float().sum()), float((r_c - r_r).detach().sum())]
            gnorm = trainee.update(loss, cfg.optim.max_grad_norm, step, run.stage)
            if step % 10 == 0 or step == total:
                loss_value = loss.item()
                if world > 1:
                    loss_value, acc_b, margin_b = (v / len(idx) for v in reduce_sums(acc, part, share.real))
                    if cfg.loss == "plackett_luce":
                        acc_b, margin_b = float("nan"), float("nan")
                m = {f"{prefix}train/loss": loss_value, f"{prefix}train/accuracy": acc_b,
                     f"{prefix}train/margin": margin_b, f"{prefix}train/grad_norm": gnorm,
                     "time/elapsed": run.elapsed}  # fmt: skip
                if verifier is not None:
                    m[f"{prefix}train/verifier_weight"] = float(acc.unwrap_model(scorer).w.detach())
                run.log_metrics(m, step)
            if evaluate is not None and (step % cfg.eval_every == 0 or step == total) and acc.is_main_process:
                inner = acc.unwrap_model(scorer)
                inner.sync_config()
                inner.eval()
                em = evaluate(inner.model)
                inner.train()
                eval_frozen(inner.model, cfg.train_layers)
                run.log_metrics({f"{prefix}{k}": v for k, v in em.items()}, step)
            if checkpoint is not None:
                checkpoint.end_step(step)
            advance(prog, f"loss {loss.item():.3f}")
    inner = acc.unwrap_model(scorer)
    inner.sync_config()
    inner.eval()
    return inner.model


def disable_dropout(model: nn.Module) -> None:
    """Set every dropout of ``model`` to 0 (``reward.disable_dropout``; what TRL's ``disable_dropout`` does), also the
    attention dropout a transformers model reads from its ``config`` at each call."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        for name in ("attention_dropout", "dropout_prob"):
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 0.0)


@dataclass
class CachedStates:
    """The frozen lower layers' hidden states of both sides of every training pair (reward.cache_frozen)."""

    frozen: int
    chosen: list[torch.Tensor]
    rejected: list[torch.Tensor]


def frozen_states(model: PreTrainedModel, tp: TokenizedPairs | None, cfg: RewardConfig, run: Run,
                  pad: int) -> CachedStates:  # fmt: skip
    """``reward.cache_frozen``: run every training sequence once through the frozen embeddings and lower layers
    (:class:`rewardlab.rewards.head.FrozenPrefixCache`; on disk in ``reward.cache_dir`` when set, resumable), so
    each step runs only the top ``reward.train_layers`` layers, the pooling and the head. Training from the
    cache computes what training from tokens computes (the frozen layers run without dropout either way)."""
    if tp is None:
        raise RewardlabError("reward.cache_frozen needs pairs (Bradley-Terry), not rankings")
    frozen = frozen_layer_count(model, cfg.train_layers)
    cache = FrozenPrefixCache(model, pad, frozen, getattr(torch, cfg.cache_dtype), cfg.cache_dir)
    with run.progress(len(tp.chosen) * 2, f"frozen layers 1-{frozen}: cached states") as prog:

        def tick(n: int) -> None:
            advance(prog, n=n)

        chosen, rejected = cache.states(tp.chosen, tick), cache.states(tp.rejected, tick)
    where = f" in {cfg.cache_dir}" if cfg.cache_dir else " in memory"
    run.info(f"reward.cache_frozen: {2 * len(tp.chosen)} sequences' states after layer {frozen} cached{where} "
             f"({cache.computed} computed, the rest read back)")  # fmt: skip
    return CachedStates(frozen, chosen, rejected)


def train_head_only(model: PreTrainedModel, tp: TokenizedPairs | None, cfg: RewardConfig, run: Run, *, seed: int,
                    pad: int, prefix: str, verifier: PreTrainedModel | None, world: int) -> PreTrainedModel:  # fmt: skip
    """``reward.train_layers: 0``: the encoder frozen, its pooled features of every sequence computed once
    (:func:`rewardlab.rewards.head.pooled_features`) and the linear head fitted on them for ``reward.epochs``
    epochs by the Bradley-Terry loss (:func:`rewardlab.rewards.head.fit_linear_head`); logs ``train/*`` per epoch."""
    if tp is None or verifier is not None or world > 1 or backbone_of(model) != "encoder":
        raise RewardlabError("reward.train_layers=0 (head only) needs an encoder backbone, pairs (Bradley-Terry), no "
                             "verifier and one process")  # fmt: skip
    model.requires_grad_(False)
    with run.progress(1, "pooled features (frozen encoder)") as prog:
        f_c = pooled_features(model, tp.chosen, pad)
        f_r = pooled_features(model, tp.rejected, pad)
        advance(prog, f"{len(f_c)} pairs")
    fit = fit_linear_head(f_c, f_r, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.optim.lr,
                          weight_decay=cfg.optim.weight_decay, seed=seed, target=tp.target,
                          margin=tp.margin if cfg.use_margin else None)  # fmt: skip
    for epoch, (loss, acc) in enumerate(zip(fit.losses, fit.accuracies, strict=True), start=1):
        run.log_metrics({f"{prefix}train/loss": loss, f"{prefix}train/accuracy": acc, "train/epoch": epoch,
                         "time/elapsed": run.elapsed}, epoch)  # fmt: skip
    set_linear_head(model, fit.weight, fit.bias)
    return model.eval()  # evaluated once, by the recipe (an eval pass costs as much as the features)


def evaluate_comparisons(
    rm: RewardModel, comps: Sequence[Comparison], by: str = "difficulty"
) -> dict[str, float]:
    """Accuracy vs rater labels and vs gold, overall and per ``meta[by]``; ECE; reward stats.

    ``eval/accuracy_rater``: share of non-tie pairs where r(chosen) > r(rejected).
    ``eval/accuracy_gold``: on pairs whose golds differ, share where the RM ranks the gold-better one higher.
    """
    if not comps:
        raise RewardlabError("reward eval: no comparisons")
    prompts = [c.prompt for c in comps]
    s_c = rm.score(prompts, [c.chosen for c in comps]).mean
    s_r = rm.score(prompts, [c.rejected for c in comps]).mean
    out = comparison_accuracies(s_c, s_r, comps, by)
    non_tie = [i for i in range(len(comps)) if not comps[i].meta.get("tie")]
    p = torch.sigmoid(s_c[non_tie] - s_r[non_tie])
    out["eval/ece"] = expected_calibration_error(p, torch.ones_like(p))
    allr = torch.cat([s_c, s_r])
    out["eval/mean_reward"] = float(allr.mean())
    out["eval/min_reward"] = float(allr.min())
    out["eval/max_reward"] = float(allr.max())
    out["eval/margin"] = float((s_c - s_r)[non_tie].mean())
    return out


def comparison_accuracies(
    s_c: torch.Tensor, s_r: torch.Tensor, comps: Sequence[Comparison], by: str = "difficulty"
) -> dict[str, float]:
    """Accuracy of any scores ``s_c``/``s_r`` [N] of the pairs' two sides vs rater labels and vs gold.

    ``eval/accuracy_rater``: share of non-tie pairs where s(chosen) > s(rejected).
    ``eval/accuracy_gold``: on pairs whose golds differ, share where s ranks the gold-better side higher.
    Also per ``meta[by]`` (suffix ``_d<difficulty>``) and the number of pairs (``eval/n_pairs``).
    """
    groups: dict[str, list[int]] = defaultdict(list)
    for i, c in enumerate(comps):
        groups[""].append(i)
        if by in c.meta:
            groups[f"_d{c.meta[by]}" if by == "difficulty" else f"_{by}{c.meta[by]}"].append(i)
    out: dict[str, float] = {}
    for suffix, idx in sorted(groups.items()):
        rater_idx = [i for i in idx if not comps[i].meta.get("tie")]
        gold_idx = [i for i in idx if comps[i].gold_chosen is not None and comps[i].gold_rejected is not None
                    and comps[i].gold_chosen != comps[i].gold_rejected]  # fmt: skip
        if rater_idx:
            out[f"eval/accuracy_rater{suffix}"] = float((s_c[rater_idx] > s_r[rater_idx]).float().mean())
        if gold_idx:
            gold_better_is_chosen = torch.tensor(
                [comps[i].gold_chosen > comps[i].gold_rejected for i in gold_idx]
            )  # type: ignore[operator]
            rm_prefers_chosen = s_c[gold_idx] > s_r[gold_idx]
            out[f"eval/accuracy_gold{suffix}"] = float(
                (rm_prefers_chosen == gold_better_is_chosen).float().mean()
            )
        out[f"eval/n_pairs{suffix}"] = float(len(idx))
    return out


def reward_stats(scores: torch.Tensor) -> tuple[float, float]:
    """Mean and std (floored) used to normalize a member's rewards."""
    a = scores.detach().double().numpy()
    return float(a.mean()), float(max(np.std(a), 1e-6))
