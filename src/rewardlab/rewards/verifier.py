"""A generative-verifier feature for reward models: how likely a frozen LM finds the final answer.

A ~1M-parameter reward model trained for a minute learns token-presence features ("agreement
phrase", "definitely"), not arithmetic: it scores a correct sum and a near miss alike (measured in
issue 10's prototype). The policy's own SFT model, though, is a fair arithmetic *verifier*: it assigns
high probability to correct digits. Following the generative-verifier idea (Zhang et al. 2024,
"Generative Verifiers: Reward Modeling as Next-Token Prediction"; Cobbe et al. 2021's verifiers), the
reward model gets one extra learned input::

    r(x, y) = head(h_last(x, y)) + w * f(x, y),    f(x, y) = clip(sum_{t in answer span} log p_V(y_t | x, y_<t), -cap, 0)

where V is the frozen verifier LM and the answer span is the last run of digit tokens in the
completion **plus the token that ends it** (a completion without a number gets f = -cap). ``w`` is
trained with the head by the same preference loss, so the data decide how much the proxy trusts the
verifier.

Why the end token: scoring the digits alone rewards *truncated* numbers. ``"the answer is 4 ."`` for
``507 - 142`` pays only log p("4"), the likely first digit of a three-digit answer, while the correct
``3 ##6 ##5`` pays three terms. PPO against that feature learned to answer hard sums with one digit
(3-digit accuracy 0.02 -> 0.00, 2-digit 0.25 -> 0.04 while the proxy rose). With the end token, the
verifier also prices "the number stops here", which is unlikely after "4" when three digits are due.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rewardlab.losses import selective_log_softmax
from rewardlab.utils import SCORE_BATCH, length_sorted_batches

FEATURE_CAP = 20.0


def digit_token_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """Ids of tokens made only of digits (with or without a WordPiece ``##`` or BPE space marker)."""
    out = set()
    for tok, i in tokenizer.get_vocab().items():
        core = tok.removeprefix("##").removeprefix("Ġ").removeprefix("▁")
        if core and core.isdigit():
            out.add(i)
    return out


def answer_span(completion: Sequence[int], digits: set[int]) -> tuple[int, int] | None:
    """[start, end) of the last contiguous run of digit tokens in ``completion``, or None.

    ``end`` is one past the last digit (the number alone); :func:`verifier_features` also scores the
    token at ``end``, the one that terminates the number, when the completion has one.
    """
    end = None
    for j in range(len(completion) - 1, -1, -1):
        if completion[j] in digits:
            if end is None:
                end = j + 1
        elif end is not None:
            return j + 1, end
    return (0, end) if end is not None else None


@torch.no_grad()
def verifier_features(
    verifier: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[tuple[list[int], list[int]]],
    batch_size: int = SCORE_BATCH,
) -> torch.Tensor:
    """f(x, y) for (prompt_ids, completion_ids) pairs: summed verifier log-prob of the answer and its end.

    ``batch_size`` rows per forward, length-sorted (:data:`~rewardlab.utils.SCORE_BATCH`)."""
    digits = digit_token_ids(tokenizer)
    pad = int(tokenizer.pad_token_id)  # type: ignore[arg-type]
    device = next(verifier.parameters()).device
    verifier.eval()
    feats = torch.full((len(examples),), -FEATURE_CAP)
    for idx in length_sorted_batches([len(p) + len(c) for p, c in examples], batch_size):
        chunk = [examples[i] for i in idx]
        seqs = [p + c for p, c in chunk]
        width = max(len(q) for q in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        span = torch.zeros_like(ids, dtype=torch.float)
        has = []
        for i, ((p, c), q) in enumerate(zip(chunk, seqs, strict=True)):
            ids[i, : len(q)] = torch.tensor(q)
            mask[i, : len(q)] = 1
            sp = answer_span(c, digits)
            has.append(sp is not None)
            if sp is not None:
                stop = min(sp[1] + 1, len(c))  # the digits and the token that ends the number
                span[i, len(p) + sp[0] : len(p) + stop] = 1.0
        logits = verifier(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, :-1].float()
        logp = selective_log_softmax(logits, ids[:, 1:].to(device)).cpu()
        total = (logp * span[:, 1:]).sum(1).clamp(min=-FEATURE_CAP, max=0.0)
        hasv = torch.tensor(has)
        feats[idx] = torch.where(hasv, total, torch.full_like(total, -FEATURE_CAP))
    return feats
