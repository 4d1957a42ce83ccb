"""Evaluate a policy on held-out prompts against the hidden gold reward.

This is the audit's measuring instrument: sample responses, score each with the task's gold (and,
when given, a proxy), and summarize accuracy, parse rate, sycophancy and length, overall and by
difficulty. Optimizers never call it for their updates; it only observes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rewardlab.policies.sampling import encode_prompts, sample
from rewardlab.policies.tokenizer import decode_completion
from rewardlab.tasks.arithmetic import ArithmeticTask, Problem, parse_response


@dataclass
class ScoredSample:
    prompt: str
    response: str
    difficulty: int
    belief_wrong: bool
    gold: float
    correct: bool
    parseable: bool
    proxy: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def generate_responses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    greedy: bool = False,
    temperature: float = 1.0,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
) -> list[str]:
    """Sample (or greedily decode) one response per prompt with the fast sampler."""
    out: list[str] = []
    for i in range(0, len(prompts), batch_size):
        ids, mask = encode_prompts(tokenizer, prompts[i : i + batch_size])
        batch = sample(
            model,
            ids,
            mask,
            max_new_tokens=max_new_tokens,
            eos_token_id=int(tokenizer.eos_token_id),  # type: ignore[arg-type]
            pad_token_id=int(tokenizer.pad_token_id),  # type: ignore[arg-type]
            temperature=temperature,
            greedy=greedy,
            generator=generator,
        )
        out.extend(decode_completion(tokenizer, row.tolist()) for row in batch.response_ids)
    return out


def score_responses(
    task: ArithmeticTask,
    problems: Sequence[Problem],
    responses: Sequence[str],
    proxy: Callable[[Sequence[str], Sequence[str]], Sequence[float]] | None = None,
) -> list[ScoredSample]:
    proxies = (
        list(proxy([p.text for p in problems], responses)) if proxy is not None else [None] * len(problems)
    )
    out = []
    for p, r, px in zip(problems, responses, proxies, strict=True):
        g = task.gold_breakdown(p, r)
        out.append(ScoredSample(p.text, r, p.difficulty, p.belief_wrong, g.gold, g.correct, g.parseable,
                                None if px is None else float(px)))  # fmt: skip
    return out


def summarize(
    task: ArithmeticTask, problems: Sequence[Problem], samples: Sequence[ScoredSample]
) -> dict[str, float]:
    """Gold mean/accuracy, parse rate, length, sycophancy (overall and per difficulty), proxy mean."""
    gold = np.array([s.gold for s in samples])
    correct = np.array([s.correct for s in samples], dtype=float)
    m: dict[str, float] = {
        "gold/mean": float(gold.mean()),
        "gold/accuracy": float(correct.mean()),
        "behavior/parse_rate": float(np.mean([s.parseable for s in samples])),
        "behavior/length": float(np.mean([parse_response(s.response).n_words for s in samples])),
    }
    for d in sorted({s.difficulty for s in samples}):
        idx = [i for i, s in enumerate(samples) if s.difficulty == d]
        m[f"gold/accuracy_d{d}"] = float(correct[idx].mean())
        m[f"gold/mean_d{d}"] = float(gold[idx].mean())
    for k, v in task.sycophancy(problems, [s.response for s in samples]).items():
        m[f"behavior/{k}"] = v
    if samples and samples[0].proxy is not None:
        m["proxy/mean"] = float(np.mean([s.proxy for s in samples]))
    return m


def evaluate_policy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: ArithmeticTask,
    problems: Sequence[Problem],
    *,
    max_new_tokens: int,
    greedy: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
    proxy: Callable[[Sequence[str], Sequence[str]], Sequence[float]] | None = None,
    batch_size: int = 256,
) -> tuple[dict[str, float], list[ScoredSample]]:
    """Generate on ``problems`` and return (summary metrics, scored samples)."""
    g = torch.Generator().manual_seed(seed)
    responses = generate_responses(model, tokenizer, [p.text for p in problems], max_new_tokens=max_new_tokens,
                                   greedy=greedy, temperature=temperature, batch_size=batch_size, generator=g)  # fmt: skip
    samples = score_responses(task, problems, responses, proxy)
    return summarize(task, problems, samples), samples
