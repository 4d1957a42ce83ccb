"""The audit's KL, proxy and gold against an independent computation.

A policy that differs from its reference samples responses in :func:`audit_policy`; the test records the
sampled token ids and recomputes every response's log-probability under each model with one unpadded
forward pass per sequence (no left padding, no position ids, its own log-softmax at the temperature),
then the estimators from their definitions (Schulman 2020) for ``KL(policy || reference)``:
``k1 = sum(log p - log q)``, ``k2 = sum(½ (log q - log p)²)``, ``k3 = sum(q/p - 1 - log(q/p))``.
Swapping the policy and the reference changes k1's sign and k3's value. With a prompt transform the
policy is prompted with the transformed prompt and the reference with the plain one.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest
import torch
from transformers import PreTrainedModel

import rewardlab.audit.tracker as tracker
from rewardlab.audit.tracker import AuditSpec, audit_policy
from rewardlab.policies.models import ModelConfig, build_causal_lm
from rewardlab.policies.sampling import SampleBatch
from rewardlab.policies.tokenizer import build_task_tokenizer, decode_completion, encode_prompt
from rewardlab.tasks.arithmetic import TASK_WORDS, ArithmeticTask

TOK = build_task_tokenizer(TASK_WORDS)
TASK = ArithmeticTask()
TEMPERATURE = 0.8


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def models() -> tuple[PreTrainedModel, PreTrainedModel]:
    cfg = ModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    ref = build_causal_lm(cfg, TOK, seed=0).eval()
    policy = copy.deepcopy(ref)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a policy far enough from its reference that KL is large and k1 != -k1
        for p in policy.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return policy, ref


def _proxy(prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
    """A proxy the test can recompute: words of the completion minus a tenth of the prompt's."""
    return [len(c.split()) - 0.1 * len(p.split()) for p, c in zip(prompts, completions, strict=True)]


