"""Tests of the fast rollout sampler against ``model.generate`` and a fresh training forward."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from transformers import PreTrainedModel

from rewardlab.kernels import fast_decoder, skinny
from rewardlab.policies import sampling
from rewardlab.policies.models import ModelConfig, build_causal_lm
from rewardlab.policies.sampling import SampleBatch, encode_prompts, sample
from rewardlab.policies.tokenizer import build_task_tokenizer, encode_prompt
from rewardlab.tasks.arithmetic import TASK_WORDS, ArithmeticTask

TOK = build_task_tokenizer(TASK_WORDS)
EOS = int(TOK.eos_token_id)  # type: ignore[arg-type]
PAD = int(TOK.pad_token_id)  # type: ignore[arg-type]
NEW = 16


def _model(arch: str) -> PreTrainedModel:
    """A tiny random model whose greedy outputs differ across rows and end (with EOS) at various steps.

    A random tied model just repeats its last token, so the head is untied and the value/output/MLP
    weights are scaled up: the next token then depends on the context through attention. The EOS
    row of the head is scaled up so that EOS wins the argmax often enough. (Scaling q/k too would
    saturate the attention softmax into denormals, which makes CPU matmuls crawl.)
    """
    cfg = ModelConfig(
        arch=arch, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, tie_word_embeddings=False
    )
    model = build_causal_lm(cfg, TOK, seed=0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2 and not any(k in name for k in ("embed", "lm_head", "q_proj", "k_proj")):
                p.mul_(5.0)
        model.lm_head.weight.mul_(5.0)
        model.lm_head.weight[EOS].mul_(2.0)
    return model.eval()


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def model(request: pytest.FixtureRequest) -> PreTrainedModel:
    return _model(request.param)


@pytest.fixture(scope="module")
def llama() -> PreTrainedModel:
    return _model("llama")


@pytest.fixture(scope="module")
def prompts() -> tuple[torch.Tensor, torch.Tensor]:
    problems = ArithmeticTask().sample_problems(32, seed=0)
    return encode_prompts(TOK, [p.text for p in problems])


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _full_forward_logits(model: PreTrainedModel, batch: SampleBatch) -> torch.Tensor:
    """Logits predicting each response token, ``[B, T, V]``, from one training-style forward."""
    mask = batch.attention_mask
    pos = (mask.cumsum(dim=1) - 1).clamp_min(0)
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=mask, position_ids=pos).logits
    p, t = batch.prompt_ids.shape[1], batch.response_ids.shape[1]
    return logits[:, p - 1 : p - 1 + t].float()


# --------------------------------------------------------------------------------------------------
# encode_prompts / SampleBatch


def test_encode_prompts_left_pads() -> None:
    texts = ["what is 1 + 2 ?", "what is 123 - 45 ? i think it is 78 ."]
    conv = [[{"role": "user", "content": "what is 5 + 5 ?"}]]
    ids, mask = encode_prompts(TOK, [*texts, *conv])
    assert ids.dtype == torch.long and mask.dtype == torch.long and ids.shape == mask.shape
    for row, prompt in enumerate([*texts, *conv]):
        ref = encode_prompt(TOK, prompt)
        n = len(ref)
        assert ids[row, -n:].tolist() == ref
        assert mask[row, -n:].eq(1).all() and mask[row, :-n].eq(0).all()
        assert ids[row, :-n].eq(PAD).all()
    assert mask[:, -1].eq(1).all()
    with pytest.raises(ValueError):
        encode_prompts(TOK, [])


def test_sample_batch_helpers(llama: PreTrainedModel, prompts: tuple[torch.Tensor, torch.Tensor]) -> None:
    ids, mask = prompts
    out = sample(llama, ids, mask, max_new_tokens=NEW, eos_token_id=EOS, pad_token_id=PAD, greedy=True)
    assert len(out) == ids.shape[0]
    assert torch.equal(out.input_ids, torch.cat([ids, out.response_ids], dim=1))
    assert torch.equal(out.attention_mask, torch.cat([mask, out.response_mask], dim=1))
    assert torch.equal(out.response_lengths, out.response_mask.sum(1))
    assert out.logprobs.dtype == torch.float32 and out.response_mask.dtype == torch.long
    assert out.finished.dtype == torch.bool


# --------------------------------------------------------------------------------------------------
# 1. greedy == model.generate


@pytest.mark.parametrize("cache", ["static", "dynamic"])
@pytest.mark.parametrize("compact", ["never", "default", "always"])
def test_greedy_matches_generate(
    model: PreTrainedModel,
    prompts: tuple[torch.Tensor, torch.Tensor],
    cache: str,
    compact: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fraction = {"never": float("inf"), "default": sampling._COMPACT_FRACTION, "always": 0.0}[compact]
    monkeypatch.setattr(sampling, "_COMPACT_FRACTION", fraction)
    monkeypatch.setattr(sampling, "_COMPACT_MIN", 1 if compact == "always" else sampling._COMPACT_MIN)
    ids, mask = prompts
    assert mask[:, 0].eq(0).any() and mask.sum(1).unique().numel() > 1, "prompts of different lengths"
    out = sample(
        model,
        ids,
        mask,
        max_new_tokens=NEW,
        eos_token_id=EOS,
        pad_token_id=PAD,
        greedy=True,
        cache_implementation=cache,  # type: ignore[arg-type]
    )
    with torch.no_grad():
        ref = model.generate(
            ids, attention_mask=mask, do_sample=False, max_new_tokens=NEW, eos_token_id=EOS, pad_token_id=PAD
        )[:, ids.shape[1] :]
    # The comparison is only meaningful if rows differ and some, not all, stop early.
    assert len({tuple(r) for r in ref.tolist()}) > ids.shape[0] // 2
    assert 0 < int(out.finished.sum()) < ids.shape[0]
    assert int(out.response_lengths.min()) < NEW
    assert out.response_ids.shape == ref.shape
    assert torch.equal(out.response_ids, ref)


def test_prefill_dedup_and_buckets(
    model: PreTrainedModel, prompts: tuple[torch.Tensor, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert sampling._plan_prefill_buckets([5], 64, 4) == [5]
    assert sampling._plan_prefill_buckets([3, 3, 9, 9], 64, 4) == [9]  # not worth a second forward
    assert sampling._plan_prefill_buckets([3] * 50 + [9] * 50, 64, 4) == [3, 9]
    assert sampling._plan_prefill_buckets(list(range(1, 20)) * 40, 1, 3)[-1] == 19
    ids, mask = prompts
    # Repeated prompts (as in GRPO groups) and an all-pad leading column.
    ids = torch.cat([torch.full((32, 1), PAD), ids[:8].repeat(4, 1)], dim=1)
    mask = torch.cat([torch.zeros((32, 1), dtype=torch.long), mask[:8].repeat(4, 1)], dim=1)
    kw = dict(max_new_tokens=NEW, eos_token_id=EOS, pad_token_id=PAD, temperature=0.9)
    monkeypatch.setattr(sampling, "_BUCKET_OVERHEAD_TOKENS", 0)
    monkeypatch.setattr(sampling, "_MAX_PREFILL_BUCKETS", 8)
    fast = sample(model, ids, mask, generator=_gen(5), **kw)  # type: ignore[arg-type]
    monkeypatch.setattr(sampling, "_MAX_PREFILL_BUCKETS", 1)
    monkeypatch.setattr(sampling, "_DEDUP_PROMPTS", False)
    ids[:, 0] = 7  # a real-looking id under mask 0 must change nothing
    plain = sample(model, ids, mask, generator=_gen(5), **kw)  # type: ignore[arg-type]
    assert torch.equal(fast.response_ids, plain.response_ids)
    torch.testing.assert_close(fast.logprobs, plain.logprobs, atol=1e-5, rtol=0)
    assert not torch.equal(fast.response_ids[:8], fast.response_ids[8:16])  # repeats sample independently


@pytest.mark.parametrize("cpu_eager", [True, False])
def test_attention_implementations_agree(
    llama: PreTrainedModel,
    prompts: tuple[torch.Tensor, torch.Tensor],
    cpu_eager: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SDPA (bool 4D mask), eager (additive 4D mask) and 2D masks give the same samples."""
    ids, mask = prompts
    kw = dict(max_new_tokens=NEW, eos_token_id=EOS, pad_token_id=PAD, temperature=0.9)
    monkeypatch.setattr(sampling, "_CPU_EAGER_ATTENTION", cpu_eager)
    ref = sample(llama, ids, mask, generator=_gen(2), **kw)  # type: ignore[arg-type]
    monkeypatch.setattr(sampling, "_PASS_4D_MASK", False)
    two_d = sample(llama, ids, mask, generator=_gen(2), **kw)  # type: ignore[arg-type]
    assert torch.equal(ref.response_ids, two_d.response_ids)
    torch.testing.assert_close(ref.logprobs, two_d.logprobs, atol=1e-5, rtol=0)
    assert llama.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("fuse", [True, False])
