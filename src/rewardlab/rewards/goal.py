"""Goal-conditioned reward representations (Nath et al. 2024, "Learning Goal-Conditioned Representations for
Language Reward Models").

The reward model is trained with its usual Bradley-Terry loss on the score at the last token plus
``reward.goal_weight`` times a contrastive auxiliary loss on its last hidden states
(:func:`rewardlab.losses.goal_contrastive_loss`): for each pair, a *source* state at a random completion position
of the preferred response, its positive *goal* a random later state of the same preferred response, and as
negatives a random state of the dispreferred response (and the other pairs' goals). The scorer is unchanged (the
head at the last token), so the result is a plain :class:`rewardlab.rewards.model.RewardModel` member that every
optimizer and the audit use as they use any other; only the representation it learned differs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rewardlab.feedback.records import Comparison
from rewardlab.losses import bradley_terry_loss, goal_contrastive_loss
from rewardlab.rewards.token_rm import Encoded, batch_of, encode_pairs, fit_pairs, token_outputs
from rewardlab.runs import Run

if TYPE_CHECKING:
    from rewardlab.config import RewardConfig


def sample_source_goal(starts: Sequence[int], ends: Sequence[int], gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Per row, a source position ``t`` in ``[start, end - 2]`` and a goal position in ``[t + 1, end - 1]`` (a
    completion of one token gives ``t = goal = start``)."""
    src, goal = [], []
    for s, e in zip(starts, ends, strict=True):
        last = e - 1
        t = s + int(torch.randint(0, max(last - s, 1), (1,), generator=gen)) if last > s else s
        g = t + 1 + int(torch.randint(0, max(last - t, 1), (1,), generator=gen)) if last > t else t
        src.append(t)
        goal.append(g)
    return torch.tensor(src), torch.tensor(goal)


def sample_position(starts: Sequence[int], ends: Sequence[int], gen: torch.Generator) -> torch.Tensor:
    """Per row, a random completion position in ``[start, end - 1]``."""
    return torch.tensor([s + int(torch.randint(0, max(e - s, 1), (1,), generator=gen))
                         for s, e in zip(starts, ends, strict=True)])  # fmt: skip


def last_positions(enc: Encoded, idx: Sequence[int]) -> torch.Tensor:
    return torch.tensor([enc.ends[i] - 1 for i in idx])


def train_goal_member(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, pairs: Sequence[Comparison],
                      cfg: RewardConfig, run: Run, *, seed: int,
                      evaluate: Callable[[PreTrainedModel], dict[str, float]] | None = None) -> PreTrainedModel:  # fmt: skip
    """Bradley-Terry on the last-token score plus ``cfg.goal_weight`` x the goal-conditioned contrastive loss
    (``goal_weight: 0`` is the plain reward model, trained by the same loop)."""
    pad = int(tokenizer.pad_token_id)  # type: ignore[arg-type]
    ch, rj = encode_pairs(tokenizer, pairs)
    target = torch.tensor([0.5 if c.meta.get("tie") else 1.0 for c in pairs])
    gen = torch.Generator().manual_seed(seed)
    rows = torch.arange

    def loss_of(idx: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        bc, br = batch_of(ch, idx, pad), batch_of(rj, idx, pad)
        oc = token_outputs(model, bc["input_ids"], bc["attention_mask"])
        orj = token_outputs(model, br["input_ids"], br["attention_mask"])
        n = len(idx)
        r_c = oc.values[rows(n), last_positions(ch, idx)]
        r_r = orj.values[rows(n), last_positions(rj, idx)]
        loss = bradley_terry_loss(r_c, r_r, target=target[idx])
        if cfg.goal_weight > 0:
            src, goal = sample_source_goal([ch.starts[i] for i in idx], [ch.ends[i] for i in idx], gen)
            neg = sample_position([rj.starts[i] for i in idx], [rj.ends[i] for i in idx], gen)
            goals = torch.cat([oc.hidden[rows(n), goal], orj.hidden[rows(n), neg]])
            aux = goal_contrastive_loss(oc.hidden[rows(n), src], goals, temperature=cfg.goal_temperature)
            loss = loss + cfg.goal_weight * aux
        return loss, r_c.detach(), r_r.detach()

    what = "goal-conditioned reward model" if cfg.goal_weight > 0 else "reward model"
    return fit_pairs(model, len(pairs), loss_of, cfg, run, seed=seed, what=what, evaluate=evaluate)
