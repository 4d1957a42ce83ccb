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
  training forward recomputes, so the ratio ``pi_new / pi_old`` starts at 1.

All randomness comes from the ``generator`` argument: the same seed gives the same samples.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import torch
from torch import Tensor
from transformers import DynamicCache, PreTrainedTokenizerBase, StaticCache
from transformers.cache_utils import DynamicLayer

from rewardlab.policies.tokenizer import encode_prompt

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
# _FastDecoder: one matmul for q/k/v and one for gate/up (weights concatenated once per call).
# With MKL it is no faster on CPU (11M params, batch 8: 880 vs 790 ms per 48 tokens), so it is
# forced only by this flag; with oneDNN (below) groups big enough to be packed are fused.
_FUSE_PROJECTIONS = False
# _FastDecoder when sampling (not greedy): fp32 matmuls through oneDNN with weights prepacked once
# per call, ~1.6x faster than the default MKL GEMM at RL batch sizes on CPU (11M params, batch 8:
# 481 vs 787 ms per 48 tokens). Results differ from MKL's in the last bits (~1e-6 relative), so
# greedy decoding keeps the exact MKL path (its outputs equal model.generate's).
_ONEDNN_SAMPLING = True
# ... for weight matrices of at least this many entries: below it oneDNN's per-call overhead wins
# (1M params: packing every matrix made a 48-token call 1.25x slower; packing only the LM head helps).
_ONEDNN_MIN_WEIGHT = 262_144


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str | list[dict[str, str]]]
) -> tuple[Tensor, Tensor]:
    """Tokenize prompts (chat-formatted, see :func:`encode_prompt`) into a LEFT-padded batch.

    Returns ``(input_ids, attention_mask)``, both ``[B, P]`` long tensors, where ``P`` is the longest
    prompt; padding uses ``tokenizer.pad_token_id`` and has mask 0.
    """
    if len(prompts) == 0:
        raise ValueError("encode_prompts needs at least one prompt")
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        raise ValueError("the tokenizer has no pad_token_id")
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
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
    """

    prompt_ids: Tensor
    prompt_mask: Tensor
    response_ids: Tensor
    response_mask: Tensor
    logprobs: Tensor
    finished: Tensor

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


def _validate(
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    greedy: bool,
    cache_implementation: str,
) -> None:
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


class _FastDecoder:
    """Decode-only forward of a Llama-family causal LM (Llama, Qwen2), one new token per row, on CPU.

    At RL batch sizes a tiny model's decoding step is mostly Python: transformers' forward runs
    ~15 module calls, mask and cache bookkeeping per layer, which costs more than the arithmetic at
    ~1M params. This class replays the *same operations in the same order* as the eager forward
    (RMSNorm in float32, RoPE from the model's own rotary table, ``q k^T * scaling + mask``, float32
    softmax, SwiGLU MLP, final norm, LM head) on the model's own weights, with a preallocated
    ``[B, kv_heads, total_len, head_dim]`` KV cache per layer written with ``index_copy_`` like
    ``StaticCache``, so its logits are bitwise those of the eager forward (tested), and greedy
    outputs those of ``model.generate``. With ``_FUSE_PROJECTIONS`` q/k/v (and gate/up) are one
    matmul against concatenated weights, which still gives the same bits on CPU (tested).

    :meth:`build` returns ``None`` (and :func:`sample` uses transformers' forward) unless the model is
    exactly such a model: a plain ``LlamaForCausalLM``/``Qwen2ForCausalLM`` on CPU, default RoPE,
    full attention in every layer, ``nn.Linear`` projections (no adapters) and no module hooks.
    """

    _ARCHS = ("LlamaForCausalLM", "Qwen2ForCausalLM")

    def __init__(self, model: torch.nn.Module, batch: int, total_len: int, exact: bool = True) -> None:
        inner: Any = model.model  # type: ignore[union-attr]
        config: Any = model.config  # type: ignore[union-attr]
        attn0 = inner.layers[0].self_attn
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(config.num_key_value_heads)
        self.head_dim = int(attn0.head_dim)
        self.groups = self.heads // self.kv_heads
        self.scaling = float(attn0.scaling)
        self.embed = inner.embed_tokens.weight
        self.final_norm = (inner.norm.weight, float(inner.norm.variance_epsilon))
        head: Any = model.get_output_embeddings()  # type: ignore[operator]
        self.pack = not exact and _ONEDNN_SAMPLING and _onednn_available(self.embed)
        self.batch = batch
        self.lm_head = self._weights(head.weight, head.bias)
        param = self.embed
        positions = torch.arange(total_len, device=param.device)[None]
        cos, sin = inner.rotary_emb(param[:1], positions)  # the model's own table, row = position
        self.cos, self.sin = cos[0], sin[0]
        self.layers: list[dict[str, Any]] = []
        self.keys: list[Tensor] = []
        self.values: list[Tensor] = []
        for layer in inner.layers:
            a, m = layer.self_attn, layer.mlp
            w: dict[str, Any] = {
                "norm1": (layer.input_layernorm.weight, float(layer.input_layernorm.variance_epsilon)),
                "norm2": (
                    layer.post_attention_layernorm.weight,
                    float(layer.post_attention_layernorm.variance_epsilon),
                ),
                "o": self._weights(a.o_proj.weight, a.o_proj.bias),
                "down": self._weights(m.down_proj.weight, m.down_proj.bias),
                "act": m.act_fn,
            }
            for group, names, mods in (
                ("qkv", ("q", "k", "v"), (a.q_proj, a.k_proj, a.v_proj)),
                ("gate_up", ("gate", "up"), (m.gate_proj, m.up_proj)),
            ):
                size = sum(mod.weight.numel() for mod in mods)
                if _FUSE_PROJECTIONS or (self.pack and size >= _ONEDNN_MIN_WEIGHT):
                    w[group] = self._weights(*_concat_linear(list(mods)))
                else:
                    w.update({n: self._weights(mod.weight, mod.bias) for n, mod in zip(names, mods)})
            self.layers.append(w)
            shape = (batch, self.kv_heads, total_len, self.head_dim)
            self.keys.append(param.new_zeros(shape))
            self.values.append(param.new_zeros(shape))

    def _weights(self, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor | None, bool]:
        """``(weight, bias, packed)``: the weight as is, or prepacked for oneDNN when sampling."""
        if self.pack and weight.numel() >= _ONEDNN_MIN_WEIGHT:
            return torch.ops.mkldnn._reorder_linear_weight(weight, self.batch), bias, True
        return weight, bias, False

    @classmethod
    def build(
        cls, model: torch.nn.Module, batch: int, total_len: int, exact: bool = True
    ) -> _FastDecoder | None:
        """A decoder for ``model``, or ``None`` when the model is not one this class replays exactly.

        ``exact=False`` (sampling) lets fp32 matmuls run through oneDNN (see ``_ONEDNN_SAMPLING``).
        """
        if not _FAST_DECODE or type(model).__name__ not in cls._ARCHS:
            return None
        config: Any = getattr(model, "config", None)
        inner: Any = getattr(model, "model", None)
        param = next(model.parameters(), None)
        if config is None or inner is None or param is None or param.device.type != "cpu":
            return None
        if set(getattr(config, "layer_types", None) or ["full_attention"]) != {"full_attention"}:
            return None
        rotary = getattr(inner, "rotary_emb", None)
        if getattr(rotary, "rope_type", None) != "default" or getattr(config, "pretraining_tp", 1) != 1:
            return None
        if torch.nn.modules.module._global_forward_hooks or torch.nn.modules.module._global_forward_pre_hooks:
            return None
        if any(_observed(mod) for mod in model.modules()):
            return None  # someone observes or edits intermediate outputs: run the real modules
        linears = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
        for layer in inner.layers:
            subs = [getattr(layer.self_attn, n, None) for n in linears[:4]]
            subs += [getattr(layer.mlp, n, None) for n in linears[4:]]
            if any(type(x) is not torch.nn.Linear for x in subs):
                return None  # LoRA or quantized layers compute something else
            norms = (layer.input_layernorm, layer.post_attention_layernorm)
            if any(not type(n).__name__.endswith("RMSNorm") for n in norms):
                return None
        if type(model.get_output_embeddings()) is not torch.nn.Linear:  # type: ignore[operator]
            return None
        return cls(model, batch, total_len, exact)

    def load_prompt_cache(self, cache: DynamicCache, prompt_len: int) -> None:
        """Copy the prefilled prompt keys/values (``[B, kv_heads, prompt_len, head_dim]``) into slots 0.."""
        for i, layer in enumerate(cache.layers):
            self.keys[i][:, :, :prompt_len] = layer.keys  # type: ignore[union-attr]
            self.values[i][:, :, :prompt_len] = layer.values  # type: ignore[union-attr]

    def reorder(self, keep: Tensor) -> None:
        """Keep only the rows ``keep`` of the cache (finished rows leave the compute batch)."""
        self.keys = [k.index_select(0, keep) for k in self.keys]
        self.values = [v.index_select(0, keep) for v in self.values]

    def step(self, tokens: Tensor, positions: Tensor, mask: Tensor, slot: int) -> Tensor:
        """Logits ``[b, V]`` for one token per row at ``positions`` ``[b]``, written to cache ``slot``.

        ``mask`` is the additive ``[b, 1, 1, total_len]`` attention mask (0 = attend).
        """
        b = tokens.shape[0]
        slot_idx = torch.tensor([slot], device=tokens.device)
        h = torch.nn.functional.embedding(tokens[:, None], self.embed)  # [b, 1, D]
        cos = self.cos[positions][:, None, None]  # [b, 1, 1, head_dim], as apply_rotary_pos_emb
        sin = self.sin[positions][:, None, None]
        nq, nkv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        for i, w in enumerate(self.layers):
            residual = h
            x = _rms_norm(h, *w["norm1"])
            if "qkv" in w:  # q and k rotated together: the same elementwise ops, half the calls
                qkv = _linear(x, w["qkv"])
                qk = qkv[..., : nq + nkv].reshape(b, 1, self.heads + self.kv_heads, self.head_dim)
                qk = qk.transpose(1, 2)
                qk = (qk * cos) + (_rotate_half(qk) * sin)
                q, k = qk[:, : self.heads], qk[:, self.heads :]
                v = qkv[..., nq + nkv :].reshape(b, 1, self.kv_heads, self.head_dim).transpose(1, 2)
            else:
                q, k, v = _linear(x, w["q"]), _linear(x, w["k"]), _linear(x, w["v"])
                q = q.reshape(b, 1, self.heads, self.head_dim).transpose(1, 2)
                k = k.reshape(b, 1, self.kv_heads, self.head_dim).transpose(1, 2)
                v = v.reshape(b, 1, self.kv_heads, self.head_dim).transpose(1, 2)
                q = (q * cos) + (_rotate_half(q) * sin)
                k = (k * cos) + (_rotate_half(k) * sin)
            self.keys[i].index_copy_(2, slot_idx, k)
            self.values[i].index_copy_(2, slot_idx, v)
            keys, values = _repeat_kv(self.keys[i], self.groups), _repeat_kv(self.values[i], self.groups)
            scores = torch.matmul(q, keys.transpose(2, 3)) * self.scaling + mask
            probs = torch.nn.functional.softmax(scores, dim=-1, dtype=torch.float32)
            if probs.dtype != q.dtype:
                probs = probs.to(q.dtype)
            out = torch.matmul(probs, values).transpose(1, 2).contiguous().reshape(b, 1, -1)
            h = residual + _linear(out, w["o"])
            residual = h
            x = _rms_norm(h, *w["norm2"])
            if "gate_up" in w:
                gate, up = _linear(x, w["gate_up"]).chunk(2, dim=-1)
            else:
                gate, up = _linear(x, w["gate"]), _linear(x, w["up"])
            h = residual + _linear(w["act"](gate) * up, w["down"])
        h = _rms_norm(h, *self.final_norm)
        return _linear(h[:, -1], self.lm_head)


def _observed(module: torch.nn.Module) -> bool:
    """``module`` has forward (pre-)hooks other than transformers' output-capturing ones.

    transformers installs those on the decoder layers the first time ``output_hidden_states`` is
    asked for and leaves them in place; they do nothing unless a forward asks for those outputs.
    """
    if module._forward_pre_hooks:
        return True
    return any(
        getattr(h, "__name__", "") != "output_capturing_hook"
        or not getattr(h, "__module__", "").startswith("transformers.")
        for h in module._forward_hooks.values()
    )


def _concat_linear(layers: list[torch.nn.Linear]) -> tuple[Tensor, Tensor | None]:
    weight = torch.cat([m.weight for m in layers])
    if all(m.bias is None for m in layers):
        return weight, None
    biases = [m.bias if m.bias is not None else m.weight.new_zeros(m.out_features) for m in layers]
    return weight, torch.cat(biases)


def _linear(x: Tensor, wb: tuple[Tensor, Tensor | None, bool]) -> Tensor:
    weight, bias, packed = wb
    if not packed:
        return torch.nn.functional.linear(x, weight, bias)
    y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, x.shape[-1]), weight, bias, "none", [], "")
    return y.reshape(*x.shape[:-1], y.shape[-1])


def _onednn_available(like: Tensor) -> bool:
    """oneDNN's prepacked fp32 linear (the op inductor uses on CPU) is there and works."""
    if like.dtype != torch.float32 or like.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    try:
        w = like.new_ones((2, 3))
        packed = torch.ops.mkldnn._reorder_linear_weight(w, 1)
        y = torch.ops.mkldnn._linear_pointwise(like.new_ones((1, 3)), packed, None, "none", [], "")
    except (AttributeError, RuntimeError):  # pragma: no cover - a torch build without these ops
        return False
    return bool(torch.equal(y, like.new_full((1, 2), 3.0)))


def _rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """transformers' LlamaRMSNorm / Qwen2RMSNorm, operation for operation."""
    dtype = x.dtype
    if dtype != torch.float32:  # .to() to the same dtype is the identity: skip its dispatch
        x = x.to(torch.float32)
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * (x if dtype == torch.float32 else x.to(dtype))


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _repeat_kv(x: Tensor, groups: int) -> Tensor:
    if groups == 1:
        return x
    b, h, n, d = x.shape
    return x[:, :, None].expand(b, h, groups, n, d).reshape(b, h * groups, n, d)


def _response_mask(response_ids: Tensor, eos_token_id: int) -> Tensor:
    """1 up to and including the first EOS of each row, 0 after (works when pad == eos)."""
    is_eos = (response_ids == eos_token_id).long()
    eos_before = is_eos.cumsum(dim=1) - is_eos
    return (eos_before == 0).long()


def sample(
    model: torch.nn.Module,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    *,
    max_new_tokens: int,
    eos_token_id: int,
    pad_token_id: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    greedy: bool = False,
    generator: torch.Generator | None = None,
    cache_implementation: CacheImplementation = "static",
) -> SampleBatch:
    """Sample responses to a LEFT-padded prompt batch, with a KV cache, and return a :class:`SampleBatch`.

    Args:
        model: a Hugging Face causal LM (called with ``input_ids``, ``attention_mask``,
            ``position_ids``, ``past_key_values``, ``use_cache``). It is put in eval mode for the call
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

    Returns:
        A :class:`SampleBatch` whose tensors are ordinary (not inference-mode) tensors, so they can
        feed a training forward directly. Its ``T`` is the number of steps actually run: it is
        ``max_new_tokens`` unless every row produced EOS earlier.
    """
    _validate(
        prompt_ids, prompt_mask, max_new_tokens, temperature, top_k, top_p, greedy, cache_implementation
    )
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    restore_attn = _use_eager_attention_on_cpu(model)
    try:
        with torch.inference_mode():
            response_ids, logprobs = _generate(
                model,
                prompt_ids,
                prompt_mask,
                max_new_tokens=max_new_tokens,
                eos_token_id=int(eos_token_id),
                pad_token_id=int(pad_token_id),
                temperature=1.0 if greedy else float(temperature),
                top_k=int(top_k),
                top_p=float(top_p),
                greedy=greedy,
                generator=generator,
                cache_implementation=cache_implementation,
            )
    finally:
        for m, was_training in modes:
            m.training = was_training
        if restore_attn is not None:
            model.set_attn_implementation(restore_attn)  # type: ignore[operator]
    # Clone out of inference mode: inference tensors cannot be saved for backward (e.g. as
    # embedding indices), which a training forward over these ids would need.
    response_ids = response_ids.clone()
    response_mask = _response_mask(response_ids, int(eos_token_id))
    response_ids = response_ids.masked_fill(response_mask == 0, int(pad_token_id))
    logprobs = logprobs.clone() * response_mask
    return SampleBatch(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        response_ids=response_ids,
        response_mask=response_mask,
        logprobs=logprobs,
        finished=(response_ids == int(eos_token_id)).logical_and(response_mask.bool()).any(dim=1),
    )


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
) -> Tensor:
    """Run the prompts through ``model`` into ``cache``; return the last position's logits ``[B, V]``.

    Two savings over one full-width forward, both exact up to float rounding:

    * identical prompts (GRPO/RLOO groups, best-of-n) are prefilled once and their keys/values
      copied to every row that repeats them;
    * prompts of very different lengths are prefilled in length buckets, each cut to its own
      width, so short prompts do not pay for the long ones' padding.

    The pieces' keys/values are then written into ``cache`` at their left-padded slots (RoPE
    positions do not depend on padding, so this is the cache a single full-width prefill gives).
    """
    extra = {"logits_to_keep": 1} if _accepts_logits_to_keep(type(model)) else {}
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
            out = model(
                input_ids=prompt_ids[rows, cols],
                attention_mask=prompt_mask[rows, cols],
                position_ids=prompt_pos[rows, cols],
                past_key_values=sub,
                use_cache=True,
                **extra,
            )
            if not all(type(layer) is DynamicLayer and layer.keys is not None for layer in sub.layers):
                break  # not a plain full-attention KV cache: fall back to one full-width prefill
            parts.append((members, cols, sub, out.logits[:, -1, :]))
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
            return logits if inverse is None else logits[inverse]
    out = model(
        input_ids=prompt_ids,
        attention_mask=prompt_mask,
        position_ids=prompt_pos,
        past_key_values=cache,
        use_cache=True,
        **extra,
    )
    return out.logits[:, -1, :]