def test_fast_decoder_is_bitwise_the_eager_forward(
    model: PreTrainedModel,
    prompts: tuple[torch.Tensor, torch.Tensor],
    fuse: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """_FastDecoder replays transformers' eager decoding step: the same samples and the same bits."""
    ids, mask = prompts
    assert fast_decoder.FastDecoder.build(model, ids.shape[0], ids.shape[1] + NEW) is not None
    monkeypatch.setattr(fast_decoder, "FUSE_PROJECTIONS", fuse)
    monkeypatch.setattr(fast_decoder, "ONEDNN_SAMPLING", False)  # MKL matmuls, as transformers'
    monkeypatch.setattr(fast_decoder, "LEAN_SAMPLING", False)  # the eager replay, operation for operation
    kw = dict(max_new_tokens=NEW, eos_token_id=EOS, pad_token_id=PAD, temperature=0.9)
    fast = sample(model, ids, mask, generator=_gen(4), **kw)  # type: ignore[arg-type]
    monkeypatch.setattr(sampling, "_FAST_DECODE", False)
    slow = sample(model, ids, mask, generator=_gen(4), **kw)  # type: ignore[arg-type]
    assert torch.equal(fast.response_ids, slow.response_ids)
    assert torch.equal(fast.logprobs, slow.logprobs)
    assert 0 < int(fast.finished.sum()) < ids.shape[0]  # rows finished: the cache was compacted


def test_onednn_sampling_matches_the_exact_decoder(
    model: PreTrainedModel, prompts: tuple[torch.Tensor, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sampling with oneDNN-packed matmuls gives the exact path's samples up to last-bit rounding."""
    ids, mask = prompts
    monkeypatch.setattr(fast_decoder, "ONEDNN_MIN_WEIGHT", 0)  # pack even this tiny model's matrices
    monkeypatch.setattr(fast_decoder, "SKINNY_SAMPLING", False)  # which would take oneDNN's place
    kw = dict(max_new_tokens=4, eos_token_id=EOS, pad_token_id=PAD, temperature=0.9)
    decoder = fast_decoder.FastDecoder.build(model, ids.shape[0], ids.shape[1] + 4, exact=False)
    assert decoder is not None and decoder.pack == fast_decoder._onednn_available(model.lm_head.weight)
    assert decoder.lm_head[2] == decoder.pack and "qkv" in decoder.layers[0]
    fast = sample(model, ids, mask, generator=_gen(6), **kw)  # type: ignore[arg-type]
    monkeypatch.setattr(fast_decoder, "ONEDNN_SAMPLING", False)
    exact = sample(model, ids, mask, generator=_gen(6), **kw)  # type: ignore[arg-type]
    # Short responses so that no rounding-level difference can flip a draw and fork a row.
    assert torch.equal(fast.response_ids, exact.response_ids)
    torch.testing.assert_close(fast.logprobs, exact.logprobs, atol=1e-5, rtol=0)


def _gqa_llama() -> PreTrainedModel:
    """A tiny Llama with grouped-query attention (4 query heads on 2 key/value heads), scaled as :func:`_model`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(TOK), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=128, max_position_embeddings=64,
                      tie_word_embeddings=False, bos_token_id=TOK.bos_token_id, eos_token_id=EOS, pad_token_id=PAD)  # fmt: skip
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2 and not any(k in name for k in ("embed", "q_proj", "k_proj")):
                p.mul_(5.0)
            elif (
                "norm" in name
            ):  # the norms' weights are folded into the lean step's matrices: make them matter
                p.add_(0.5 * torch.rand_like(p))
    return model.eval()


_NO_CC = pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler")


@pytest.mark.parametrize(
    "gemm", ["mkl", pytest.param("mkl-fused-attention", marks=_NO_CC), pytest.param("skinny", marks=_NO_CC)]
)
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gqa"])
def test_lean_sampling_step_matches_the_exact_decoder(
    arch: str, gemm: str, prompts: tuple[torch.Tensor, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lean sampling step (folded norms, [in, out] matrices, one SDPA over the written slots) gives the exact
    eager replay's samples, log-probs up to rounding and hidden states up to rounding, with rows compacted as they
    finish; it is what sampling uses on an unpacked model, greedy decoding never. Its products run on MKL below the
    packing threshold and on the skinny GEMM's panels above it (here: the threshold at 0), its attention through
    SDPA (no C compiler) or the C kernel's one call per layer."""
    model = _gqa_llama() if arch == "gqa" else _model(arch)
    if arch == "qwen2":
        assert model.model.layers[0].self_attn.q_proj.bias is not None  # the q/k/v biases are exercised
    ids, mask = prompts
    if gemm == "skinny":
        monkeypatch.setattr(fast_decoder, "ONEDNN_MIN_WEIGHT", 0)
    else:
        monkeypatch.setattr(fast_decoder, "ONEDNN_SAMPLING", False)
    monkeypatch.setattr(fast_decoder, "FUSED_ATTENTION", gemm != "mkl")
    monkeypatch.setattr(sampling, "_COMPACT_FRACTION", 0.0)
    monkeypatch.setattr(sampling, "_COMPACT_MIN", 1)
    decoder = fast_decoder.FastDecoder.build(model, ids.shape[0], ids.shape[1] + NEW, exact=False)
    assert decoder is not None and decoder.lean is not None and not decoder.pack
    matrices = [decoder.lean["lm_head"]] + [
        w[n] for w in decoder.lean["layers"] for n in ("qkv", "o", "down")
    ]
    kind = skinny.Panels if gemm == "skinny" else torch.Tensor
    assert all(isinstance(m, kind) for m in matrices) and decoder.lean["fused_attention"] == (gemm != "mkl")
    assert fast_decoder.FastDecoder.build(model, ids.shape[0], ids.shape[1] + NEW, exact=True).lean is None
    kw = dict(max_new_tokens=NEW, eos_token_id=EOS, pad_token_id=PAD, temperature=0.9, hidden_states=True)
    lean = sample(model, ids, mask, generator=_gen(6), **kw)  # type: ignore[arg-type]
    monkeypatch.setattr(fast_decoder, "LEAN_SAMPLING", False)
    monkeypatch.setattr(fast_decoder, "ONEDNN_SAMPLING", False)
    exact = sample(model, ids, mask, generator=_gen(6), **kw)  # type: ignore[arg-type]
    assert torch.equal(lean.response_ids, exact.response_ids)
    assert 0 < int(lean.finished.sum()) < ids.shape[0]  # some rows finished early: the cache was compacted
    torch.testing.assert_close(lean.logprobs, exact.logprobs, atol=1e-5, rtol=0)
    assert lean.hidden is not None and exact.hidden is not None
    torch.testing.assert_close(lean.hidden, exact.hidden, atol=1e-5, rtol=1e-5)


def test_lean_step_sees_every_weight_update(prompts: tuple[torch.Tensor, torch.Tensor]) -> None:
    """The lean step's matrices are rebuilt from the weights at every call (their memory is reused): after a fused
    AdamW step, which leaves ``Tensor._version`` unchanged, sampling follows the updated weights exactly as a fresh
    copy of the updated model does."""
    import copy

    model = _model("llama")
    ids, mask = prompts
    kw = dict(max_new_tokens=8, eos_token_id=EOS, pad_token_id=PAD, temperature=0.9)
    before = sample(model, ids, mask, generator=_gen(1), **kw)  # type: ignore[arg-type]
    opt = torch.optim.AdamW(model.parameters(), lr=0.05, fused=True)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    versions = [p._version for p in model.parameters()]
    opt.step()
    assert [p._version for p in model.parameters()] == versions  # why no cache may key on versions
    after = sample(model, ids, mask, generator=_gen(1), **kw)  # type: ignore[arg-type]
    fresh = sample(copy.deepcopy(model), ids, mask, generator=_gen(1), **kw)  # type: ignore[arg-type]
    assert not torch.equal(after.logprobs, before.logprobs)
    assert torch.equal(after.response_ids, fresh.response_ids) and torch.equal(after.logprobs, fresh.logprobs)


def test_fast_decoder_steps_aside_for_hooks_and_adapters(llama: PreTrainedModel) -> None:
    # transformers' own output-capturing hooks (left behind by output_hidden_states=True) are inert
    llama(input_ids=torch.tensor([[5, 6, 7]]), output_hidden_states=True)
    assert any(m._forward_hooks for m in llama.modules())
    assert fast_decoder.FastDecoder.build(llama, 2, 8) is not None
    handle = llama.model.layers[0].mlp.register_forward_hook(lambda *a: None)
    try:
        assert fast_decoder.FastDecoder.build(llama, 2, 8) is None
    finally:
        handle.remove()
    assert fast_decoder.FastDecoder.build(llama, 2, 8) is not None
    wrapped = _model("llama")
    wrapped.model.layers[1].self_attn.q_proj = torch.nn.Sequential(wrapped.model.layers[1].self_attn.q_proj)
    assert fast_decoder.FastDecoder.build(wrapped, 2, 8) is None


def test_draw_follows_the_probabilities() -> None:
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.3, 0.2]]).repeat(20_000, 1)
    draws = sampling._draw(probs, torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=5).float() / draws.numel()
    assert freq[0] == 0 and freq[2] == 0  # zero-probability entries are never drawn
    torch.testing.assert_close(freq, probs[0], atol=0.015, rtol=0)


