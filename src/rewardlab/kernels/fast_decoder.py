"""A CPU kernel: the decode-only forward of Llama-family models that :func:`rewardlab.policies.sampling.sample`
uses on CPU (bitwise the eager forward's logits, tested), with optional fused projections and oneDNN-packed
matmuls. Kernel choices live here and in :mod:`rewardlab.kernels.cpu_linear`, not in algorithm code."""

from __future__ import annotations

import functools
import logging
import os
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from transformers import DynamicCache

from rewardlab.kernels import skinny

# FastDecoder: one matmul for q/k/v and one for gate/up (weights concatenated once per call).
# With MKL it is no faster on CPU (11M params, batch 8: 880 vs 790 ms per 48 tokens), so it is
# forced only by this flag; with oneDNN (below) groups big enough to be packed are fused.
FUSE_PROJECTIONS = False
# FastDecoder when sampling (not greedy): fp32 matmuls through oneDNN with weights prepacked once
# per call, ~1.6x faster than the default MKL GEMM at RL batch sizes on CPU (11M params, batch 8:
# 481 vs 787 ms per 48 tokens). Results differ from MKL's in the last bits (~1e-6 relative), so
# greedy decoding keeps the exact MKL path (its outputs equal model.generate's).
ONEDNN_SAMPLING = True
# ... for weight matrices of at least this many entries: below it oneDNN's per-call overhead wins
# (1M params: packing every matrix made a 48-token call 1.25x slower; packing only the LM head helps).
ONEDNN_MIN_WEIGHT = 262_144
# FastDecoder when sampling (not greedy), opt-in (``REWARDLAB_COMPILE_DECODE=1``): the per-token step
# through ``torch.compile`` (inductor with its C++ wrapper, CPU; needs a C++ compiler at run time), so
# each layer's ~15 small ops become its GEMMs (MKL) plus a few fused C++ loops. Only for models whose
# matrices are all too small for oneDNN packing (above; inductor cannot take packed weights, and where
# they pay, ~11M params, the compiled step is no faster): ~1M params yes, ~11M no. Shapes are static:
# the KV cache is rounded up to COMPILE_LEN_MULTIPLE slots (the extra ones masked), so there is one
# compile per (model shape, batch, rounded total_len) in a process and none per step or per call:
# ~10-20 s cold, ~4 s from inductor's on-disk cache. Past ``torch._dynamo.config.recompile_limit``
# (8) shapes a new one decodes eagerly (logged). Finished rows stay in the batch (a smaller batch would
# be a new shape). Logits differ from the eager step's in the last bits (~3e-6), so greedy decoding
# keeps the exact eager path. ~1M params, 1 thread: sampling ~1.2x faster than with the eager step at
# batch 8, ~1.1x at batch 64 (``benchmarks/bench_sampler.py --compiled``).
COMPILE_DECODE = os.environ.get("REWARDLAB_COMPILE_DECODE", "0") == "1"
# (Slots cost: at ~1M, batch 8, 68 -> 80 slots ~4% slower than 68, 68 -> 128 ~10%, at batch 64 ~20%.)
COMPILE_LEN_MULTIPLE = 16
# FastDecoder when sampling (not greedy) with neither packed nor compiled matmuls (~1M params): a leaner step
# (:func:`_lean_step`) with half the ops of the eager replay and faster GEMMs, same arithmetic up to rounding
# (logits within ~5e-7 of the eager step's). At batch 8 MKL multiplies by a weight stored [in, out] about 2x faster
# than by transformers' [out, in] (``F.linear``): 25 vs 52 us for the ~1M LM head. The step keeps those copies; the
# RMSNorm weights are folded into the matrices after them; q/k/v and gate/up are one matmul each, o and down add
# the residual in the same call (``addmm``); RoPE is one flip and one ``addcmul`` for q and k together; the cache is
# written through views; attention is one SDPA call over the slots written so far. ~1M, batch 8, one thread:
# ~0.8 ms a step against ~1.15 ms.
LEAN_SAMPLING = True
# The lean step with every matrix product through rewardlab's skinny GEMM (:mod:`rewardlab.kernels.skinny`: the
# matrices packed into column panels once per call, read front to back feeding every row's accumulator) wherever
# that kernel compiled here and the model is big enough for packing to pay (ONEDNN_MIN_WEIGHT): there it replaces
# oneDNN packing. ~11M, batch 8, 48 tokens, on this project's Intel Xeon: 202 vs 313 ms a call at one thread,
# 126 vs 215 at two (with FUSED_ATTENTION; ~1M: 40 vs 38 ms before the GEMM's epilogues, so ~1M keeps MKL).
SKINNY_SAMPLING = True
# The lean step's RoPE, cache write and attention as one C call per layer (:func:`rewardlab.kernels.skinny.
# decode_attention`) instead of SDPA and four small ops, wherever the skinny kernels compiled, at every model size:
# ~1M, batch 8, 48 tokens: 34.0 -> 31.2 ms a call at one thread, 30.1 -> 28.6 at two; ~11M ~1%.
FUSED_ATTENTION = True
_log = logging.getLogger(__name__)


