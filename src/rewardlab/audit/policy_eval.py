"""Evaluate a policy on held-out prompts against the hidden gold reward.

This is the audit's measuring instrument: sample responses, score each with the task's gold (and,
when given, a proxy), and summarize accuracy, parse rate, length and the task's own behaviour metrics
(sycophancy on arithmetic), overall and by item group. A task without gold gets everything but gold. Optimizers never call it for their updates; it only observes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rewardlab.policies.sampling import encode_prompts, sample
from rewardlab.policies.tokenizer import decode_completion
from rewardlab.tasks.base import Task, mean_flags, word_count


@dataclass
class ScoredSample:
    """One response with what the audit knows of it: the task's item metadata, gold (when the task
    has one) and the proxy's score."""

    prompt: str
    response: str
    meta: dict[str, Any] = field(default_factory=dict)
    gold: float | None = None
    correct: bool | None = None
    parseable: bool | None = None
    proxy: float | None = None
    parts: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"prompt": self.prompt, "response": self.response, **self.meta}
        for k in ("gold", "correct", "parseable", "proxy"):
            v = getattr(self, k)
            if v is not None:
                d[k] = v
        return d


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
        ids, mask = encode_prompts(tokenizer, prompts[i : i + batch_size], max_new_tokens)
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


def score_sample(task: Task, item: Any, response: str, proxy: float | None = None) -> ScoredSample:
    """The audit's record of one response: item metadata, gold and its parts, the proxy's score."""
    g = task.gold_detail(item, response)
    if g is None:
        return ScoredSample(task.prompt(item), response, task.meta(item), proxy=proxy)
    return ScoredSample(task.prompt(item), response, task.meta(item), g.value, g.correct, g.parseable, proxy,
                        dict(g.parts))  # fmt: skip


def score_responses(
    task: Task,
    problems: Sequence[Any],
    responses: Sequence[str],
    proxy: Callable[[Sequence[str], Sequence[str]], Sequence[float]] | None = None,
) -> list[ScoredSample]:
    prompts = [task.prompt(p) for p in problems]
    proxies = list(proxy(prompts, responses)) if proxy is not None else [None] * len(problems)
    return [score_sample(task, p, r, None if px is None else float(px))
            for p, r, px in zip(problems, responses, proxies, strict=True)]  # fmt: skip


def behavior_metrics(task: Task, problems: Sequence[Any], responses: Sequence[str]) -> dict[str, float]:
    """The task's behaviour metrics (``behavior/<name>``), each a mean over the samples it applies to."""
    flags = [task.behavior_flags(p, r) for p, r in zip(problems, responses, strict=True)]
    return {f"behavior/{k}": mean_flags([f.get(k) for f in flags]) for k in task.info.behaviors}


def summarize(task: Task, problems: Sequence[Any], samples: Sequence[ScoredSample]) -> dict[str, float]:
    """Gold mean/accuracy and parse rate (tasks with gold), length, the task's behaviours, proxy mean;
    gold also per item group (``gold/accuracy_d1`` ... for arithmetic's difficulty)."""
    m: dict[str, float] = {}
    with_gold = [s for s in samples if s.gold is not None]
    group = task.info.group
    if with_gold:
        gold = np.array([s.gold for s in samples], dtype=float)
        correct = np.array([bool(s.correct) for s in samples], dtype=float)
        m["gold/mean"] = float(gold.mean())
        if any(s.correct is not None for s in samples):
            m["gold/accuracy"] = float(correct.mean())
        m["behavior/parse_rate"] = float(np.mean([bool(s.parseable) for s in samples]))
    m["behavior/length"] = (
        float(np.mean([word_count(s.response) for s in samples])) if samples else float("nan")
    )
    if with_gold and group is not None:
        for d in sorted({s.meta.get(group) for s in samples}, key=str):
            idx = [i for i, s in enumerate(samples) if s.meta.get(group) == d]
            m[f"gold/accuracy_d{d}"] = float(correct[idx].mean())
            m[f"gold/mean_d{d}"] = float(gold[idx].mean())
    m.update(behavior_metrics(task, problems, [s.response for s in samples]))
    if samples and samples[0].proxy is not None:
        m["proxy/mean"] = float(np.mean([s.proxy for s in samples]))
    return m


def gold_parts(samples: Sequence[ScoredSample], part_names: Sequence[str]) -> dict[str, float]:
    """Mean of each part of gold (``gold/part_<name>``) and the unparseable rate; empty without gold."""
    if not samples or samples[0].parts is None:
        return {}
    out = {f"gold/part_{n}": float(np.mean([s.parts[n] for s in samples])) for n in part_names}  # type: ignore[index]
    out["gold/unparseable_rate"] = float(np.mean([not s.parseable for s in samples]))
    return out


def describe_metrics(task: Task, m: dict[str, float]) -> str:
    """A one-line reading of a policy's metrics for the log."""
    parts = []
    if "gold/mean" in m:
        parts.append(f"parse rate {m['behavior/parse_rate']:.3f}, gold {m['gold/mean']:+.3f}")
    if "gold/accuracy" in m:
        parts.append(f"accuracy {m['gold/accuracy']:.3f}")
    head = task.info.headline
    if head and f"behavior/{head}" in m:
        parts.append(f"{head} {m[f'behavior/{head}']:.3f}")
    parts.append(f"length {m['behavior/length']:.1f} words")
    return ", ".join(parts)


def evaluate_policy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    problems: Sequence[Any],
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
    responses = generate_responses(model, tokenizer, [task.prompt(p) for p in problems], max_new_tokens=max_new_tokens,
                                   greedy=greedy, temperature=temperature, batch_size=batch_size, generator=g)  # fmt: skip
    samples = score_responses(task, problems, responses, proxy)
    return summarize(task, problems, samples), samples
