"""What the token-level reward models share (segment-level, goal-conditioned): the head read at every token, pairs
tokenized once with their completion positions, and one Bradley-Terry loop over them.

A member is still a plain ``AutoModelForSequenceClassification`` on a causal backbone (``.score`` on the hidden
states): :func:`token_outputs` applies that head at every position instead of only at the last token, so a
segment's reward (its end token's value) and the usual sequence reward (the EOS token's value) come from the same
weights.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rewardlab.feedback.records import Comparison
from rewardlab.policies.tokenizer import encode_examples
from rewardlab.rewards.model import collate_sequences
from rewardlab.runs import Run, advance
from rewardlab.training import BatchOrder, make_optimizer, shuffled_batches
from rewardlab.utils import RewardlabError

if TYPE_CHECKING:
    from rewardlab.config import RewardConfig


class TokenOutputs(NamedTuple):
    hidden: torch.Tensor  # [N, T, H] the backbone's last hidden states
    values: torch.Tensor  # [N, T] the scalar head at every position


def token_outputs(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> TokenOutputs:
    """The causal backbone's last hidden states and its ``.score`` head applied at every position."""
    head = getattr(model, "score", None)
    if not isinstance(head, torch.nn.Linear):
        raise RewardlabError(f"token-level rewards need a causal LM backbone with a linear .score head; "
                             f"{type(model).__name__} has none")  # fmt: skip
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return TokenOutputs(hidden, head(hidden)[..., 0])


@dataclass
class Encoded:
    """(prompt + completion) token sequences with where each completion starts (``starts``) and ends (``ends``,
    exclusive; the completion ends in EOS)."""

    seqs: list[list[int]]
    starts: list[int]
    ends: list[int]

    def completion_mask(self, width: int) -> torch.Tensor:
        """[N, width] bool: True on completion tokens."""
        pos = torch.arange(width)[None, :]
        return (pos >= torch.tensor(self.starts)[:, None]) & (pos < torch.tensor(self.ends)[:, None])


def encode_completions(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                       completions: Sequence[str]) -> Encoded:  # fmt: skip
    """The policy's encoding of each (prompt, completion) (the completion ends in EOS), with its span."""
    ex = encode_examples(tokenizer, prompts, completions)  # type: ignore[arg-type]
    return Encoded([p + c for p, c in ex], [len(p) for p, _ in ex], [len(p) + len(c) for p, c in ex])


def encode_pairs(tokenizer: PreTrainedTokenizerBase, comps: Sequence[Comparison]) -> tuple[Encoded, Encoded]:
    """Chosen and rejected sides of ``comps``, encoded by :func:`encode_completions`."""
    if not comps:
        raise RewardlabError("reward: no comparisons to train on")
    prompts = [str(c.prompt) for c in comps]
    return (encode_completions(tokenizer, prompts, [str(c.chosen) for c in comps]),
            encode_completions(tokenizer, prompts, [str(c.rejected) for c in comps]))  # fmt: skip


def batch_of(enc: Encoded, idx: Sequence[int], pad: int) -> dict[str, torch.Tensor]:
    """Rows ``idx`` of ``enc``, right-padded, with their completion mask (``completion``)."""
    sub = Encoded([enc.seqs[i] for i in idx], [enc.starts[i] for i in idx], [enc.ends[i] for i in idx])
    b = collate_sequences(sub.seqs, pad)
    b["completion"] = sub.completion_mask(b["input_ids"].shape[1])
    return b


PairLoss = Callable[[list[int]], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def fit_pairs(model: PreTrainedModel, n_pairs: int, loss_of: PairLoss, cfg: RewardConfig, run: Run, *, seed: int,
              what: str, evaluate: Callable[[PreTrainedModel], dict[str, float]] | None = None) -> PreTrainedModel:  # fmt: skip
    """Train ``model`` for ``cfg.epochs`` over ``n_pairs`` pairs in shuffled batches of ``cfg.batch_size``.

    ``loss_of(idx) -> (loss, r_chosen, r_rejected)``; logs ``train/loss``, ``train/accuracy``, ``train/margin``
    every 10 steps and ``evaluate(model)`` every ``cfg.eval_every`` steps and after the last."""
    torch.manual_seed(seed)
    total = (n_pairs + cfg.batch_size - 1) // cfg.batch_size * cfg.epochs
    batches = BatchOrder(lambda r: shuffled_batches(n_pairs, cfg.batch_size, r), random.Random(seed))
    opt, sched = make_optimizer(model, cfg.optim, total)
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    with run.progress(total, what) as prog:
        for step in range(1, total + 1):
            loss, r_c, r_r = loss_of(batches.next())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = float(torch.nn.utils.clip_grad_norm_(params, cfg.optim.max_grad_norm))
            opt.step()
            sched.step()
            if step % 10 == 0 or step == total:
                run.log_metrics({"train/loss": float(loss.detach()), "train/accuracy": float((r_c > r_r).float().mean()),
                                 "train/margin": float((r_c - r_r).mean()), "train/grad_norm": gnorm,
                                 "time/elapsed": run.elapsed}, step)  # fmt: skip
            if evaluate is not None and (step % cfg.eval_every == 0 or step == total):
                model.eval()
                run.log_metrics(evaluate(model), step)
                model.train()
            advance(prog, f"loss {float(loss.detach()):.3f}")
    return model.eval()