class FastDecoder:
    """Decode-only forward of a Llama-family causal LM (Llama, Qwen2), one new token per row, on CPU.

    At RL batch sizes a tiny model's decoding step is mostly Python: transformers' forward runs
    ~15 module calls, mask and cache bookkeeping per layer, which costs more than the arithmetic at
    ~1M params. This class replays the *same operations in the same order* as the eager forward
    (RMSNorm in float32, RoPE from the model's own rotary table, ``q k^T * scaling + mask``, float32
    softmax, SwiGLU MLP, final norm, LM head) on the model's own weights, with a preallocated
    ``[B, kv_heads, total_len, head_dim]`` KV cache per layer written with ``index_copy_`` like
    ``StaticCache``, so its logits are bitwise those of the eager forward (tested), and greedy
    outputs those of ``model.generate``. With ``FUSE_PROJECTIONS`` q/k/v (and gate/up) are one
    matmul against concatenated weights, which still gives the same bits on CPU (tested). With
    ``COMPILE_DECODE`` (opt-in) a sampling (not greedy) step of a small model runs through
    ``torch.compile`` instead: close to, not bitwise, the eager logits.

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
        self.scaling = float(attn0.scaling)
        self.embed = inner.embed_tokens.weight
        self.final_norm = (inner.norm.weight, float(inner.norm.variance_epsilon))
        head: Any = model.get_output_embeddings()  # type: ignore[operator]
        big = _largest_matmul(inner, head) >= ONEDNN_MIN_WEIGHT  # where packing a matrix pays
        lean = not exact and LEAN_SAMPLING and not COMPILE_DECODE and _lean_applies(inner, head)
        skinny_gemm = (
            lean and big and SKINNY_SAMPLING and self.embed.dtype == torch.float32 and skinny.available()
        )
        onednn = not exact and ONEDNN_SAMPLING and not skinny_gemm and _onednn_available(self.embed)
        # Inductor cannot take oneDNN-packed weights, and where they pay (~11M params) the compiled step
        # on MKL GEMMs is no faster than the eager one on packed ones: compile only where none would be.
        packs = onednn and big
        self.compiled = not exact and COMPILE_DECODE and not packs
        self.pack = onednn and not self.compiled
        self.lean: dict[str, Any] | None = None  # the lean step's weights (LEAN_SAMPLING), built below
        if self.compiled:  # a cache length shared by nearby prompt lengths: fewer compiles
            total_len = -(-total_len // COMPILE_LEN_MULTIPLE) * COMPILE_LEN_MULTIPLE
        self.cache_len = total_len
        self.batch = batch
        self.lm_head = self._weights(head.weight, head.bias)
        param = self.embed
        self.hidden = param.new_empty((0, param.shape[1]))  # the last step's final hidden state, [b, D]
        # a compiled step's mask: the caller's copied in, its slots past the caller's total_len masked
        self.mask = param.new_full(
            (batch, 1, 1, total_len if self.compiled else 0), torch.finfo(param.dtype).min
        )
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
                "act": _activation(m.act_fn),
            }
            for group, names, mods in (
                ("qkv", ("q", "k", "v"), (a.q_proj, a.k_proj, a.v_proj)),
                ("gate_up", ("gate", "up"), (m.gate_proj, m.up_proj)),
            ):
                size = sum(mod.weight.numel() for mod in mods)
                if FUSE_PROJECTIONS or (self.pack and size >= ONEDNN_MIN_WEIGHT):
                    w[group] = self._weights(*_concat_linear(list(mods)))
                else:
                    w.update({n: self._weights(mod.weight, mod.bias) for n, mod in zip(names, mods)})
            self.layers.append(w)
            shape = (batch, self.kv_heads, total_len, self.head_dim)
            self.keys.append(param.new_zeros(shape))
            self.values.append(param.new_zeros(shape))
        if lean and (skinny_gemm or not packs):
            self.lean = _lean_net(inner, head, self.cos, self.sin, skinny_gemm)

    def _weights(self, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor | None, bool]:
        """``(weight, bias, packed)``: the weight as is, or prepacked for oneDNN when sampling."""
        if self.pack and weight.numel() >= ONEDNN_MIN_WEIGHT:
            return torch.ops.mkldnn._reorder_linear_weight(weight, self.batch), bias, True
        return weight, bias, False

    @classmethod
    def build(
        cls, model: torch.nn.Module, batch: int, total_len: int, exact: bool = True
    ) -> FastDecoder | None:
        """A decoder for ``model``, or ``None`` when the model is not one this class replays exactly
        (:meth:`unsupported` says why).

        ``exact=False`` (sampling) lets fp32 matmuls run through oneDNN (see ``ONEDNN_SAMPLING``).
        """
        if cls.unsupported(model) is not None:
            return None
        return cls(model, batch, total_len, exact)

    @classmethod
    def unsupported(cls, model: torch.nn.Module) -> str | None:
        """Why this class cannot replay ``model`` exactly (``None``: it can): it needs a plain
        ``LlamaForCausalLM``/``Qwen2ForCausalLM`` on CPU, default RoPE, full attention in every layer,
        RMSNorms, ``nn.Linear`` projections (no adapters) and no module hooks."""
        name = type(model).__name__
        if name not in cls._ARCHS:
            return f"{name} is not a Llama/Qwen2 decoder"
        config: Any = getattr(model, "config", None)
        inner: Any = getattr(model, "model", None)
        param = next(model.parameters(), None)
        if config is None or inner is None or param is None:
            return f"{name} has no config, decoder or parameters"
        if param.device.type != "cpu":
            return f"the model is on {param.device.type} (the fast decoder is a CPU kernel)"
        if set(getattr(config, "layer_types", None) or ["full_attention"]) != {"full_attention"}:
            return "sliding-window layers"
        rotary = getattr(inner, "rotary_emb", None)
        if getattr(rotary, "rope_type", None) != "default" or getattr(config, "pretraining_tp", 1) != 1:
            return f"RoPE scaling {getattr(rotary, 'rope_type', None)!r} or tensor-parallel projections"
        if torch.nn.modules.module._global_forward_hooks or torch.nn.modules.module._global_forward_pre_hooks:
            return "global module hooks"
        if any(_observed(mod) for mod in model.modules()):
            return "module hooks (someone observes or edits intermediate outputs)"
        linears = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
        for layer in inner.layers:
            subs = [getattr(layer.self_attn, n, None) for n in linears[:4]]
            subs += [getattr(layer.mlp, n, None) for n in linears[4:]]
            if any(type(x) is not torch.nn.Linear for x in subs):
                return "adapter (e.g. LoRA) or quantized projections"
            norms = (layer.input_layernorm, layer.post_attention_layernorm)
            if any(not type(n).__name__.endswith("RMSNorm") for n in norms):
                return "norms other than RMSNorm"
        if type(model.get_output_embeddings()) is not torch.nn.Linear:  # type: ignore[operator]
            return "an LM head other than nn.Linear"
        return None

    def load_prompt_cache(self, cache: DynamicCache, prompt_len: int) -> None:
        """Copy the prefilled prompt keys/values (``[B, kv_heads, prompt_len, head_dim]``) into slots 0.."""
        for i, layer in enumerate(cache.layers):
            self.keys[i][:, :, :prompt_len] = layer.keys  # type: ignore[union-attr]
            self.values[i][:, :, :prompt_len] = layer.values  # type: ignore[union-attr]

    def prefill(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor,
                cache: DynamicCache) -> tuple[Tensor, Tensor] | None:  # fmt: skip
        """With the lean step (:attr:`lean`), run left-padded prompt rows through the same weights: their keys and
        values go into ``cache`` (one ``update`` per layer, as transformers' forward does) and the last position's
        logits ``[n, V]`` and final hidden state ``[n, D]`` are returned; ``None`` without the lean step (the
        caller runs the model's forward)."""
        if self.lean is None:
            return None
        logits, hidden, kvs = _lean_prefill(self.lean, input_ids, attention_mask, position_ids)
        for i, (k, v) in enumerate(kvs):
            cache.update(k, v, i)
        return logits, hidden

    def reorder(self, keep: Tensor) -> None:
        """Keep only the rows ``keep`` of the cache (finished rows leave the compute batch)."""
        self.keys = [k.index_select(0, keep) for k in self.keys]
        self.values = [v.index_select(0, keep) for v in self.values]

    @property
    def compacts(self) -> bool:
        """Whether finished rows may leave the batch (:meth:`reorder`): not when the step is compiled
        for one batch size."""
        return not self.compiled

    def net(self) -> dict[str, Any]:
        """The weights, the KV cache and the shape numbers :func:`_decode_step` reads."""
        return {"embed": self.embed, "cos": self.cos, "sin": self.sin, "layers": self.layers, "keys": self.keys,
                "values": self.values, "final_norm": self.final_norm, "lm_head": self.lm_head, "heads": self.heads,
                "kv_heads": self.kv_heads, "head_dim": self.head_dim, "scaling": self.scaling}  # fmt: skip

    def step(self, tokens: Tensor, positions: Tensor, mask: Tensor, slot: int) -> Tensor:
        """Logits ``[b, V]`` for one token per row at ``positions`` ``[b]``, written to cache ``slot``; the final
        (normed) hidden state ``[b, D]`` they came from, the LM head's input, is left in :attr:`hidden`.

        ``mask`` is the additive ``[b, 1, 1, total_len]`` attention mask (0 = attend); a compiled step
        masks the cache slots past ``total_len`` too.
        """
        if self.lean is not None:
            logits, self.hidden = _lean_step(tokens, positions, mask, slot, self.keys, self.values, self.lean)
            return logits
        slot_idx = torch.tensor([slot], device=tokens.device)
        if mask.shape[-1] < self.cache_len and mask.shape[0] == self.mask.shape[0]:
            self.mask[..., : mask.shape[-1]].copy_(mask)  # one copy, no new tensor
            mask = self.mask
        elif mask.shape[-1] < self.cache_len:  # rows compacted after an eager fallback
            masked = torch.finfo(mask.dtype).min
            mask = torch.nn.functional.pad(mask, (0, self.cache_len - mask.shape[-1]), value=masked)
        args = (tokens, positions, mask, slot_idx, self.net())
        if self.compiled:
            try:
                logits, self.hidden = _compiled_step()(*args)
                return logits
            except torch._dynamo.exc.FailOnRecompileLimitHit:  # raised before the step ran
                _log.warning("compiled decode step: recompile limit hit; this call decodes eagerly")
                self.compiled = False
        logits, self.hidden = _decode_step(*args)
        return logits


def _decode_step(
    tokens: Tensor, positions: Tensor, mask: Tensor, slot_idx: Tensor, net: dict[str, Any]
) -> tuple[Tensor, Tensor]:
    """:meth:`FastDecoder.step` on plain arguments (tensors; ``net``: a dict of tensors, lists of them and
    Python numbers, see :meth:`FastDecoder.net`), so that ``torch.compile`` guards on shapes and values
    only, not on one decoder's identity. Returns the logits ``[b, V]`` and the final hidden state ``[b, D]``."""
    heads, kv_heads, head_dim, scaling = net["heads"], net["kv_heads"], net["head_dim"], net["scaling"]
    layers, keys, values = net["layers"], net["keys"], net["values"]
    b = tokens.shape[0]
    groups = heads // kv_heads
    h = torch.nn.functional.embedding(tokens[:, None], net["embed"])  # [b, 1, D]
    cos = net["cos"][positions][:, None, None]  # [b, 1, 1, head_dim], as apply_rotary_pos_emb
    sin = net["sin"][positions][:, None, None]
    nq, nkv = heads * head_dim, kv_heads * head_dim
    for i, w in enumerate(layers):
        residual = h
        x = _rms_norm(h, *w["norm1"])
        if "qkv" in w:  # q and k rotated together: the same elementwise ops, half the calls
            qkv = _linear(x, w["qkv"])
            qk = qkv[..., : nq + nkv].reshape(b, 1, heads + kv_heads, head_dim)
            qk = qk.transpose(1, 2)
            qk = (qk * cos) + (_rotate_half(qk) * sin)
            q, k = qk[:, :heads], qk[:, heads:]
            v = qkv[..., nq + nkv :].reshape(b, 1, kv_heads, head_dim).transpose(1, 2)
        else:
            q, k, v = _linear(x, w["q"]), _linear(x, w["k"]), _linear(x, w["v"])
            q = q.reshape(b, 1, heads, head_dim).transpose(1, 2)
            k = k.reshape(b, 1, kv_heads, head_dim).transpose(1, 2)
            v = v.reshape(b, 1, kv_heads, head_dim).transpose(1, 2)
            q = (q * cos) + (_rotate_half(q) * sin)
            k = (k * cos) + (_rotate_half(k) * sin)
        keys[i].index_copy_(2, slot_idx, k)
        values[i].index_copy_(2, slot_idx, v)
        key_states, value_states = _repeat_kv(keys[i], groups), _repeat_kv(values[i], groups)
        scores = torch.matmul(q, key_states.transpose(2, 3)) * scaling + mask
        probs = torch.nn.functional.softmax(scores, dim=-1, dtype=torch.float32)
        if probs.dtype != q.dtype:
            probs = probs.to(q.dtype)
        out = torch.matmul(probs, value_states).transpose(1, 2).contiguous().reshape(b, 1, -1)
        h = residual + _linear(out, w["o"])
        residual = h
        x = _rms_norm(h, *w["norm2"])
        if "gate_up" in w:
            gate, up = _linear(x, w["gate_up"]).chunk(2, dim=-1)
        else:
            gate, up = _linear(x, w["gate"]), _linear(x, w["up"])
        h = residual + _linear(w["act"](gate) * up, w["down"])
    h = _rms_norm(h, *net["final_norm"])[:, -1]
    return _linear(h, net["lm_head"]), h


def _lean_applies(inner: Any, head: torch.nn.Linear) -> bool:
    """The lean step's assumptions: SiLU MLPs, no biases but on q/k/v (Qwen2's), an even head size."""
    if head.bias is not None or int(inner.layers[0].self_attn.head_dim) % 2:
        return False
    for layer in inner.layers:
        a, m = layer.self_attn, layer.mlp
        if any(x.bias is not None for x in (a.o_proj, m.gate_proj, m.up_proj, m.down_proj)):
            return False
        if _activation(m.act_fn) is not torch.nn.functional.silu:
            return False
    return True


def _lean_net(
    inner: Any, head: torch.nn.Linear, cos: Tensor, sin: Tensor, skinny_gemm: bool
) -> dict[str, Any]:
    """:func:`_lean_weights` plus this decoder's RoPE tables (``rotate_half``'s signs folded into the sine).

    Built anew for every call: a cache keyed on the weights' version counters would miss fused AdamW's updates
    (``torch._fused_adamw_`` leaves ``Tensor._version`` unchanged)."""
    weights = _lean_weights(inner, head, skinny_gemm)
    half = weights["head_dim"] // 2
    signs = torch.cat([-torch.ones(half), torch.ones(half)]).to(sin)
    fused = FUSED_ATTENTION and cos.dtype == torch.float32 and skinny.available()
    return {**weights, "cos": cos, "sin": sin * signs, "fused_attention": fused}


def _lean_weights(inner: Any, head: torch.nn.Linear, skinny_gemm: bool = False) -> dict[str, Any]:
    """The matrices :func:`_lean_step` reads: [in, out] with each RMSNorm's weight folded into the matrix after it
    (``norm(x) W^T = (x * rsqrt(...)) (W diag(w))^T``), q/k/v and gate/up concatenated, and the shape numbers. Each
    matrix is a contiguous tensor, or with ``skinny_gemm`` the skinny GEMM's :class:`~rewardlab.kernels.skinny.Panels`
    (:func:`_lean_mm` multiplies by either)."""
    attn0 = inner.layers[0].self_attn
    head_dim = int(attn0.head_dim)
    buffers = _LEAN_BUFFERS.setdefault(inner, {})
    _in_out = _in_out_panels if skinny_gemm else _in_out_tensor
    layers = []
    for i, layer in enumerate(inner.layers):
        a, m = layer.self_attn, layer.mlp
        n1, n2 = layer.input_layernorm, layer.post_attention_layernorm
        projections = (a.q_proj, a.k_proj, a.v_proj)
        bias = None
        if any(x.bias is not None for x in projections):
            bias = torch.cat(
                [x.bias if x.bias is not None else x.weight.new_zeros(x.out_features) for x in projections]
            )
        layers.append({
            "eps1": float(n1.variance_epsilon), "eps2": float(n2.variance_epsilon),
            "qkv": _in_out(buffers, f"{i}.qkv", [x.weight for x in projections], n1.weight), "qkv_bias": bias,
            "o": _in_out(buffers, f"{i}.o", [a.o_proj.weight]),
            "gate_up": _in_out(buffers, f"{i}.gate_up", [m.gate_proj.weight, m.up_proj.weight], n2.weight, glu=True),
            "down": _in_out(buffers, f"{i}.down", [m.down_proj.weight]),
        })  # fmt: skip
    config: Any = inner.config
    return {
        "layers": layers, "embed": inner.embed_tokens.weight,
        "final_norm": (inner.norm.weight, float(inner.norm.variance_epsilon)),
        "lm_head": _in_out(buffers, "lm_head", [head.weight]), "heads": int(config.num_attention_heads),
        "kv_heads": int(config.num_key_value_heads), "head_dim": head_dim, "scaling": float(attn0.scaling),
    }  # fmt: skip


# Per model, the lean step's [in, out] matrices of its last call, refilled (``copy_``) by the next one: the values
# are always recomputed, the memory is reused (a fresh ~3 MB allocation per call page-faults: 0.57 ms to transpose
# the ~1M LM head into new memory, 0.19 ms into an old buffer). Weak keys: the buffers go with the model.
_LEAN_BUFFERS: weakref.WeakKeyDictionary[torch.nn.Module, dict[str, Any]] = weakref.WeakKeyDictionary()


def _in_out_tensor(
    buffers: dict[str, Any], name: str, weights: list[Tensor], norm: Tensor | None = None, glu: bool = False
) -> Tensor:
    """``[W1; W2; ...]`` (transformers' ``[out, in]`` matrices stacked) as one contiguous ``[in, out]`` matrix, its rows
    scaled by ``norm`` (the weight of the RMSNorm before it) if given, written into ``buffers[name]`` (reused when its
    shape and dtype still fit). ``glu`` (gate and up) changes nothing here: the columns are ``[gate | up]``."""
    rows, cols = weights[0].shape[1], sum(w.shape[0] for w in weights)
    out = buffers.get(name)
    if (
        out is None
        or out.shape != (rows, cols)
        or out.dtype != weights[0].dtype
        or out.device != weights[0].device
    ):
        out = buffers[name] = weights[0].new_empty((rows, cols))
    start = 0
    for w in weights:
        out[:, start : start + w.shape[0]].copy_(w.detach().t())
        start += w.shape[0]
    return out if norm is None else out.mul_(norm.detach()[:, None])


def _in_out_panels(
    buffers: dict[str, Any], name: str, weights: list[Tensor], norm: Tensor | None = None, glu: bool = False
) -> skinny.Panels:
    """:func:`_in_out_tensor`'s matrix packed for the skinny GEMM, written straight from the ``[out, in]`` weights
    into ``buffers["panels." + name]`` (reused when its shape still fits: the padding columns stay zero); with
    ``glu`` the two weights (gate, up) as a GLU matrix, whose product is SwiGLU's ``silu(gate) * up``."""
    rows = weights[0].shape[1]
    cols = weights[0].shape[0] if glu else sum(w.shape[0] for w in weights)
    out = buffers.get("panels." + name)
    if out is None or out.shape != (rows, cols) or out.glu != glu:
        out = buffers["panels." + name] = skinny.empty_panels(rows, cols, glu=glu)
    if glu:
        for w, part in zip(weights, ("gate", "up"), strict=True):
            skinny.pack_into(out, w, 0, transposed=True, scale=norm, part=part)
        return out
    start = 0
    for w in weights:
        skinny.pack_into(out, w, start, transposed=True, scale=norm)
        start += w.shape[0]
    return out


def _lean_mm(
    x: Tensor, w: Tensor | skinny.Panels, add: Tensor | None = None, rms_eps: float | None = None
) -> Tensor:
    """``add + rms_scale(x) @ w`` for the lean step's ``[N, in]`` rows and ``[in, out]`` matrix (a tensor: MKL;
    panels: the skinny GEMM, which applies the RMS scale to the product), without the scale when ``rms_eps`` is
    ``None``; ``add`` is ``[N, out]`` or a bias ``[out]``."""
    if isinstance(w, skinny.Panels):
        return skinny.matmul(x, w, None if add is None else add.expand(x.shape[0], w.n), rms_eps)
    if rms_eps is not None:
        x = _rms_scale(x, rms_eps)
    return torch.mm(x, w) if add is None else torch.addmm(add, x, w)


def _rms_scale(x: Tensor, eps: float) -> Tensor:
    """``x / sqrt(mean(x^2) + eps)``: RMSNorm without its weight (folded into the next matrix)."""
    return torch.nn.functional.rms_norm(x, (x.shape[-1],), None, eps)


def _lean_qkv(x: Tensor, w: dict[str, Any]) -> Tensor:
    """``[N, D] -> [N, q + k + v]``: the normed rows times the lean q/k/v matrix (plus Qwen2's biases)."""
    return _lean_mm(x, w["qkv"], w["qkv_bias"], w["eps1"])


def _lean_mlp(h: Tensor, w: dict[str, Any]) -> Tensor:
    """``h + down(silu(gate) * up)`` of the normed rows ``h`` [N, D], the residual added inside ``addmm``."""
    if isinstance(w["gate_up"], skinny.Panels):  # a GLU matrix: SwiGLU inside the product
        act = skinny.matmul(h, w["gate_up"], rms_eps=w["eps2"])
    else:
        gate, up = _lean_mm(h, w["gate_up"], rms_eps=w["eps2"]).chunk(2, dim=-1)
        act = torch.nn.functional.silu(gate) * up
    return _lean_mm(act, w["down"], h)


def _lean_step(tokens: Tensor, positions: Tensor, mask: Tensor, slot: int, keys: list[Tensor],
               values: list[Tensor], net: dict[str, Any]) -> tuple[Tensor, Tensor]:  # fmt: skip
    """One decoding step of :class:`FastDecoder` with the lean weights ``net`` (:func:`_lean_weights`): the logits
    ``[b, V]`` and the final (normed) hidden state ``[b, D]``. The same arithmetic as :func:`_decode_step` up to
    rounding; attention reads the slots ``0..slot`` only (the later ones are masked there)."""
    heads, kv_heads, head_dim = net["heads"], net["kv_heads"], net["head_dim"]
    b, half, n = tokens.shape[0], head_dim // 2, heads + kv_heads
    nqk = n * head_dim
    h = torch.nn.functional.embedding(tokens, net["embed"])  # [b, D]
    cos, sin = net["cos"][positions], net["sin"][positions]  # [b, head_dim]
    fused = net["fused_attention"]
    step_mask = mask.reshape(b, mask.shape[-1]) if fused else mask[..., : slot + 1]
    for i, w in enumerate(net["layers"]):
        qkv = _lean_qkv(h, w)
        if fused:  # RoPE, cache write and attention in one C call
            out = skinny.decode_attention(
                qkv, cos, sin, keys[i], values[i], slot, step_mask, heads, net["scaling"]
            )
        else:
            qk = qkv[:, :nqk].view(b, n, 2, half)  # rotate_half(v) * sin == (v's halves swapped) * signed sin
            qk = torch.addcmul(
                qk.view(b, n, head_dim) * cos[:, None], qk.flip(2).view(b, n, head_dim), sin[:, None]
            )
            keys[i].select(2, slot).copy_(qk[:, heads:])
            values[i].select(2, slot).copy_(qkv[:, nqk:].view(b, kv_heads, head_dim))
            out = torch.nn.functional.scaled_dot_product_attention(
                qk[:, :heads, None], keys[i][:, :, : slot + 1], values[i][:, :, : slot + 1], attn_mask=step_mask,
                scale=net["scaling"], enable_gqa=heads != kv_heads,
            ).view(b, -1)  # fmt: skip
        h = _lean_mlp(_lean_mm(out, w["o"], h), w)
    weight, eps = net["final_norm"]
    h = weight * _rms_scale(h, eps)
    return _lean_mm(h, net["lm_head"]), h


def _lean_prefill(net: dict[str, Any], input_ids: Tensor, attention_mask: Tensor,
                  position_ids: Tensor) -> tuple[Tensor, Tensor, list[tuple[Tensor, Tensor]]]:  # fmt: skip
    """Left-padded prompts ``[n, P]`` through the lean weights (:func:`_lean_step`'s arithmetic over P positions):
    the last position's logits ``[n, V]`` and final hidden state ``[n, D]``, and each layer's keys (rotated) and
    values ``[n, kv_heads, P, head_dim]``. A position attends to the real positions up to itself (a padding
    position to itself too, so that no softmax row is empty; padding is never attended to by a real token)."""
    heads, kv_heads, head_dim = net["heads"], net["kv_heads"], net["head_dim"]
    (b, width), half, n = input_ids.shape, head_dim // 2, heads + kv_heads
    nqk = n * head_dim
    h = torch.nn.functional.embedding(input_ids, net["embed"])  # [b, P, D]
    cos, sin = net["cos"][position_ids][:, None], net["sin"][position_ids][:, None]  # [b, 1, P, head_dim]
    causal = torch.ones(width, width, dtype=torch.bool, device=h.device).tril()
    allowed = (causal & attention_mask.bool()[:, None, :]) | torch.eye(
        width, dtype=torch.bool, device=h.device
    )
    allowed = allowed[:, None]  # [b, 1, P, P]
    kvs = []
    for w in net["layers"]:
        qkv = _lean_qkv(h.view(b * width, -1), w)
        qk = qkv[:, :nqk].reshape(b, width, n, 2, half).transpose(1, 2)  # [b, n, P, 2, half]
        qk = torch.addcmul(
            qk.reshape(b, n, width, head_dim) * cos, qk.flip(3).reshape(b, n, width, head_dim), sin
        )
        k = qk[:, heads:]
        v = qkv[:, nqk:].reshape(b, width, kv_heads, head_dim).transpose(1, 2)
        out = torch.nn.functional.scaled_dot_product_attention(
            qk[:, :heads], k, v, attn_mask=allowed, scale=net["scaling"], enable_gqa=heads != kv_heads
        )
        h = _lean_mm(out.transpose(1, 2).reshape(b * width, -1), w["o"], h.view(b * width, -1))
        h = _lean_mlp(h, w).view(b, width, -1)
        kvs.append((k.contiguous(), v.contiguous()))
    weight, eps = net["final_norm"]
    last = weight * _rms_scale(h[:, -1], eps)
    return _lean_mm(last, net["lm_head"]), last, kvs


_COMPILED: list[Callable[..., tuple[Tensor, Tensor]]] = []


def _compiled_step() -> Callable[..., tuple[Tensor, Tensor]]:
    """``torch.compile(_decode_step)``, made once per process (dynamo caches its graphs per shape)."""
    if not _COMPILED:
        options = {"cpp_wrapper": True}  # the graph's kernel calls from C++: less Python per step
        _COMPILED.append(torch.compile(_decode_step, dynamic=False, fullgraph=True, options=options))
    return _COMPILED[0]


def _activation(act: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """``F.silu`` for transformers' SiLU activation module (the same op; a plain function, so a compiled
    step does not guard on one model's module object), else ``act`` as is."""
    if type(act).__name__ in ("SiLUActivation", "SiLU") and not getattr(act, "inplace", False):
        return torch.nn.functional.silu
    return act


def _largest_matmul(inner: Any, head: torch.nn.Linear) -> int:
    """Entries of the largest weight matrix the sampling step multiplies by (q/k/v and gate/up fused)."""
    sizes = [head.weight.numel()]
    for layer in inner.layers:
        a, m = layer.self_attn, layer.mlp
        sizes.append(sum(x.weight.numel() for x in (a.q_proj, a.k_proj, a.v_proj)))
        sizes.append(sum(x.weight.numel() for x in (m.gate_proj, m.up_proj)))
        sizes += [a.o_proj.weight.numel(), m.down_proj.weight.numel()]
    return max(sizes)


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
    return _onednn_linear_works()


@functools.cache
def _onednn_linear_works() -> bool:
    """The probe behind :func:`_onednn_available`, once per process (it costs ~0.7 ms, a tenth of a ~1M sample)."""
    try:
        w = torch.ones((2, 3))
        packed = torch.ops.mkldnn._reorder_linear_weight(w, 1)
        y = torch.ops.mkldnn._linear_pointwise(torch.ones((1, 3)), packed, None, "none", [], "")
    except (AttributeError, RuntimeError):  # pragma: no cover - a torch build without these ops
        return False
    return bool(torch.equal(y, torch.full((1, 2), 3.0)))


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
