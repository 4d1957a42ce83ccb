"""Tiny causal LMs built from a config, and loading of any local HF checkpoint.

Every stage loads models only through ``from_pretrained(local_path)``: the path a user takes with a
local Llama/Qwen checkpoint is the path our own tiny models take.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2Config,
)

from rewardlab.policies.tokenizer import context_limit
from rewardlab.utils import RewardlabError


class ModelConfig(BaseModel):
    """Architecture of a tiny causal LM built from scratch."""

    model_config = ConfigDict(extra="forbid")

    arch: Literal["llama", "qwen2"] = "llama"
    hidden_size: int = Field(128, gt=0)
    num_layers: int = Field(4, gt=0)
    num_heads: int = Field(4, gt=0)
    intermediate_size: int = Field(352, gt=0)
    max_position_embeddings: int = Field(64, gt=0)
    tie_word_embeddings: bool = True


def build_causal_lm(cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> PreTrainedModel:
    """A randomly initialised Llama or Qwen2 causal LM sized by ``cfg`` for ``tokenizer``'s vocabulary."""
    if cfg.hidden_size % cfg.num_heads:
        raise RewardlabError("model.hidden_size must be divisible by model.num_heads")
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=cfg.tie_word_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    config = LlamaConfig(**common) if cfg.arch == "llama" else Qwen2Config(**common)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def check_model_dir(path: Path | str, what: str = "model") -> Path:
    """Raise a clear error unless ``path`` is a ``save_pretrained`` folder."""
    p = Path(path)
    if not p.is_dir():
        raise RewardlabError(f"{what} path {p} does not exist or is not a folder")
    if not (p / "config.json").is_file():
        raise RewardlabError(f"{what} path {p} is not a model folder (no config.json)")
    return p


def load_tokenizer(path: Path | str) -> PreTrainedTokenizerBase:
    """Load a saved tokenizer (left padding; pad falls back to EOS when missing)."""
    p = Path(path)
    if not p.is_dir() or not any((p / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        raise RewardlabError(
            f"tokenizer path {p} has no saved tokenizer (tokenizer.json / tokenizer_config.json)"
        )
    try:
        tok = AutoTokenizer.from_pretrained(str(p))
    except Exception as e:
        raise RewardlabError(f"cannot load a tokenizer from {p}: {e}") from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    positions = model_positions(p)
    if positions is not None and (context_limit(tok) or positions + 1) > positions:
        tok.model_max_length = positions  # never encode past the model's positions (an IndexError otherwise)
    return tok


def model_positions(path: Path | str) -> int | None:
    """The number of positions of the model saved in ``path`` (or its first reward-model member), if stated."""
    p = Path(path)
    for cfg in (p / "config.json", p / "members" / "0" / "config.json"):
        if cfg.is_file():
            try:
                data = json.loads(cfg.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return None
            for key in ("max_position_embeddings", "n_positions", "n_ctx"):
                if isinstance(data.get(key), int) and data[key] > 0:
                    return int(data[key])
            return None
    return None


def load_causal_lm(path: Path | str) -> PreTrainedModel:
    """Load a local causal LM (fp32, eager-free SDPA attention) through ``from_pretrained``."""
    p = check_model_dir(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(p), dtype=torch.float32)
    except Exception as e:
        raise RewardlabError(f"cannot load a causal LM from {p}: {e}") from e
    return model


def num_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
