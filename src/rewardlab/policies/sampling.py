"""Fast batched rollout sampling from a causal LM, with the log-probs a training forward would give.

:func:`sample` is a lean replacement for ``model.generate`` in RL loops (PPO, GRPO, RLOO, best-of-n):

* the prompts are prefilled once into a KV cache (a preallocated ``StaticCache`` by default: its
  in-place writes beat ``DynamicCache``'s per-step ``torch.cat`` on CPU), each distinct prompt
  once (groups repeat prompts), in length buckets cut to their own width (short prompts do not
  pay for long ones' padding);
* each step then feeds one token per row with ``position_ids = cumsum(mask) - 1`` continued past
  the prompt (what ``generate`` does for left-padded batches) and a ready-made 4D mask that is a
  view of one preallocated buffer, so no per-step mask building;
* outputs go into preallocated ``[B, max_new_tokens]`` buffers; the loop stops as soon as every
  row has produced EOS, and finished rows are dropped from the compute batch (the cache is
  compacted) once a quarter of it has finished, so late long rows do not pay for short ones;
* on CPU an SDPA model runs with eager attention for the call (faster for one query token against
  a short cache) and is switched back afterwards;
* every sampled token's log-prob is taken under ``log_softmax(logits / temperature)`` of the
  *unfiltered* distribution (top-k / top-p only decide what can be drawn), which is what a
  training forward recomputes, so the ratio ``pi_new / pi_old`` starts at 1;
* on request (``hidden_states=True``) the final hidden state each token was sampled from (the LM head's
  input) is kept too, so that a value head on the policy's trunk needs no forward of its own (PPO).

All randomness comes from the ``generator`` argument: the same seed gives the same samples.

Which path decodes a model (:func:`sampler_path`, logged by every stage that samples): ``fast`` (the CPU
:class:`~rewardlab.kernels.fast_decoder.FastDecoder` replays a plain Llama/Qwen2), ``loop`` (the loop above on
transformers' own forward: a Llama/Qwen2 with LoRA layers, hooks, or on a GPU), or ``generate`` (any other
architecture, e.g. GPT-2 with its learned absolute positions: ``model.generate`` with the same contract, its
randomness drawn from ``generator`` and its log-probs from the unprocessed logits).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import torch
from torch import Tensor
from transformers import DynamicCache, PreTrainedTokenizerBase, StaticCache
from transformers.cache_utils import DynamicLayer

from rewardlab.kernels.fast_decoder import FastDecoder
from rewardlab.policies.tokenizer import context_limit, encode_prompt

CacheImplementation = Literal["static", "dynamic"]

# Compact the compute batch once this share of its rows has finished (and at least _COMPACT_MIN rows).
_COMPACT_FRACTION = 0.25
_COMPACT_MIN = 2
_PASS_4D_MASK = True
# On CPU, eager attention beats SDPA by ~5-10% end to end at these tiny head sizes (one query
# token against a short cache), so an SDPA model is switched to eager for the call and back.
_CPU_EAGER_ATTENTION = True
# Prefill prompts of very different lengths in up to this many length buckets (each trimmed of
# its all-pad columns), an extra forward being judged worth about _BUCKET_OVERHEAD_TOKENS tokens.
_MAX_PREFILL_BUCKETS = 4
_BUCKET_OVERHEAD_TOKENS = 64
# Prefill each distinct prompt once (RL groups and best-of-n repeat prompts).
_DEDUP_PROMPTS = True
# On CPU, decode Llama/Qwen2 models with _FastDecoder (their eager forward's exact operations on
# their own weights, without transformers' per-call module and cache bookkeeping).
_FAST_DECODE = True
#: Model types the step-by-step loop on transformers' forward is written and tested for (RoPE decoders whose
#: forward takes ``position_ids``, a ``StaticCache`` and a 4D mask); other architectures use ``generate``.
_LOOP_MODEL_TYPES = frozenset({"llama", "qwen2"})
#: Why a known architecture is not decoded by the loop (logged with the fallback to ``generate``).
_NOT_SUPPORTED_WHY = {"gpt2": "learned absolute positions", "gpt_neo": "learned absolute positions",
                      "opt": "learned absolute positions with an offset"}  # fmt: skip
SamplerPath = Literal["fast", "loop", "generate"]
_log = logging.getLogger(__name__)
_told: set[str] = set()


def sampler_path(model: torch.nn.Module) -> tuple[SamplerPath, str]:
    """How :func:`sample` decodes ``model`` and a one-line reason for the log.

    ``fast``: the CPU fast decoder (a plain Llama/Qwen2 on CPU); ``loop``: the step loop on transformers'
    forward (a Llama/Qwen2 the fast decoder cannot replay: LoRA layers, hooks, a GPU; or a module without
    ``generate``); ``generate``: ``model.generate`` (any other architecture)."""
    inner: Any = getattr(model, "module", model)  # DDP wraps the model
    name = type(inner).__name__
    why = FastDecoder.unsupported(inner) if _FAST_DECODE else "the fast decoder is switched off"
    if why is None:
        return "fast", f"fast sampler: {name} on the CPU fast decoder"
    model_type = getattr(getattr(inner, "config", None), "model_type", None)
    if model_type in _LOOP_MODEL_TYPES or not callable(getattr(inner, "generate", None)):
        return "loop", f"fast sampler: {name} step by step on transformers' forward ({why})"
    reason = _NOT_SUPPORTED_WHY.get(
        str(model_type), f"model type {model_type!r} is not a Llama/Qwen2-style decoder"
    )
    return "generate", f"fast sampler: {name} not supported ({reason}); using generate"


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str | list[dict[str, str]]], max_new_tokens: int = 0
) -> tuple[Tensor, Tensor]:
    """Tokenize prompts (chat-formatted, see :func:`encode_prompt`) into a LEFT-padded batch.

    Returns ``(input_ids, attention_mask)``, both ``[B, P]`` long tensors, where ``P`` is the longest
    prompt; padding uses ``tokenizer.pad_token_id`` and has mask 0. A prompt longer than the tokenizer's
    ``model_max_length`` minus ``max_new_tokens`` keeps its last tokens, so prompt and response fit.
    """
    if len(prompts) == 0:
        raise ValueError("encode_prompts needs at least one prompt")
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        raise ValueError("the tokenizer has no pad_token_id")
    limit = context_limit(tokenizer)
    budget = max(1, limit - max_new_tokens) if limit is not None else None
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    if budget is not None:
        encoded = [ids[-budget:] for ids in encoded]
    if any(len(ids) == 0 for ids in encoded):
        raise ValueError("a prompt encodes to zero tokens")
    width = max(len(ids) for ids in encoded)
    input_ids = torch.full((len(encoded), width), int(pad_id), dtype=torch.long)
    attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for i, ids in enumerate(encoded):
        input_ids[i, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention_mask[i, width - len(ids) :] = 1
    return input_ids, attention_mask


@dataclass
class SampleBatch:
    """A batch of sampled responses to left-padded prompts.

    Attributes:
        prompt_ids: ``[B, P]`` left-padded prompt ids (as given to :func:`sample`).
        prompt_mask: ``[B, P]`` prompt attention mask (1 = real token).
        response_ids: ``[B, T]`` sampled ids, right-padded with ``pad_token_id`` after the first EOS
            (the EOS itself is a real token). ``T <= max_new_tokens``: it is shorter when every row
            finished early.
        response_mask: ``[B, T]`` long, 1 for real response tokens (up to and including the EOS).
        logprobs: ``[B, T]`` float32 log-prob of each sampled token under
            ``log_softmax(logits / temperature)`` of the unfiltered distribution (temperature 1
            for greedy); 0 at padding.
        finished: ``[B]`` bool, whether the row produced EOS.
        hidden: ``[B, T, D]`` the final (normed) hidden state each response token was sampled from (the LM
            head's input at the position before it, as ``output_hidden_states[-1]`` of a training forward
            gives it there), when :func:`sample` was asked for it (``hidden_states=True``) and its path
            records it; else ``None``. A value head on the policy's trunk reads it (PPO's rollout values).
    """

    prompt_ids: Tensor
    prompt_mask: Tensor
    response_ids: Tensor
    response_mask: Tensor
    logprobs: Tensor
    finished: Tensor
    hidden: Tensor | None = None

    @property
    def input_ids(self) -> Tensor:
        """``[B, P + T]`` prompt and response ids, for a training forward."""
        return torch.cat([self.prompt_ids, self.response_ids.to(self.prompt_ids.device)], dim=1)

    @property
    def attention_mask(self) -> Tensor:
        """``[B, P + T]`` attention mask matching :attr:`input_ids`."""
        return torch.cat(
            [self.prompt_mask.long(), self.response_mask.to(self.prompt_mask.device, torch.long)], dim=1
        )

    @property
    def response_lengths(self) -> Tensor:
        """``[B]`` number of real response tokens per row (EOS included)."""
        return self.response_mask.sum(dim=1)

    def __len__(self) -> int:
        return int(self.response_ids.shape[0])

    def select(self, idx: Tensor, trim: bool = False) -> SampleBatch:
        """Rows ``idx``; with ``trim``, without the prompt columns that are padding in every selected row (on
        the left) and the response columns past the longest selected response (on the right): the same
        tokens, masks and positions (:func:`~rewardlab.audit.tracker.position_ids_from_mask`), less padding."""
        fields = (getattr(self, f.name) for f in dataclasses.fields(self))
        b = SampleBatch(*(x[idx] if x is not None else None for x in fields))
        if not trim or len(b) == 0:
            return b
        first = int(b.prompt_mask.bool().any(dim=0).long().argmax())  # the first column with a real token
        width = max(int(b.response_mask.sum(dim=1).max()), 1)
        return SampleBatch(b.prompt_ids[:, first:], b.prompt_mask[:, first:], b.response_ids[:, :width],
                           b.response_mask[:, :width], b.logprobs[:, :width], b.finished,
                           None if b.hidden is None else b.hidden[:, :width])  # fmt: skip


def float32_weights(model: torch.nn.Module) -> bool:
    """Whether every floating-point weight of ``model`` is float32.

    Then the log-probs :func:`sample` returns (from its cached decoding forwards, in float32) are those a
    float32 forward over the finished sequences gives, up to float summation order (~1e-6): callers take
    them instead of a second forward (the audit's KL, PPO's old log-probs). With bf16 weights the two
    round differently (~1e-2 per token), and the callers run the forward.
    """
    return all(p.dtype == torch.float32 for p in model.parameters() if p.is_floating_point())


def _validate(prompt_ids: Tensor, prompt_mask: Tensor, d: Decoding) -> None:
    max_new_tokens, temperature, top_k, top_p, greedy = (
        d.max_new_tokens,
        d.temperature,
        d.top_k,
        d.top_p,
        d.greedy,
    )
    cache_implementation = d.cache_implementation
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if not greedy and not temperature > 0:
        raise ValueError(f"temperature must be > 0 when sampling (greedy=False), got {temperature!r}")
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0:
        raise ValueError(f"top_k must be an int >= 0 (0 disables it), got {top_k!r}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    if cache_implementation not in ("static", "dynamic"):
        raise ValueError(f"cache_implementation must be 'static' or 'dynamic', got {cache_implementation!r}")
    if prompt_ids.ndim != 2 or prompt_ids.shape[0] == 0 or prompt_ids.shape[1] == 0:
        raise ValueError(f"prompt_ids must be a non-empty [B, P] tensor, got shape {tuple(prompt_ids.shape)}")
    if prompt_mask.shape != prompt_ids.shape:
        raise ValueError(
            f"prompt_mask shape {tuple(prompt_mask.shape)} != prompt_ids shape {tuple(prompt_ids.shape)}"
        )
    if not bool(prompt_mask[:, -1].bool().all()):
        raise ValueError("prompts must be LEFT-padded and non-empty (prompt_mask[:, -1] must be all 1)")


@lru_cache(maxsize=64)
def _accepts_logits_to_keep(model_cls: type) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model_cls.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - exotic forward
        return False


def _filter_sorted(sorted_logits: Tensor, top_k: int, top_p: float) -> Tensor:
    """Mask (to -inf) descending-sorted logits outside the top-k, then outside the top-p nucleus.

    As in ``transformers``, top-p is taken over the distribution renormalised after top-k; a token
    is kept when the probability mass strictly above it is below ``top_p`` (the smallest set of
    tokens whose mass reaches ``top_p``); the most likely token is always kept.
    """
    if top_k:
        sorted_logits[:, top_k:] = float("-inf")
    if top_p < 1.0:
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        remove = mass_before >= top_p
        remove[:, 0] = False
        sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
    return sorted_logits


def _choose(
    logits: Tensor,
    *,
    greedy: bool,
    temperature: float,
    top_k: int,
    top_p: float,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    """Pick one token per row from ``[b, V]`` logits; return ``(tokens [b], logprobs [b])``."""
    if logits.dtype != torch.float32:
        logits = logits.float()
    if greedy:
        tokens = logits.argmax(dim=-1)
        logp_all = logits.log_softmax(dim=-1)
        return tokens, logp_all.gather(1, tokens[:, None]).squeeze(1)
    scaled = logits / temperature if temperature != 1.0 else logits
    vocab = scaled.shape[-1]
    k = top_k if 0 < top_k < vocab else 0
    if k == 0 and top_p >= 1.0:
        # Plain sampling: one softmax serves the draw and the drawn token's log-prob (a drawn token's
        # probability is never 0); log_softmax + exp cost ~45 us more per step at 8 x 1,761.
        probs = scaled.softmax(dim=-1)
        tokens = _draw(probs, generator)
        return tokens, probs.gather(1, tokens[:, None]).squeeze(1).log()
    logp_all = scaled.log_softmax(dim=-1)
    if top_p >= 1.0:
        top_vals, top_idx = scaled.topk(k, dim=-1)
        pick = _draw(top_vals.softmax(dim=-1), generator)
        tokens = top_idx.gather(1, pick[:, None]).squeeze(1)
    else:
        sorted_logits, sorted_idx = scaled.sort(dim=-1, descending=True)
        sorted_logits = _filter_sorted(sorted_logits, k, top_p)
        pick = _draw(sorted_logits.softmax(dim=-1), generator)
        tokens = sorted_idx.gather(1, pick[:, None]).squeeze(1)
    return tokens, logp_all.gather(1, tokens[:, None]).squeeze(1)


def _draw(probs: Tensor, generator: torch.Generator | None) -> Tensor:
    """One index per row of ``[b, n]`` probabilities, by inverse CDF: one uniform draw per row.

    ``torch.multinomial`` draws one exponential per *entry* (an exponential race), which costs
    ~250 us for 8 x 1,761 entries on CPU, more than a tiny model's whole decoding step; a cumulative
    sum and a binary search cost ~20 us. The index is the first whose cumulative mass exceeds
    ``u * total`` with ``u ~ U[0, 1)``, so zero-probability entries are never drawn.
    """
    cdf = probs.cumsum(dim=-1)
    total = cdf[:, -1:]
    u = torch.rand(total.shape, generator=generator, device=probs.device, dtype=probs.dtype) * total
    u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))  # u < total despite rounding
    return torch.searchsorted(cdf, u, right=True).squeeze(1)


class _EagerAttention:
    """:func:`_use_eager_attention_on_cpu` when a sampling path will run transformers' forward (:meth:`on`, before
    the step's mask kind is chosen), undone by :meth:`restore`; a path that never does (the lean fast decoder)
    skips the two switches (~0.5 ms a call)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.switched, self.restore_to = model, False, None

    def on(self) -> None:
        if not self.switched:
            self.switched, self.restore_to = True, _use_eager_attention_on_cpu(self.model)

    def restore(self) -> None:
        if self.restore_to is not None:
            self.model.set_attn_implementation(self.restore_to)  # type: ignore[operator]
            self.restore_to = None


