"""The policy a stage trains: any local causal LM, in the config's dtype, optionally with LoRA adapters (peft).

* :func:`load_policy` loads ``from_pretrained(path)`` in the chosen dtype and, with a ``lora`` section, injects
  LoRA adapters through ``peft`` (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models":
  ``W x + (alpha / r) * B A x`` with ``A`` r x d_in random, ``B`` d_out x r zero, only A and B trained).
* The reference model of PPO/RLOO/GRPO and DPO is, on the LoRA path, **the same model with its adapters
  disabled** (:class:`DisabledAdapter`, ``with peft_model.disable_adapter():``): at step 0 it equals the
  policy, and no second copy of the base weights is held.
* :meth:`PolicyModel.save` writes the adapter (``adapter/``, loadable with ``PeftModel.from_pretrained`` onto
  the stage's input model) and a merged ``model/`` (``W + (alpha / r) B A``), so the next stage and
  ``from_pretrained`` work exactly as without LoRA.
* What a training checkpoint stores on the LoRA path is the adapter's tensors only (the frozen base is the input
  model): :func:`rewardlab.checkpoint.adapter_state_dict` / :func:`~rewardlab.checkpoint.load_adapter_state`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rewardlab.checkpoint import LORA_KEY, adapter_state_dict, is_lora, load_adapter_state
from rewardlab.policies.models import load_causal_lm, save_model
from rewardlab.utils import RewardlabError, atomic_dir

__all__ = ["DisabledAdapter", "LoRAConfig", "PolicyModel", "adapter_state_dict", "is_lora", "load_adapter",
           "load_adapter_state", "load_policy", "lora_targets", "wrap_lora"]  # fmt: skip

#: Default LoRA targets per ``config.model_type``: every projection of attention and MLP (the QLoRA paper's
#: finding that all linear layers matter); an architecture not listed gets peft's ``all-linear``.
DEFAULT_TARGETS: dict[str, list[str]] = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
}


class LoRAConfig(BaseModel):
    """LoRA adapters on the policy (peft): ``W x + (alpha / r) * B A x``, only ``A`` and ``B`` trained."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    r: int = Field(8, gt=0, description="rank of the update B A")
    alpha: float = Field(16.0, gt=0, description="scale: the update is multiplied by alpha / r")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapter's input")
    target_modules: list[str] | Literal["all-linear"] | None = Field(
        None,
        description="module names to adapt; default: every attention and MLP projection of the architecture "
        "(llama/qwen2/mistral: q,k,v,o,gate,up,down_proj; gpt2: c_attn, c_proj, c_fc), else all-linear",
    )


def lora_targets(model: PreTrainedModel, cfg: LoRAConfig) -> list[str] | str:
    """The modules ``cfg`` adapts on ``model``: its own list, else the architecture's default, else all-linear."""
    if cfg.target_modules is not None:
        return cfg.target_modules
    return DEFAULT_TARGETS.get(str(getattr(model.config, "model_type", "")), "all-linear")


def wrap_lora(model: PreTrainedModel, cfg: LoRAConfig) -> Any:
    """``model`` with LoRA adapters injected (a ``PeftModel``; the base weights frozen, adapters in float32)."""
    from peft import LoraConfig, get_peft_model
    from transformers.pytorch_utils import Conv1D

    targets = lora_targets(model, cfg)
    conv1d = any(isinstance(m, Conv1D) for m in model.modules())  # GPT-2 stores projections transposed
    try:
        peft_cfg = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                              fan_in_fan_out=conv1d, bias="none", task_type="CAUSAL_LM")  # fmt: skip
        return get_peft_model(model, peft_cfg)
    except ValueError as e:  # e.g. a target module that does not exist
        raise RewardlabError(f"lora.target_modules={targets!r}: {e}") from e