# --------------------------------------------------------------------------------------------------
# 2. log-probs == a fresh forward's


@pytest.mark.parametrize(("top_k", "top_p"), [(0, 1.0), (5, 0.8)])
def test_logprobs_match_full_forward(
    model: PreTrainedModel, prompts: tuple[torch.Tensor, torch.Tensor], top_k: int, top_p: float
) -> None:
    ids, mask = prompts
    temperature = 0.7
    out = sample(
        model,
        ids,
        mask,
        max_new_tokens=NEW,
        eos_token_id=EOS,
        pad_token_id=PAD,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        generator=_gen(0),
    )
    logits = _full_forward_logits(model, out)
    # Unfiltered distribution: top-k/top-p decide what is drawn, not the reported log-prob.
    ref = torch.log_softmax(logits / temperature, dim=-1).gather(2, out.response_ids[..., None]).squeeze(2)
    real = out.response_mask.bool()
    torch.testing.assert_close(out.logprobs[real], ref[real], atol=1e-5, rtol=0)
    assert out.logprobs[~real].eq(0).all()
    assert (out.logprobs[real] <= 0).all()


@pytest.mark.parametrize("path", ["fast", "fast-onednn", "loop", "one-prefill"])
def test_hidden_states_match_full_forward(
    llama: PreTrainedModel,
    prompts: tuple[torch.Tensor, torch.Tensor],
    monkeypatch: pytest.MonkeyPatch,
    path: str,
) -> None:
    """``hidden_states=True`` records, for every response token, the final hidden state it was sampled from:
    a training forward's ``hidden_states[-1]`` at the position before it (what PPO's shared value head reads),
    on the fast decoder (exact MKL and oneDNN-packed), on transformers' forward, through deduplicated and
    bucketed prefills (repeated prompts of different lengths) or one plain prefill, with rows compacted as
    they finish; 0 at padding. Without the flag nothing is recorded."""
    ids, mask = prompts
    ids, mask = ids[:12].repeat(2, 1), mask[:12].repeat(2, 1)  # repeated prompts: the prefill dedups them
    monkeypatch.setattr(sampling, "_COMPACT_FRACTION", 0.0)
    monkeypatch.setattr(sampling, "_COMPACT_MIN", 1)
    monkeypatch.setattr(sampling, "_BUCKET_OVERHEAD_TOKENS", 0)
    monkeypatch.setattr(fast_decoder, "ONEDNN_SAMPLING", path == "fast-onednn")
    if path == "fast-onednn":
        monkeypatch.setattr(fast_decoder, "ONEDNN_MIN_WEIGHT", 0)
        monkeypatch.setattr(fast_decoder, "SKINNY_SAMPLING", False)
    monkeypatch.setattr(sampling, "_FAST_DECODE", path != "loop")
    if path == "one-prefill":
        monkeypatch.setattr(sampling, "_DEDUP_PROMPTS", False)
        monkeypatch.setattr(sampling, "_MAX_PREFILL_BUCKETS", 1)
    kw = dict(max_new_tokens=NEW, eos_token_id=EOS, pad_token_id=PAD, temperature=0.9)
    out = sample(llama, ids, mask, generator=_gen(2), hidden_states=True, **kw)  # type: ignore[arg-type]
    assert sampling.sampler_path(llama)[0] == ("loop" if path == "loop" else "fast")
    real = out.response_mask.bool()
    lengths = out.response_lengths
    assert out.hidden is not None and int(lengths.min()) < out.response_ids.shape[1]  # rows finished early
    am = out.attention_mask
    with torch.no_grad():
        states = llama(input_ids=out.input_ids, attention_mask=am, position_ids=(am.cumsum(1) - 1).clamp_min(0),
                       output_hidden_states=True).hidden_states[-1]  # fmt: skip
    p, t = out.prompt_ids.shape[1], out.response_ids.shape[1]
    expected = states[:, p - 1 : p - 1 + t]
    assert out.hidden.shape == expected.shape
    torch.testing.assert_close(out.hidden[real], expected[real], atol=2e-5, rtol=1e-5)
    assert out.hidden[~real].eq(0).all()
    assert out.select(torch.tensor([3, 1]), trim=True).hidden.shape[1] == int(lengths[[3, 1]].max())
    plain = sample(llama, ids, mask, generator=_gen(2), **kw)  # type: ignore[arg-type]
    assert plain.hidden is None and torch.equal(plain.response_ids, out.response_ids)
    assert plain.select(torch.tensor([0])).hidden is None


