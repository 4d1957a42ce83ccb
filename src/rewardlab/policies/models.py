"""Tiny causal LMs built from a config, and loading of any local HF checkpoint.

Every stage loads models only through ``from_pretrained(local_path)``: the path a user takes with a
local Llama/Qwen checkpoint is the path our own tiny models take.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

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
from rewardlab.utils import RewardlabError, atomic_dir, cpuinfo_field


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


def load_causal_lm(path: Path | str, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """Load a local causal LM (any architecture ``AutoModelForCausalLM`` knows) through ``from_pretrained``,
    its weights in ``dtype`` (float32 unless a stage chose bf16, see :func:`resolve_dtype`)."""
    p = check_model_dir(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(p), dtype=dtype)
    except Exception as e:
        raise RewardlabError(f"cannot load a causal LM from {p}: {e}") from e
    return model


#: The ``dtype`` config choice: the weights' dtype when a stage loads a causal LM.
DType = Literal["float32", "bfloat16", "auto"]


#: CPU feature flags (``/proc/cpuinfo``) of native bf16 arithmetic: x86 AVX512-BF16 and AMX, Arm's BF16.
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str] | None:
    """The CPU's feature flags (the first ``flags`` or ``Features`` line of ``cpuinfo``); ``None`` where the
    file is absent or has no such line (not Linux)."""
    value = cpuinfo_field("flags", "Features", cpuinfo=cpuinfo)
    return None if value is None else set(value.split())


def native_bf16(device: torch.device | str, cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[bool, str]:
    """Whether ``device`` computes bf16 natively, and why.

    CUDA: compute capability >= 8.0 (``torch.cuda.is_bf16_supported``). CPU: one of :data:`CPU_BF16_FLAGS` in
    ``cpuinfo``. oneDNN's own ``_is_mkldnn_bf16_supported`` is not enough: it also says yes on AVX512 CPUs
    without AVX512-BF16, where it emulates bf16 and a training-sized GEMM runs 5x slower than in float32
    (29 vs 154 GFLOP/s on a Xeon with AVX512-VNNI but no AVX512-BF16). Without a flags list (not Linux) the
    CPU answer falls back to oneDNN's."""
    dev = torch.device(device)
    if dev.type == "cuda":
        ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        name = torch.cuda.get_device_name(dev) if torch.cuda.is_available() else "cuda"
        return ok, f"{name} {'supports' if ok else 'does not support'} bf16 (torch.cuda.is_bf16_supported)"
    if dev.type == "cpu":
        flags = cpu_flags(cpuinfo)
        if flags is not None:
            found = [f for f in CPU_BF16_FLAGS if f in flags]
            if found:
                return True, f"the CPU has native bf16 ({', '.join(found)} in {cpuinfo})"
            return False, f"the CPU has no native bf16 (no {'/'.join(CPU_BF16_FLAGS)} flag in {cpuinfo})"
        ok = bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
        return (
            ok,
            f"the CPU {'supports' if ok else 'does not support'} bf16 per oneDNN (no CPU flags to read)",
        )
    return False, f"{dev.type}: native bf16 unknown"


def resolve_dtype(choice: DType, device: torch.device | str = "cpu") -> tuple[torch.dtype, str]:
    """The weights' dtype for the config's ``dtype`` and one log line saying which and why.

    ``auto`` picks bfloat16 only where ``device`` computes it natively (:func:`native_bf16`), else float32;
    ``bfloat16`` is honoured anywhere (on a CPU without native support it is emulated, slowly). Losses and
    log-probs are computed in float32 whatever the weights' dtype (the trainers upcast the logits)."""
    if choice == "float32":
        return torch.float32, "dtype float32 (config dtype: float32)"
    native, why = native_bf16(device)
    if choice == "bfloat16":
        return torch.bfloat16, f"dtype bfloat16 (config dtype: bfloat16; {why})"
    return (torch.bfloat16 if native else torch.float32), f"dtype {'bfloat16' if native else 'float32'} (config dtype: auto; {why})"  # fmt: skip