def _use_eager_attention_on_cpu(model: torch.nn.Module) -> str | None:
    """Switch a CPU model from SDPA to eager attention; return the implementation to restore, if any."""
    config = getattr(model, "config", None)
    if not _CPU_EAGER_ATTENTION or getattr(config, "_attn_implementation", None) != "sdpa":
        return None
    if not callable(getattr(model, "set_attn_implementation", None)):
        return None
    param = next(model.parameters(), None)
    if param is None or param.device.type != "cpu":
        return None
    can_set = getattr(model, "_can_set_attn_implementation", None)
    if callable(can_set) and not can_set():
        return None
    model.set_attn_implementation("eager")  # type: ignore[operator]
    if getattr(config, "_attn_implementation", None) != "eager":  # pragma: no cover - refused
        model.set_attn_implementation("sdpa")  # type: ignore[operator]
        return None
    return "sdpa"


def _response_mask(response_ids: Tensor, eos_token_id: int) -> Tensor:
    """1 up to and including the first EOS of each row, 0 after (works when pad == eos)."""
    is_eos = (response_ids == eos_token_id).long()
    eos_before = is_eos.cumsum(dim=1) - is_eos
    return (eos_before == 0).long()


@dataclass(frozen=True)
class Decoding:
    """How to decode (the knobs of ``transformers``' ``GenerationConfig`` that :func:`sample` supports)."""

    max_new_tokens: int
    eos_token_id: int
    pad_token_id: int
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    greedy: bool = False
    cache_implementation: CacheImplementation = "static"