def test_greedy_logprobs_use_temperature_one(
    llama: PreTrainedModel, prompts: tuple[torch.Tensor, torch.Tensor]
) -> None:
    ids, mask = prompts
    out = sample(
        llama, ids, mask, max_new_tokens=NEW, eos_token_id=EOS, pad_token_id=PAD, greedy=True, temperature=0.3
    )
    logits = _full_forward_logits(llama, out)
    ref = torch.log_softmax(logits, dim=-1).gather(2, out.response_ids[..., None]).squeeze(2)
    real = out.response_mask.bool()
    torch.testing.assert_close(out.logprobs[real], ref[real], atol=1e-5, rtol=0)
    assert torch.equal(out.response_ids[real], logits.argmax(-1)[real])


# --------------------------------------------------------------------------------------------------
# 3. masks, padding, finished, early stop


def _check_masks(out: SampleBatch, eos: int, pad: int) -> None:
    for row in range(out.response_ids.shape[0]):
        toks = out.response_ids[row].tolist()
        m = out.response_mask[row].tolist()
        first = toks.index(eos) if eos in toks else None
        n_real = len(toks) if first is None else first + 1
        assert m == [1] * n_real + [0] * (len(toks) - n_real)
        assert all(t == pad for t in toks[n_real:])
        assert eos not in toks[: n_real - 1]
        assert bool(out.finished[row]) == (first is not None)


