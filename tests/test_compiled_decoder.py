"""The compiled decode step (``REWARDLAB_COMPILE_DECODE=1``, ``fast_decoder.COMPILE_DECODE``).

It must give the eager FastDecoder's greedy tokens (hence ``model.generate``'s), logits equal up to float
rounding, and compile once per (batch, rounded cache length), not once per step or per prompt length.
Slow: the first compile (inductor, C++) takes ~20 s on a 2-core CPU; later ones in the file reuse it.
"""

from __future__ import annotations

import shutil
from typing import Any

import pytest
import torch
from torch._dynamo.utils import counters
from transformers import PreTrainedModel

from rewardlab.kernels import fast_decoder
from rewardlab.kernels.fast_decoder import FastDecoder
from rewardlab.policies import sampling
from rewardlab.policies.sampling import encode_prompts, sample
from rewardlab.policies.tokenizer import build_task_tokenizer
from rewardlab.tasks.arithmetic import TASK_WORDS, ArithmeticTask
from test_sampling import _model

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None, reason="no C++ compiler"),
]

TOK = build_task_tokenizer(TASK_WORDS)
EOS = int(TOK.eos_token_id)  # type: ignore[arg-type]
PAD = int(TOK.pad_token_id)  # type: ignore[arg-type]
NEW = 16
BATCH = 32
# Measured: logits within 2.5e-6 of the eager step's (|logit| <= 3.9), log-probs within 1.4e-6.
ATOL = 1e-4


def _assert_close_logprobs(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    print(f"max |compiled - eager| log-prob difference: {float((a - b).abs().max()):.2e}")


@pytest.fixture(scope="module")
def model() -> PreTrainedModel:
    """test_sampling's tiny random Llama: rows differ and some (not all) greedy rows end with EOS."""
    return _model("llama")


@pytest.fixture(scope="module")
def prompts() -> tuple[torch.Tensor, torch.Tensor]:
    problems = ArithmeticTask().sample_problems(BATCH, seed=0)
    return encode_prompts(TOK, [p.text for p in problems])


@pytest.fixture()
def compiled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fast_decoder, "COMPILE_DECODE", True)
    monkeypatch.setattr(fast_decoder, "ONEDNN_SAMPLING", False)  # the eager side on MKL, as inductor


class _CompiledGreedy(FastDecoder):
    """A FastDecoder that takes the compiled path for greedy decoding too (normally greedy stays exact)."""

    @classmethod
    def build(
        cls, model: torch.nn.Module, batch: int, total_len: int, exact: bool = True
    ) -> FastDecoder | None:
        return super().build(model, batch, total_len, exact=False)


def test_compiled_step_logits_match_the_eager_step(model: PreTrainedModel, compiled: None) -> None:
    """Step by step from an empty cache (fed the greedy tokens): logits close, the same argmax."""
    total = 40  # cache rounded up to 48 slots when compiled
    with torch.inference_mode():
        eager = FastDecoder(model, BATCH, total, exact=True)
        comp = FastDecoder(model, BATCH, total, exact=False)
        assert comp.compiled and not eager.compiled and not comp.compacts
        assert eager.cache_len == total < comp.cache_len < total + fast_decoder.COMPILE_LEN_MULTIPLE
        tokens = torch.randint(3, len(TOK), (BATCH,), generator=torch.Generator().manual_seed(0))
        mask = torch.full((BATCH, 1, 1, total), torch.finfo(torch.float32).min)
        worst = scale = 0.0
        for t in range(total):
            mask[..., t] = 0.0
            pos = torch.full((BATCH,), t)
            ref, out = eager.step(tokens, pos, mask, t), comp.step(tokens, pos, mask, t)
            torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)
            assert torch.equal(out.argmax(-1), ref.argmax(-1))
            worst = max(worst, float((out - ref).abs().max()))
            scale = max(scale, float(ref.abs().max()))
            tokens = ref.argmax(-1)
    print(
        f"max |compiled - eager| logit difference over {total} steps: {worst:.2e} (max |logit| {scale:.1f})"
    )