def sample(model: torch.nn.Module, prompt_ids: Tensor, prompt_mask: Tensor, decoding: Decoding | None = None, *,
           generator: torch.Generator | None = None, hidden_states: bool = False,
           **settings: Any) -> SampleBatch:  # fmt: skip
    """Sample responses to a LEFT-padded prompt batch, with a KV cache, and return a :class:`SampleBatch`.

    The decoding settings are a :class:`Decoding`, or its fields as keywords (``max_new_tokens=...,
    eos_token_id=..., pad_token_id=...``, as ``model.generate`` takes them); keywords override a given
    ``decoding``'s fields.

    Args:
        model: a Hugging Face causal LM (called with ``input_ids``, ``attention_mask``,
            ``position_ids``, ``cache`` (the KV cache; ``past_key_values`` before transformers 5), ``use_cache``). It is put in eval mode for the call
            and its modules' train/eval flags are restored afterwards.
        prompt_ids: ``[B, P]`` left-padded prompt ids (see :func:`encode_prompts`).
        prompt_mask: ``[B, P]`` attention mask, 1 for real tokens; the last column must be all 1.
        max_new_tokens: the most tokens to generate per row (> 0).
        eos_token_id: the token that ends a response (kept, with mask 1, as the row's last token).
        pad_token_id: the id written after a row's EOS (may equal ``eos_token_id``).
        temperature: softmax temperature (> 0) when sampling; ignored (taken as 1) when ``greedy``.
        top_k: keep only the ``top_k`` most likely tokens when sampling (0 = off).
        top_p: nucleus sampling mass, in (0, 1] (1 = off); applied after top-k, as in ``transformers``.
        greedy: take the argmax instead of sampling (top-k/top-p and temperature are then ignored).
        generator: the only source of randomness; the same seed gives the same samples. It must
            live on the model's device.
        cache_implementation: ``"static"`` (default, preallocated ``StaticCache``, faster on CPU)
            or ``"dynamic"`` (``DynamicCache``, for models without static cache support).
        hidden_states: also record the final hidden state each token was sampled from
            (:attr:`SampleBatch.hidden`; the ``fast`` and ``loop`` paths record it, ``generate`` does not).

    Returns:
        A :class:`SampleBatch` whose tensors are ordinary (not inference-mode) tensors, so they can
        feed a training forward directly. Its ``T`` is the number of steps actually run: it is
        ``max_new_tokens`` unless every row produced EOS earlier.
    """
    d = dataclasses.replace(decoding, **settings) if decoding is not None else Decoding(**settings)
    _validate(prompt_ids, prompt_mask, d)
    eos_token_id, pad_token_id = int(d.eos_token_id), int(d.pad_token_id)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    eager = _EagerAttention(model)
    try:
        # float32 even inside a mixed-precision training block (kernels/precision.py): small GEMMs are faster
        with torch.inference_mode(), torch.autocast(prompt_ids.device.type, enabled=False):
            run = dataclasses.replace(d, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                                      temperature=1.0 if d.greedy else float(d.temperature), top_k=int(d.top_k),
                                      top_p=float(d.top_p))  # fmt: skip
            path, why = sampler_path(model)
            if path == "generate":
                if why not in _told:  # once per architecture and process; stages also log it in run.log
                    _told.add(why)
                    _log.warning(why)
                eager.on()
                response_ids, logprobs = _hf_generate(model, prompt_ids, prompt_mask, run, generator)
                hidden = None
            else:
                fast = path == "fast" and getattr(model, "module", model) is model  # (DDP: the loop)
                response_ids, logprobs, hidden = _generate(
                    model, prompt_ids, prompt_mask, run, generator, hidden_states, fast=fast, eager=eager
                )
    finally:
        for m, was_training in modes:
            m.training = was_training
        eager.restore()
    # Clone out of inference mode: inference tensors cannot be saved for backward (e.g. as
    # embedding indices), which a training forward over these ids would need.
    response_ids = response_ids.clone()
    response_mask = _response_mask(response_ids, int(eos_token_id))
    response_ids = response_ids.masked_fill(response_mask == 0, int(pad_token_id))
    logprobs = logprobs.clone() * response_mask
    if hidden is not None:
        hidden = hidden.clone() * response_mask[..., None]
    return SampleBatch(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        response_ids=response_ids,
        response_mask=response_mask,
        logprobs=logprobs,
        finished=(response_ids == int(eos_token_id)).logical_and(response_mask.bool()).any(dim=1),
        hidden=hidden,
    )