def _seq_logp(model: PreTrainedModel, prompt: list[int], response: list[int]) -> list[float]:
    """log p(response_t | prompt, response_<t) at TEMPERATURE, from one unpadded forward pass."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double() / TEMPERATURE
    logp = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    return [float(logp[len(prompt) + t - 1, tok]) for t, tok in enumerate(response)]


def _audit(
    models: tuple[PreTrainedModel, PreTrainedModel],
    monkeypatch: pytest.MonkeyPatch,
    transform: Callable[[str], str] | None,
) -> tuple[dict[str, Any], list[Any], list[SampleBatch], list[Any], int]:
    policy, ref = models
    batches: list[SampleBatch] = []
    real_sample = tracker.sample

    def recording_sample(*args: Any, **kwargs: Any) -> SampleBatch:
        b = real_sample(*args, **kwargs)
        batches.append(b)
        return b

    monkeypatch.setattr(tracker, "sample", recording_sample)
    problems = TASK.sample_items(24, seed=3, split="eval")
    spec = AuditSpec(task=TASK, problems=problems, max_new_tokens=8, seed=0, kl_estimator="k3",
                     temperature=TEMPERATURE, prompt_transform=transform, batch_size=10)  # fmt: skip
    row, samples = audit_policy(policy, ref, TOK, _proxy, spec, seed=5)
    return row, samples, batches, problems, len(problems)


def _responses(batches: list[SampleBatch]) -> list[list[int]]:
    out = []
    for b in batches:
        for ids, mask in zip(b.response_ids.tolist(), b.response_mask.tolist(), strict=True):
            out.append([t for t, m in zip(ids, mask, strict=True) if m])
    return out


@pytest.mark.parametrize("transform", [None, lambda t: f"hmm . {t}"], ids=["plain", "prompt_transform"])
def test_kl_estimators_match_an_independent_forward_pass(models, monkeypatch, transform) -> None:
    row, samples, batches, problems, n = _audit(models, monkeypatch, transform)
    policy, ref = models
    responses = _responses(batches)
    assert len(batches) == 3 and len(responses) == n == len(samples)
    k1, k2, k3 = [], [], []
    for item, resp in zip(problems, responses, strict=True):
        plain = TASK.prompt(item)
        lp = _seq_logp(policy, encode_prompt(TOK, transform(plain) if transform else plain), resp)
        lq = _seq_logp(ref, encode_prompt(TOK, plain), resp)
        k1.append(sum(p - q for p, q in zip(lp, lq, strict=True)))
        k2.append(sum(0.5 * (q - p) ** 2 for p, q in zip(lp, lq, strict=True)))
        k3.append(sum(math.exp(q - p) - 1 - (q - p) for p, q in zip(lp, lq, strict=True)))
    assert row["kl/k1"] == pytest.approx(np.mean(k1), rel=1e-4, abs=1e-5)
    assert row["kl/k2"] == pytest.approx(np.mean(k2), rel=1e-4, abs=1e-5)
    assert row["kl/k3"] == pytest.approx(np.mean(k3), rel=1e-4, abs=1e-5)
    assert np.mean(k1) > 0.5  # far from 0, so a swapped sign or a swapped pair of models shows
    assert row["kl/estimator"] == "k3" and row["kl/sqrt"] == pytest.approx(math.sqrt(np.mean(k3)), rel=1e-4)
    # the proxy and gold score the plain prompt and the decoded response
    texts = [decode_completion(TOK, r) for r in responses]
    assert [s.response for s in samples] == texts
    plain_prompts = [TASK.prompt(p) for p in problems]
    assert row["proxy/mean"] == pytest.approx(np.mean(_proxy(plain_prompts, texts)))
    assert row["gold/mean"] == pytest.approx(
        np.mean([TASK.gold(p, t) for p, t in zip(problems, texts, strict=True)])
    )


def test_kl_is_zero_against_itself(models, monkeypatch) -> None:
    policy, _ = models
    row, *_ = _audit((policy, policy), monkeypatch, None)
    for k in ("k1", "k2", "k3"):
        assert abs(row[f"kl/{k}"]) < 1e-4


def test_the_policy_forward_runs_only_for_non_float32_weights(models, monkeypatch) -> None:
    """A float32 policy's log-probs come from its sampler (the test above checks them against a separate
    forward); with bf16 weights cached decoding and a full forward round differently, so the audit runs it."""
    policy, ref = models
    called: list[Any] = []
    real = tracker.response_logprobs

    def counted(model: Any, *args: Any, **kwargs: Any) -> Any:
        called.append(model)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(tracker, "response_logprobs", counted)
    _audit(models, monkeypatch, None)
    assert len(called) == 3 and all(m is ref for m in called)  # one reference forward per batch
    called.clear()
    bf16 = copy.deepcopy(policy).to(torch.bfloat16)
    _audit((bf16, ref), monkeypatch, None)
    assert sum(m is bf16 for m in called) == 3 and sum(m is ref for m in called) == 3


def test_chunked_response_logprobs_equal_one_untrimmed_block(models) -> None:
    """Length-sorted chunks without their padding columns give a one-block forward's log-probs and entropies
    (on real tokens), scattered back to their rows; trimming keeps every real token, its mask and position."""
    policy, _ = models
    problems = TASK.sample_items(40, seed=4, split="eval")
    ids, mask = tracker.encode_prompts(TOK, [TASK.prompt(p) for p in problems], 8)
    b = tracker.sample(policy, ids, mask, max_new_tokens=8, eos_token_id=int(TOK.eos_token_id),
                       pad_token_id=int(TOK.pad_token_id), generator=torch.Generator().manual_seed(2))  # fmt: skip
    lengths = (b.prompt_mask.sum(1) + b.response_mask.sum(1)).tolist()
    assert len(set(lengths)) > 3 and b.prompt_mask[:, 0].sum() < len(
        b
    )  # rows of several lengths, left padding
    with torch.no_grad():
        whole, whole_ent = tracker._response_logprobs(policy, b, 0.9, True)
        chunked, chunked_ent = tracker.response_logprobs(policy, b, 0.9, with_entropy=True, rows=7)
    real = b.response_mask.bool()
    assert whole_ent is not None and chunked_ent is not None
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=0)  # 0 on padding in both
    torch.testing.assert_close(chunked_ent[real], whole_ent[real], atol=1e-5, rtol=0)
    short = torch.argsort(torch.tensor(lengths))[:7]
    part = b.select(short, trim=True)
    assert part.prompt_ids.shape[1] < b.prompt_ids.shape[1] and bool(part.prompt_mask[:, 0].any())
    assert part.response_ids.shape[1] == int(b.response_mask[short].sum(1).max())
    for row, i in enumerate(short.tolist()):
        kept = part.input_ids[row][part.attention_mask[row].bool()]
        assert kept.tolist() == b.input_ids[i][b.attention_mask[i].bool()].tolist()