def _generate(
    model: torch.nn.Module,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    *,
    max_new_tokens: int,
    eos_token_id: int,
    pad_token_id: int,
    temperature: float,
    top_k: int,
    top_p: float,
    greedy: bool,
    generator: torch.Generator | None,
    cache_implementation: CacheImplementation,
) -> tuple[Tensor, Tensor]:
    """The decoding loop (under inference mode); returns ``(response_ids, logprobs)`` of ``[B, steps]``."""
    device = prompt_ids.device
    batch, prompt_len = prompt_ids.shape
    total_len = prompt_len + max_new_tokens
    config: Any = model.config  # type: ignore[union-attr]
    cache: StaticCache | DynamicCache
    decoder = _FastDecoder.build(model, batch, total_len, exact=greedy)
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
    logits = _prefill(model, cache, prompt_ids, prompt_mask, prompt_pos)
    if decoder is not None:
        decoder.load_prompt_cache(cache, prompt_len)  # type: ignore[arg-type]
    compacted = False
    steps = 0
    for t in range(max_new_tokens):
        tokens, logp = _choose(logits, **choose)
        tokens = tokens.masked_fill(done, pad_token_id)
        if compacted:
            response_ids[rows, t] = tokens
            logprobs[rows, t] = logp
        else:
            response_ids[:, t] = tokens
            logprobs[:, t] = logp
        done = done | (tokens == eos_token_id)
        steps = t + 1
        if t + 1 == max_new_tokens:
            break
        n_done = int(done.sum())
        size = int(done.shape[0])
        if n_done == size:
            break
        if n_done >= max(_COMPACT_MIN, _COMPACT_FRACTION * size):
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
            continue
        out = model(
            input_ids=tokens[:, None],
            attention_mask=step_mask,
            position_ids=(next_pos + t)[:, None],
            past_key_values=cache,
            use_cache=True,
        )
        logits = out.logits[:, -1, :]
    return response_ids[:, :steps], logprobs[:, :steps]