@contextlib.contextmanager
def _lm_head_inputs(model: torch.nn.Module, enabled: bool) -> Iterator[list[Tensor]]:
    """Within the block, every input of ``model``'s LM head (its output embedding: the final, normed hidden
    states ``[b, s, D]``) is appended to the yielded list; nothing is recorded unless ``enabled``."""
    seen: list[Tensor] = []
    head = getattr(model, "module", model).get_output_embeddings() if enabled else None
    if head is None:
        yield seen
        return
    handle = head.register_forward_pre_hook(lambda _module, args: seen.append(args[0]))
    try:
        yield seen
    finally:
        handle.remove()


def _plan_prefill_buckets(lengths: list[int], overhead: int, max_buckets: int) -> list[int]:
    """Upper prompt lengths of the buckets minimising ``sum(rows * width) + overhead * n_buckets``.

    ``lengths`` are the real prompt lengths; a bucket with upper length ``w`` holds the rows whose
    length is in ``(previous w, w]`` and is prefilled ``w`` tokens wide. Exact dynamic programme over
    the distinct lengths (there are few).
    """
    values = sorted(set(lengths))
    counts = [lengths.count(v) for v in values]
    n = len(values)
    prefix = [0]
    for c in counts:
        prefix.append(prefix[-1] + c)
    inf = float("inf")
    # best[k][j]: least cost covering the first j distinct lengths with k buckets.
    best = [[inf] * (n + 1) for _ in range(max_buckets + 1)]
    back = [[0] * (n + 1) for _ in range(max_buckets + 1)]
    best[0][0] = 0.0
    for k in range(1, max_buckets + 1):
        for j in range(1, n + 1):
            for i in range(j):
                cost = best[k - 1][i] + (prefix[j] - prefix[i]) * values[j - 1] + overhead
                if cost < best[k][j]:
                    best[k][j], back[k][j] = cost, i
    k = min(range(1, max_buckets + 1), key=lambda kk: best[kk][n])
    widths, j = [], n
    while j > 0:
        widths.append(values[j - 1])
        j = back[k][j]
        k -= 1
    return widths[::-1]