class DisabledAdapter(nn.Module):
    """The reference model of the LoRA path: the policy's own model with its adapters disabled.

    Calling it runs the policy's base model inside ``with peft_model.disable_adapter():``, in eval mode and
    without gradients (the modules' train/eval flags are put back after the call), so it computes exactly
    the frozen input model while holding no weights of its own. ``parameters()`` are the policy's (for the
    device); ``state_dict()`` is the base weights under their original names (what a reference cache
    fingerprints); ``train()``/``eval()``/``requires_grad_()`` never touch the policy.
    """

    def __init__(self, peft_model: Any) -> None:
        super().__init__()
        self.__dict__["peft"] = peft_model  # not a submodule: nothing here may reach the policy's flags

    @property
    def base(self) -> PreTrainedModel:
        return self.peft.get_base_model()

    @property
    def config(self) -> Any:
        return self.base.config

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        base = self.base
        modes = [(m, m.training) for m in base.modules()]
        base.eval()
        try:
            with torch.no_grad(), self.peft.disable_adapter():
                return base(*args, **kwargs)
        finally:
            for m, was_training in modes:
                m.training = was_training

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        return self.base.parameters(recurse)

    def train(self, mode: bool = True) -> DisabledAdapter:
        self.training = mode
        return self

    def requires_grad_(self, requires_grad: bool = True) -> DisabledAdapter:
        return self  # the base weights are frozen already; the adapters belong to the policy

    def to(self, *args: Any, **kwargs: Any) -> DisabledAdapter:
        return self  # it lives where the policy lives

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        return {
            k.replace(".base_layer.", "."): v for k, v in self.base.state_dict().items() if LORA_KEY not in k
        }


@dataclass
class PolicyModel:
    """A stage's policy: ``model`` is what trains (with LoRA: the base model with adapters injected in place,
    a plain ``PreTrainedModel`` to every trainer), ``peft`` the ``PeftModel`` around it (None without LoRA)."""

    model: PreTrainedModel
    peft: Any
    path: Path
    dtype: torch.dtype

    def reference(self, path: Path | str | None = None, device: torch.device | str = "cpu") -> nn.Module:
        """The frozen reference: the adapter-disabled policy on the LoRA path when ``path`` is the policy's own
        start (or None), else a separate frozen copy loaded from ``path`` onto ``device``, in the policy's dtype."""
        if self.peft is not None and (path is None or Path(path).resolve() == self.path.resolve()):
            return DisabledAdapter(self.peft)  # follows the policy wherever it is moved
        return load_causal_lm(path or self.path, self.dtype).eval().requires_grad_(False).to(device)

    def describe(self) -> str:
        """One log line: the architecture, dtype, parameters and (LoRA) what trains."""
        total = sum(p.numel() for p in self.model.parameters())
        train = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        what = f"{type(self.model).__name__} from {self.path}, {str(self.dtype).removeprefix('torch.')}"
        if self.peft is None:
            return f"{what}, {total:,} parameters"
        cfg = self.peft.peft_config["default"]
        targets = (
            sorted(cfg.target_modules) if isinstance(cfg.target_modules, set | list) else cfg.target_modules
        )
        return (f"{what}; LoRA r={cfg.r} alpha={cfg.lora_alpha:g} on {targets}: {train:,} of {total:,} parameters "
                f"train; reference = the same model with the adapter disabled")  # fmt: skip

    def save(self, tokenizer: PreTrainedTokenizerBase, path: Path) -> Path:
        """``save_pretrained`` the policy into ``path`` (atomically). On the LoRA path, first the adapter into
        ``path.parent / "adapter"``, then the merged weights into ``path``: the merge (peft's
        ``merge_and_unload``) happens in place, so this is the last thing a stage does with its policy."""
        if self.peft is None:
            return save_model(self.model, tokenizer, path)

        def write_adapter(tmp: Path) -> None:
            self.peft.save_pretrained(tmp, safe_serialization=True)
            (tmp / "README.md").unlink(missing_ok=True)  # peft's model-card stub

        atomic_dir(path.parent / "adapter", write_adapter)
        merged = self.peft.merge_and_unload()
        self.model, self.peft = merged, None
        return save_model(merged, tokenizer, path)


def load_policy(
    path: Path | str, dtype: torch.dtype = torch.float32, lora: LoRAConfig | None = None
) -> PolicyModel:
    """The policy a stage trains: ``from_pretrained(path)`` in ``dtype``, with LoRA adapters when ``lora``."""
    model = load_causal_lm(path, dtype)
    if lora is None:
        return PolicyModel(model, None, Path(path), dtype)
    peft_model = wrap_lora(model, lora)
    return PolicyModel(peft_model.get_base_model(), peft_model, Path(path), dtype)


def load_adapter(base_path: Path | str, adapter_path: Path | str, dtype: torch.dtype = torch.float32) -> Any:
    """A saved ``adapter/`` on its base model (a ``PeftModel``); ``.merge_and_unload()`` gives ``model/``."""
    from peft import PeftModel

    return PeftModel.from_pretrained(load_causal_lm(base_path, dtype), str(adapter_path))
