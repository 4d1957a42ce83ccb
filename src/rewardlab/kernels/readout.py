"""A causal decoder's final hidden states at a few read positions per row, with its last layer run at those
positions only.

A reward model (or anything read at a few tokens, like a sequence classifier at its last non-pad token) needs the
last layer's output at the read positions alone. Every layer below must run everywhere, because the read
positions attend to all earlier ones; but in the *last* layer only the keys and values are needed at every
position: its queries, attention output, output projection, MLP and final norm matter only where something
reads them. :func:`hidden_at` runs the decoder's own forward up to the last layer (embeddings, mask, rotary
table, the lower layers: transformers' code, whatever its version), stops there, and runs the last layer itself:
the input norm, keys and values at every position, and everything else at the read positions only. For a
2-layer model at d = 128 with an MLP of 4d, that is 44% fewer GEMM FLOPs per step and about half the
elementwise work; for L layers about ``(1 - 1/8) / L`` of the GEMMs.

Outputs equal the full forward's at the read positions up to float rounding (tests compare both, forward and
gradients, for Llama, Qwen2 and Qwen3, padded and packed rows). Where the model is not such a decoder (another
architecture, attention dropout in training, an attention implementation other than eager/sdpa, sliding
windows), :func:`hidden_at` runs the full forward and gathers: same result, no saving.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rewardlab.kernels.fast_decoder import _rotate_half

#: Decoders whose layers are ``input_layernorm -> self_attn(q/k/v/o, RoPE) -> + -> post_attention_layernorm -> mlp
#: -> +`` with a final ``norm`` (Qwen3 adds per-head ``q_norm``/``k_norm``): the ones the last layer is replayed for.
READOUT_MODEL_TYPES = frozenset({"llama", "qwen2", "qwen3", "mistral"})


class _LastLayerReached(Exception):
    """Raised by the pre-hook on the last layer once its inputs are captured: the rest of the forward is skipped."""


def unsupported(decoder: nn.Module) -> str | None:
    """Why :func:`hidden_at` would run ``decoder``'s full forward (``None``: it replays the last layer)."""
    config: Any = getattr(decoder, "config", None)
    if getattr(config, "model_type", None) not in READOUT_MODEL_TYPES:
        return (
            f"model type {getattr(config, 'model_type', None)!r} is not one of {sorted(READOUT_MODEL_TYPES)}"
        )
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0 or getattr(decoder, "norm", None) is None:
        return "no decoder layers or final norm"
    if getattr(config, "_attn_implementation", None) not in ("sdpa", "eager"):
        return f"attention implementation {getattr(config, '_attn_implementation', None)!r}"
    if set(getattr(config, "layer_types", None) or ["full_attention"]) != {"full_attention"}:
        return "sliding-window layers"
    if getattr(config, "model_type", None) == "mistral" and getattr(config, "sliding_window", None):
        return "sliding-window attention"
    last = layers[int(config.num_hidden_layers) - 1]
    attn = getattr(last, "self_attn", None)
    names = ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling")
    if attn is None or any(getattr(attn, n, None) is None for n in names):
        return "the last layer's attention is not a Llama-style q/k/v/o attention"
    if any(getattr(last, n, None) is None for n in ("input_layernorm", "post_attention_layernorm", "mlp")):
        return "the last layer is not a pre-norm attention + MLP block"
    if attn.training and float(getattr(attn, "attention_dropout", 0.0) or 0.0) > 0:
        return "attention dropout in training"
    return None