def test_compiled_greedy_matches_eager_and_generate(
    model: PreTrainedModel,
    prompts: tuple[torch.Tensor, torch.Tensor],
    compiled: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Greedy through the compiled step: the eager FastDecoder's tokens, which are generate's; finished
    rows are not compacted out of the batch but stay padded."""
    ids, mask = prompts
    kw: dict[str, Any] = dict(max_new_tokens=NEW, eos_token_id=EOS, pad_token_id=PAD, greedy=True)
    eager = sample(model, ids, mask, **kw)
    with monkeypatch.context() as m:
        m.setattr(sampling, "FastDecoder", _CompiledGreedy)
        out = sample(model, ids, mask, **kw)
    with torch.inference_mode():
        ref = model.generate(
            ids, attention_mask=mask, do_sample=False, max_new_tokens=NEW, eos_token_id=EOS, pad_token_id=PAD
        )[:, ids.shape[1] :]
    assert 0 < int(eager.finished.sum()) < ids.shape[0]  # some rows ended early: eager compacted
    assert torch.equal(eager.response_ids, ref)
    assert torch.equal(out.response_ids, eager.response_ids)
    assert torch.equal(out.response_mask, eager.response_mask)
    _assert_close_logprobs(out.logprobs, eager.logprobs)


def test_sampling_with_the_switch_and_one_compile_per_shape(
    model: PreTrainedModel, prompts: tuple[torch.Tensor, torch.Tensor], compiled: None
) -> None:
    """``sample`` (not greedy) with the switch on draws the eager decoder's tokens from the same seed; a
    second call with another prompt length in the same cache-length bucket compiles nothing new."""
    ids, mask = prompts
    new = 4 if (ids.shape[1] + 4) % fast_decoder.COMPILE_LEN_MULTIPLE else 3  # P+new, P+1+new: one bucket
    kw: dict[str, Any] = dict(max_new_tokens=new, eos_token_id=EOS, pad_token_id=PAD, temperature=0.9)
    out = sample(model, ids, mask, generator=torch.Generator().manual_seed(6), **kw)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 1
    ids2 = torch.cat([torch.full_like(ids[:, :1], PAD), ids], dim=1)  # one more padding column
    mask2 = torch.cat([torch.zeros_like(mask[:, :1]), mask], dim=1)
    again = sample(model, ids2, mask2, generator=torch.Generator().manual_seed(6), **kw)
    assert counters["stats"]["unique_graphs"] == graphs, "recompiled for a prompt length in the same bucket"
    assert torch.equal(again.response_ids, out.response_ids)
    fast_decoder.COMPILE_DECODE = False  # restored by the fixture's monkeypatch
    eager = sample(model, ids, mask, generator=torch.Generator().manual_seed(6), **kw)
    # Short responses so that no rounding-level difference can flip a draw and fork a row.
    assert torch.equal(out.response_ids, eager.response_ids)
    _assert_close_logprobs(out.logprobs, eager.logprobs)


def test_past_the_recompile_limit_it_decodes_eagerly(
    model: PreTrainedModel, prompts: tuple[torch.Tensor, torch.Tensor], compiled: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A shape past dynamo's recompile limit (fullgraph=True raises there) falls back to the eager step (the exact
    replay, not the lean sampling step that an uncompiled call of this small model would take)."""
    ids, mask = prompts
    kw: dict[str, Any] = dict(max_new_tokens=4, eos_token_id=EOS, pad_token_id=PAD, temperature=0.9)
    sample(model, ids, mask, generator=torch.Generator().manual_seed(1), **kw)  # compiled at least once
    with torch._dynamo.config.patch(recompile_limit=1):
        out = sample(model, ids[:5], mask[:5], generator=torch.Generator().manual_seed(1), **kw)  # new batch
    fast_decoder.COMPILE_DECODE = False  # restored by the fixture's monkeypatch
    monkeypatch.setattr(fast_decoder, "LEAN_SAMPLING", False)
    eager = sample(model, ids[:5], mask[:5], generator=torch.Generator().manual_seed(1), **kw)
    assert torch.equal(out.response_ids, eager.response_ids)
    assert torch.equal(out.logprobs, eager.logprobs)  # the eager step's own bits