@pytest.mark.parametrize("pad", [PAD, EOS])
def test_masks_padding_and_finished(
    llama: PreTrainedModel, prompts: tuple[torch.Tensor, torch.Tensor], pad: int
) -> None:
    ids, mask = prompts
    out = sample(
        llama,
        ids,
        mask,
        max_new_tokens=NEW,
        eos_token_id=EOS,
        pad_token_id=pad,
        temperature=1.5,
        generator=_gen(1),
    )
    assert out.response_ids.shape == (ids.shape[0], NEW)
    assert 0 < int(out.finished.sum()) < ids.shape[0]
    _check_masks(out, EOS, pad)


def test_stops_when_every_row_finished(
    llama: PreTrainedModel, prompts: tuple[torch.Tensor, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Keep row i at batch index i in every forward: no cache compaction, one prefill.
    monkeypatch.setattr(sampling, "_COMPACT_FRACTION", float("inf"))
    monkeypatch.setattr(sampling, "_MAX_PREFILL_BUCKETS", 1)
    ids, mask = prompts
    step = {"n": 0}

    def push_eos(_module: torch.nn.Module, _inputs: object, logits: torch.Tensor) -> torch.Tensor:
        # Row i can only say EOS from its (i % 3)-th step on: rows finish at steps 1, 2 and 3.
        step["n"] += 1
        rows = torch.arange(logits.shape[0]) % 3 < step["n"]
        logits = logits.clone()
        logits[:, -1, EOS] = torch.where(rows, 1e4, -1e4)
        return logits

    handle = llama.lm_head.register_forward_hook(push_eos)
    try:
        out = sample(
            llama, ids, mask, max_new_tokens=NEW, eos_token_id=EOS, pad_token_id=PAD, generator=_gen(0)
        )
    finally:
        handle.remove()
    assert step["n"] == 3  # prefill + 2 decode steps, then everyone is done
    assert out.response_ids.shape == (ids.shape[0], 3)
    assert out.finished.all()
    assert out.response_lengths.tolist() == [i % 3 + 1 for i in range(ids.shape[0])]
    _check_masks(out, EOS, PAD)


def test_restores_train_mode_and_returns_trainable_tensors(
    prompts: tuple[torch.Tensor, torch.Tensor],
) -> None:
    model = _model("llama").train()
    model.model.layers[0].eval()  # a mixed state must come back as it was
    before = {name: m.training for name, m in model.named_modules()}
    ids, mask = prompts
    out = sample(model, ids, mask, max_new_tokens=4, eos_token_id=EOS, pad_token_id=PAD, generator=_gen(0))
    assert {name: m.training for name, m in model.named_modules()} == before
    assert model.config._attn_implementation == "sdpa"  # switched to eager on CPU, then back
    for t in (out.response_ids, out.response_mask, out.logprobs, out.finished):
        assert not t.is_inference()
    # The sampled ids feed a training forward with gradients.
    loss = model(input_ids=out.input_ids, attention_mask=out.attention_mask).logits.mean()
    loss.backward()
    assert model.lm_head.weight.grad is not None


# --------------------------------------------------------------------------------------------------
# 4. determinism


def test_seeded_determinism_and_top_k_one(
    llama: PreTrainedModel, prompts: tuple[torch.Tensor, torch.Tensor]
) -> None:
    ids, mask = prompts
    kw = dict(max_new_tokens=NEW, eos_token_id=EOS, pad_token_id=PAD, temperature=1.0)
    rng_state = torch.get_rng_state()
    a = sample(llama, ids, mask, generator=_gen(7), **kw)  # type: ignore[arg-type]
    b = sample(llama, ids, mask, generator=_gen(7), **kw)  # type: ignore[arg-type]
    c = sample(llama, ids, mask, generator=_gen(8), **kw)  # type: ignore[arg-type]
    assert torch.equal(torch.get_rng_state(), rng_state), "the global RNG must not be used"
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.logprobs, b.logprobs)
    assert not torch.equal(a.response_ids, c.response_ids)

    greedy = sample(llama, ids, mask, greedy=True, **kw)  # type: ignore[arg-type]
    top1 = sample(llama, ids, mask, top_k=1, generator=_gen(3), **kw)  # type: ignore[arg-type]
    assert torch.equal(top1.response_ids, greedy.response_ids)
    # sampling's step (the lean one) rounds differently from greedy decoding's exact replay
    torch.testing.assert_close(top1.logprobs, greedy.logprobs, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------------
# 5. top-k / top-p never sample outside their set


def _mass_above_and_rank(
    logits: torch.Tensor, tokens: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, ...]:
    probs = torch.softmax(logits / temperature, dim=-1)
    p_tok = probs.gather(-1, tokens[..., None])
    higher = probs > p_tok
    return (probs * higher).sum(-1), higher.sum(-1)


def test_top_p_stays_in_nucleus(model: PreTrainedModel) -> None:
    problems = ArithmeticTask().sample_problems(96, seed=3)
    ids, mask = encode_prompts(TOK, [p.text for p in problems])
    temperature, top_p = 3.0, 0.6
    kw = dict(max_new_tokens=NEW, eos_token_id=EOS, pad_token_id=PAD, temperature=temperature)
    out = sample(model, ids, mask, top_p=top_p, generator=_gen(0), **kw)  # type: ignore[arg-type]
    real = out.response_mask.bool()
    mass_above, _ = _mass_above_and_rank(_full_forward_logits(model, out), out.response_ids, temperature)
    # A token is in the nucleus iff the mass of strictly more likely tokens is below top_p.
    assert (mass_above[real] < top_p + 1e-4).all()

    # Not vacuous: without top-p the same check fails, and the nucleus often has several tokens.
    free = sample(model, ids, mask, generator=_gen(0), **kw)  # type: ignore[arg-type]
    free_mass, _ = _mass_above_and_rank(_full_forward_logits(model, free), free.response_ids, temperature)
    assert (free_mass[free.response_mask.bool()] >= top_p + 1e-4).any()
    assert (mass_above[real] > 0).float().mean() > 0.2


def test_top_k_stays_in_top_k(llama: PreTrainedModel, prompts: tuple[torch.Tensor, torch.Tensor]) -> None:
    ids, mask = prompts
    temperature = 3.0
    out = sample(
        llama,
        ids,
        mask,
        max_new_tokens=NEW,
        eos_token_id=EOS,
        pad_token_id=PAD,
        temperature=temperature,
        top_k=3,
        generator=_gen(0),
    )
    _, rank = _mass_above_and_rank(_full_forward_logits(llama, out), out.response_ids, temperature)
    real = out.response_mask.bool()
    assert (rank[real] < 3).all()
    assert (rank[real] == 2).any()


# --------------------------------------------------------------------------------------------------
# 6. argument validation


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"cache_implementation": "paged"}, "cache_implementation"),
    ],
)
def test_argument_validation(
    llama: PreTrainedModel, prompts: tuple[torch.Tensor, torch.Tensor], kwargs: dict, match: str
) -> None:
    ids, mask = prompts
    args: dict = {"max_new_tokens": 4, "eos_token_id": EOS, "pad_token_id": PAD} | kwargs
    with pytest.raises(ValueError, match=match):
        sample(llama, ids, mask, **args)


def test_validation_of_prompts_and_greedy_temperature(
    llama: PreTrainedModel, prompts: tuple[torch.Tensor, torch.Tensor]
) -> None:
    ids, mask = prompts
    kw = dict(max_new_tokens=4, eos_token_id=EOS, pad_token_id=PAD)
    with pytest.raises(ValueError, match="LEFT-padded"):
        sample(llama, ids.flip(1), mask.flip(1), **kw)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shape"):
        sample(llama, ids, mask[:, 1:], **kw)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="prompt_ids"):
        sample(llama, ids[0], mask[0], **kw)  # type: ignore[arg-type]
    # Greedy ignores the temperature, so 0 is fine there.
    out = sample(llama, ids, mask, greedy=True, temperature=0.0, **kw)  # type: ignore[arg-type]
    assert out.response_ids.shape[0] == ids.shape[0]