def _rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """RoPE as transformers' ``apply_rotary_pos_emb`` (``x`` [B, H, T, hd], ``cos``/``sin`` [B, T, hd])."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return (x * cos) + (_rotate_half(x) * sin)


def _rows(t: Tensor, read: Tensor) -> Tensor:
    """``t[b, read[b, k]]`` for ``t`` [B or 1, T, ...] and ``read`` [B, K]: [B, K, ...]."""
    t = t.expand(read.shape[0], *t.shape[1:])
    return t[torch.arange(read.shape[0], device=read.device)[:, None], read]


def _mask_rows(mask: Tensor | None, read: Tensor, width: int) -> Tensor:
    """The attention mask's rows at the read positions, [B, 1, K, T]: the captured 4D mask's (bool or additive),
    or causal (key index <= query index) where the decoder left it implicit (``None``: no padding)."""
    if mask is None:
        keys = torch.arange(width, device=read.device)
        return (keys[None, None, :] <= read[:, :, None]).unsqueeze(1)
    return _rows(mask[:, 0, :, :width], read).unsqueeze(1)


def _last_layer_at(layer: nn.Module, h: Tensor, mask: Tensor | None, cos: Tensor, sin: Tensor,
                   read: Tensor) -> Tensor:  # fmt: skip
    """The decoder layer ``layer`` on hidden states ``h`` [B, T, D], output at ``read`` [B, K] only: [B, K, D]."""
    attn: Any = layer.self_attn
    b, t, _ = h.shape
    k_read = read.shape[1]
    hd = int(attn.head_dim)
    x = layer.input_layernorm(h)
    q = attn.q_proj(_rows(x, read)).view(b, k_read, -1, hd)
    k = attn.k_proj(x).view(b, t, -1, hd)
    v = attn.v_proj(x).view(b, t, -1, hd)
    if getattr(attn, "q_norm", None) is not None:  # Qwen3: RMSNorm per head before RoPE
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    q, k = (
        _rope(q, _rows(cos, read), _rows(sin, read)),
        _rope(k, cos.expand(b, -1, -1), sin.expand(b, -1, -1)),
    )
    groups = q.shape[1] // k.shape[1]
    if groups > 1:  # grouped-query attention: query head j reads key/value head j // groups (repeat_kv)
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    mask_rows = _mask_rows(mask, read, t)
    if mask_rows.dtype != torch.bool:
        mask_rows = mask_rows.to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask_rows, scale=float(attn.scaling))
    out = attn.o_proj(out.transpose(1, 2).reshape(b, k_read, -1))
    h_read = _rows(h, read) + out
    return h_read + layer.mlp(layer.post_attention_layernorm(h_read))


def _full_forward_at(decoder: nn.Module, read: Tensor, inputs: dict[str, Any]) -> Tensor:
    """The decoder's whole forward, its final hidden states gathered at ``read``."""
    hidden = decoder(**inputs, use_cache=False).last_hidden_state
    return _rows(hidden, read.to(hidden.device))


def hidden_at(decoder: nn.Module, read: Tensor, **inputs: Any) -> Tensor:
    """The final (normed) hidden states [B, K, D] of ``decoder`` (a transformers base model, e.g. ``LlamaModel``)
    at the positions ``read`` [B, K] of its rows, for the keyword ``inputs`` of its forward (``input_ids``,
    ``attention_mask`` 2D or 4D, ``position_ids``). Equal up to float rounding to
    ``decoder(**inputs).last_hidden_state`` gathered at ``read``; the last layer runs at ``read`` only where
    :func:`unsupported` allows, else the full forward runs."""
    read = read.long()
    if unsupported(decoder) is not None:
        return _full_forward_at(decoder, read, inputs)
    config: Any = decoder.config
    layers: Any = decoder.layers
    last = layers[int(config.num_hidden_layers) - 1]
    captured: dict[str, Any] = {}

    def capture(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        captured["hidden"] = args[0] if args else kwargs.get("hidden_states")
        captured["mask"] = kwargs.get("attention_mask")
        captured["rope"] = kwargs.get("position_embeddings")
        raise _LastLayerReached

    handle = last.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        decoder(**inputs, use_cache=False)
    except _LastLayerReached:
        pass
    finally:
        handle.remove()
    hidden, mask, rope = captured.get("hidden"), captured.get("mask"), captured.get("rope")
    if (
        not isinstance(hidden, Tensor) or not isinstance(rope, tuple) or len(rope) != 2
        or not (mask is None or (isinstance(mask, Tensor) and mask.ndim == 4))
    ):  # fmt: skip
        # a decoder whose layer inputs are not as expected (another transformers version): the full forward
        return _full_forward_at(decoder, read, inputs)
    read = read.to(hidden.device)
    cos, sin = rope
    return decoder.norm(_last_layer_at(last, hidden, mask, cos, sin, read))


def causal_lm_parts(model: nn.Module) -> tuple[nn.Module, nn.Linear] | None:
    """``(decoder, lm_head)`` of a plain causal LM whose decoder :func:`hidden_at` replays (its logits at a few
    positions are then ``lm_head(hidden_at(decoder, ...))``), else ``None``: another architecture, a wrapper (DDP,
    PEFT) whose own forward must run, or an LM head that is not an ``nn.Linear``."""
    prefix = getattr(model, "base_model_prefix", None)
    decoder = getattr(model, prefix, None) if isinstance(prefix, str) else None
    head = getattr(model, "lm_head", None)
    if decoder is None or type(head) is not nn.Linear or not type(model).__name__.endswith("ForCausalLM"):
        return None
    return (decoder, head) if unsupported(decoder) is None else None