#: The ``precision`` config choice: what the training loops compute in (weights stay in ``dtype``).
Precision = Literal["float32", "bf16-mixed", "auto"]


def resolve_precision(
    choice: Precision, device: torch.device | str = "cpu"
) -> tuple[torch.dtype | None, str]:
    """The training loops' compute dtype for the config's ``precision`` (``None``: float32) and why.

    ``auto`` picks bf16-mixed only where ``device`` computes bf16 natively (:func:`native_bf16`);
    ``bf16-mixed`` is honoured anywhere (emulated, slowly, without native support)."""
    if choice == "float32":
        return None, "precision float32 (config precision: float32)"
    native, why = native_bf16(device)
    if choice == "bf16-mixed" or native:
        return torch.bfloat16, f"precision bf16-mixed (config precision: {choice}; {why})"
    return None, f"precision float32 (config precision: auto; {why})"


def num_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


#: Architectures :func:`write_tiny_checkpoint` builds (the ones tested through every stage).
TinyArch = Literal["llama", "qwen2", "gpt2"]

#: Qwen2's ChatML template (what Qwen2 checkpoints ship), used by the tiny Qwen2 checkpoint's tokenizer.
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_tokenizer(arch: TinyArch, texts: list[str], vocab_size: int = 512) -> PreTrainedTokenizerBase:
    """A byte-level BPE trained on ``texts`` and wrapped as the architecture's own tokenizer class, with the
    special tokens its family uses: GPT-2 (``<|endoftext|>``, no pad, no chat template), Llama (``<s>``,
    ``</s>``, ``<unk>``, no chat template) and Qwen2 (``<|endoftext|>`` pad, ``<|im_end|>`` EOS, ChatML)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2TokenizerFast, PreTrainedTokenizerFast, Qwen2TokenizerFast

    specials = {"gpt2": ["<|endoftext|>"], "llama": ["<unk>", "<s>", "</s>"],
                "qwen2": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]}[arch]  # fmt: skip
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tok.train_from_iterator(texts, trainer=trainer)
    if arch == "gpt2":
        return GPT2TokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                 unk_token="<|endoftext|>")  # fmt: skip
    if arch == "llama":
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
        )
    out = Qwen2TokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                             unk_token=None, additional_special_tokens=["<|im_start|>", "<|im_end|>"])  # fmt: skip
    out.chat_template = CHATML_TEMPLATE
    return out


def write_tiny_checkpoint(arch: TinyArch, path: Path | str, texts: list[str], *, hidden_size: int = 32,
                          num_layers: int = 2, num_heads: int = 2, positions: int = 128, vocab_size: int = 512,
                          seed: int = 0) -> Path:  # fmt: skip
    """A randomly initialised tiny ``arch`` causal LM with its own tokenizer (:func:`tiny_tokenizer` trained on
    ``texts``), saved with ``save_pretrained`` into ``path``: a stand-in for a user's local checkpoint."""
    from transformers import GPT2Config

    tok = tiny_tokenizer(arch, texts, vocab_size)
    ids = {"eos_token_id": tok.eos_token_id, "bos_token_id": tok.bos_token_id,
           "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id}  # fmt: skip
    if arch == "gpt2":
        config: Any = GPT2Config(vocab_size=len(tok), n_embd=hidden_size, n_layer=num_layers, n_head=num_heads,
                                 n_positions=positions, **ids)  # fmt: skip
    else:
        cls = LlamaConfig if arch == "llama" else Qwen2Config
        config = cls(vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                     num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads,
                     max_position_embeddings=positions, tie_word_embeddings=arch == "qwen2", **ids)  # fmt: skip
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    out = Path(path)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def save_model(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, path: Path, **extra_config: object
) -> Path:
    """``save_pretrained`` model + tokenizer into ``path`` atomically (temp folder, then rename)."""
    for k, v in extra_config.items():
        setattr(model.config, k, v)

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)

    return atomic_dir(path, write)