def _prefill(
    model: torch.nn.Module,
    cache: StaticCache | DynamicCache,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    prompt_pos: Tensor,
    hidden_states: bool = False,
    decoder: FastDecoder | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Run the prompts through ``model`` into ``cache``; return the last position's logits ``[B, V]`` and, with
    ``hidden_states``, its final hidden state ``[B, D]`` (the LM head's input; else ``None``). A ``decoder`` with a
    lean sampling step runs them through its own weights instead (:meth:`FastDecoder.prefill`).

    Two savings over one full-width forward, both exact up to float rounding:

    * identical prompts (GRPO/RLOO groups, best-of-n) are prefilled once and their keys/values
      copied to every row that repeats them;
    * prompts of very different lengths are prefilled in length buckets, each cut to its own
      width, so short prompts do not pay for the long ones' padding.

    The pieces' keys/values are then written into ``cache`` at their left-padded slots (RoPE
    positions do not depend on padding, so this is the cache a single full-width prefill gives).
    """
    extra = {"logits_to_keep": 1} if _accepts_logits_to_keep(type(model)) else {}

    def forward(
        ids: Tensor, mask: Tensor, pos: Tensor, into: DynamicCache | StaticCache
    ) -> tuple[Tensor, Tensor | None]:
        """The last position's logits and (with ``hidden_states``) final hidden state, the keys/values into ``into``."""
        lean = (
            decoder.prefill(ids, mask, pos, into)
            if decoder is not None and isinstance(into, DynamicCache)
            else None
        )
        if lean is not None:
            return lean[0], lean[1] if hidden_states else None
        with _lm_head_inputs(model, hidden_states) as seen:
            out = model(
                input_ids=ids, attention_mask=mask, position_ids=pos, cache=into, use_cache=True, **extra
            )
        return out.logits[:, -1, :], seen[-1][:, -1] if seen else None

    batch, prompt_len = prompt_ids.shape
    lengths = prompt_mask.sum(dim=1)
    if _DEDUP_PROMPTS and batch > 1:
        key = torch.cat([prompt_ids * prompt_mask, prompt_mask], dim=1)
        _, inverse = torch.unique(key, dim=0, return_inverse=True)
        n_unique = int(inverse.max()) + 1
        # One representative (original row) per distinct prompt.
        reps = torch.empty(n_unique, dtype=torch.long, device=prompt_ids.device)
        reps.scatter_(0, inverse, torch.arange(batch, device=prompt_ids.device))
    else:
        n_unique, inverse, reps = batch, None, torch.arange(batch, device=prompt_ids.device)
    rep_lengths = lengths[reps]
    widths = _plan_prefill_buckets(rep_lengths.tolist(), _BUCKET_OVERHEAD_TOKENS, _MAX_PREFILL_BUCKETS)
    if n_unique < batch or len(widths) > 1 or widths[0] < prompt_len:
        parts = []
        lower = 0
        for width in widths:
            members = ((rep_lengths > lower) & (rep_lengths <= width)).nonzero().squeeze(1)
            lower = width
            rows = reps[members]
            cols = slice(prompt_len - width, prompt_len)
            sub = DynamicCache()
            last, last_hidden = forward(
                prompt_ids[rows, cols], prompt_mask[rows, cols], prompt_pos[rows, cols], sub
            )
            if not all(type(layer) is DynamicLayer and layer.keys is not None for layer in sub.layers):
                break  # not a plain full-attention KV cache: fall back to one full-width prefill
            # logits and final hidden state side by side, so that one assembly below places both
            vocab = last.shape[-1]
            if last_hidden is not None:
                last = torch.cat([last, last_hidden.to(last.dtype)], dim=1)
            parts.append((members, cols, sub, last))
        else:
            logits = parts[0][3].new_empty((n_unique, parts[0][3].shape[-1]))
            for members, _, _, part_logits in parts:
                logits[members] = part_logits
            for layer_idx in range(len(parts[0][2].layers)):
                ref = parts[0][2].layers[layer_idx]
                keys = ref.keys.new_zeros((n_unique, ref.keys.shape[1], prompt_len, ref.keys.shape[3]))
                values = ref.values.new_zeros(
                    (n_unique, ref.values.shape[1], prompt_len, ref.values.shape[3])
                )
                for members, cols, sub, _ in parts:
                    keys[members, :, cols] = sub.layers[layer_idx].keys
                    values[members, :, cols] = sub.layers[layer_idx].values
                if inverse is not None:
                    keys, values = keys[inverse], values[inverse]
                cache.update(keys, values, layer_idx)
            logits = logits if inverse is None else logits[inverse]
            if not hidden_states:
                return logits, None
            return logits[:, :vocab], logits[:, vocab:] if logits.shape[1] > vocab else None
    return forward(prompt_ids, prompt_mask, prompt_pos, cache)


def _generate(model: torch.nn.Module, prompt_ids: Tensor, prompt_mask: Tensor, d: Decoding,
              generator: torch.Generator | None, hidden_states: bool = False, *, fast: bool = True,
              eager: _EagerAttention | None = None) -> tuple[Tensor, Tensor, Tensor | None]:  # fmt: skip
    """The decoding loop (under inference mode); returns ``(response_ids, logprobs)`` of ``[B, steps]`` and,
    with ``hidden_states``, the final hidden state each token was sampled from, ``[B, steps, D]`` (else
    ``None``). ``fast``: the model is one :class:`FastDecoder` replays (:func:`sampler_path` said so); ``eager``
    is switched on unless no transformers forward will run."""
    max_new_tokens, eos_token_id, pad_token_id = d.max_new_tokens, d.eos_token_id, d.pad_token_id
    temperature, top_k, top_p, greedy, cache_implementation = (
        d.temperature,
        d.top_k,
        d.top_p,
        d.greedy,
        d.cache_implementation,
    )
    device = prompt_ids.device
    batch, prompt_len = prompt_ids.shape
    total_len = prompt_len + max_new_tokens
    config: Any = model.config  # type: ignore[union-attr]
    cache: StaticCache | DynamicCache
    decoder = FastDecoder(model, batch, total_len, exact=greedy) if fast and _FAST_DECODE else None
    if eager is not None and (decoder is None or decoder.lean is None):
        eager.on()  # before the attention implementation is read below
    if decoder is not None:
        cache = DynamicCache(config=config)  # the prefill's; then copied into the decoder's own
    elif cache_implementation == "static":
        cache = StaticCache(config=config, max_cache_len=total_len)
    else:
        cache = DynamicCache(config=config)
    # A 4D [b, 1, 1, kv] mask skips transformers' per-step mask building: SDPA takes a boolean one,
    # so a view of the 2D padding buffer is the whole step mask (slots not yet written are 0);
    # eager attention adds a float one (kept in step in place). Other kernels, and models with
    # sliding-window layers (whose masks differ per layer), get the 2D mask.
    attn_impl = getattr(config, "_attn_implementation", None)
    full_attention_only = set(getattr(config, "layer_types", None) or ["full_attention"]) == {
        "full_attention"
    }
    mask_kind = "2d"
    if decoder is not None:
        mask_kind = "additive"
    elif _PASS_4D_MASK and full_attention_only:
        mask_kind = {"sdpa": "bool", "eager": "additive"}.get(attn_impl, "2d")

    mask = torch.zeros((batch, total_len), dtype=torch.bool, device=device)
    mask[:, :prompt_len] = prompt_mask.bool()
    additive = torch.empty(0)
    if mask_kind == "additive":
        dtype = next(model.parameters()).dtype
        additive = torch.zeros((batch, 1, 1, total_len), dtype=dtype, device=device)
        additive.masked_fill_(~mask[:, None, None, :], torch.finfo(dtype).min)
    next_pos = prompt_mask.long().sum(dim=1)  # position of the first response token
    rows = torch.arange(batch, device=device)  # original row of each compute-batch row
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    response_ids = torch.full((batch, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    logprobs = torch.zeros((batch, max_new_tokens), dtype=torch.float32, device=device)
    choose = dict(greedy=greedy, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)

    prompt_mask = prompt_mask.long()
    prompt_pos = (prompt_mask.cumsum(dim=1) - 1).clamp_min(0)
    logits, hidden = _prefill(model, cache, prompt_ids, prompt_mask, prompt_pos, hidden_states, decoder)
    hiddens = None
    if hidden is not None:
        hiddens = hidden.new_zeros((batch, max_new_tokens, hidden.shape[-1]))
    if decoder is not None:
        decoder.load_prompt_cache(cache, prompt_len)  # type: ignore[arg-type]
    compacted = False
    steps = n_done = 0
    for t in range(max_new_tokens):
        tokens, logp = _choose(logits, **choose)
        if n_done:
            tokens = tokens.masked_fill(done, pad_token_id)
        if compacted:
            response_ids[rows, t] = tokens
            logprobs[rows, t] = logp
        else:
            response_ids[:, t] = tokens
            logprobs[:, t] = logp
        if hiddens is not None:
            hiddens[rows, t] = hidden
        done = done | (tokens == eos_token_id)
        steps = t + 1
        if t + 1 == max_new_tokens:
            break
        n_done = int(done.sum())
        size = int(done.shape[0])
        if n_done == size:
            break
        compact = decoder is None or decoder.compacts  # not a compiled decoder (one batch size)
        if compact and n_done >= max(_COMPACT_MIN, _COMPACT_FRACTION * size):
            keep = (~done).nonzero().squeeze(1)
            if decoder is not None:
                decoder.reorder(keep)
            else:
                cache.reorder_cache(keep)
            rows, tokens, mask, next_pos, done = (
                rows[keep],
                tokens[keep],
                mask[keep],
                next_pos[keep],
                done[keep],
            )
            if mask_kind == "additive":
                additive = additive[keep]
            compacted = True
        slot = prompt_len + t
        if (
            mask_kind != "additive"
        ):  # (the additive mask is the step's mask then; this one only follows the rows)
            mask[:, slot] = True
        kv_len = total_len if cache_implementation == "static" or decoder is not None else slot + 1
        if mask_kind == "bool":
            step_mask = mask[:, None, None, :kv_len]
        elif mask_kind == "additive":
            additive[:, 0, 0, slot] = 0.0
            step_mask = additive[..., :kv_len]
        else:
            step_mask = mask[:, :kv_len]
        if decoder is not None:
            logits = decoder.step(tokens, next_pos + t, step_mask, slot)
            hidden = decoder.hidden
            continue
        with _lm_head_inputs(model, hiddens is not None) as seen:
            out = model(
                input_ids=tokens[:, None],
                attention_mask=step_mask,
                position_ids=(next_pos + t)[:, None],
                cache=cache,
                use_cache=True,
            )
        logits = out.logits[:, -1, :]
        hidden = seen[-1][:, -1] if seen else None
    return response_ids[:, :steps], logprobs[:, :steps], None if hiddens is None else hiddens[:, :steps]


def _hf_generate(model: torch.nn.Module, prompt_ids: Tensor, prompt_mask: Tensor, d: Decoding,
                 generator: torch.Generator | None) -> tuple[Tensor, Tensor]:  # fmt: skip
    """``model.generate`` with :func:`sample`'s contract, for architectures the loop does not handle.

    Its randomness comes from ``generator`` all the same: one seed is drawn from it and ``generate`` runs on a
    forked global RNG seeded with it (the caller's global RNG is untouched). The log-prob of each token is
    taken under ``log_softmax(logits / temperature)`` of the *unprocessed* logits (``output_logits``), as
    the loop does; top-k/top-p only decide what can be drawn. Returns ``(response_ids, logprobs)``.
    """
    from transformers import GenerationConfig

    inner: Any = getattr(model, "module", model)
    sampling = {"do_sample": True, "temperature": d.temperature, "top_k": d.top_k, "top_p": d.top_p}
    config = GenerationConfig(max_new_tokens=d.max_new_tokens, eos_token_id=d.eos_token_id, pad_token_id=d.pad_token_id,
                              return_dict_in_generate=True, output_logits=True,
                              **({"do_sample": False} if d.greedy else sampling))  # fmt: skip
    seed = None
    if generator is not None and not d.greedy:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    devices = [prompt_ids.device.index or 0] if prompt_ids.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        out = inner.generate(
            input_ids=prompt_ids, attention_mask=prompt_mask.long(), generation_config=config
        )
    response = out.sequences[:, prompt_ids.shape[1] :]
    logits = torch.stack(out.logits, dim=1).float()[:, : response.shape[1]]
    if not d.greedy and d.temperature != 1.0:
        logits = logits / d.temperature
    logprobs = logits.log_softmax(dim=-1).gather(-1, response[..., None]).squeeze(-1)
    return response, logprobs
