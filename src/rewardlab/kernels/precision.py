"""Mixed precision for the training loops: bf16 compute, float32 weights (``precision: bf16-mixed``).

Every training loop of rewardlab runs its forwards and backwards inside :func:`training_linears` (language
modelling for pretraining and SFT, reward models, PPO and its family, DPO and its family, IFT). By default
that is :func:`~rewardlab.kernels.cpu_linear.onednn_linears`: float32 throughout. Under mixed precision
(:func:`set_training_compute`, which :func:`rewardlab.pipelines.common.setup_stage` calls with the config's
``precision``) it is ``torch.autocast`` to bfloat16 instead: matrix products run in bf16, the weights, their
gradients and AdamW's state stay float32 (no update is lost to bf16 rounding, unlike ``dtype: bfloat16``),
and the losses upcast logits and scores to float32 as they always do. This is what TRL's ``bf16=True`` does
(HF Trainer's autocast) and what Micikevicius et al. (2018), "Mixed Precision Training", describe.

Sampling (:func:`rewardlab.policies.sampling.sample`) and reference log-probs precomputed for DPO stay float32
under mixed precision: decode-step GEMMs have a handful of rows, where bf16 is slower than fp32 on CPU
(8 x 128 x 352: 21.6 us bf16, 12.6 us fp32 on an AVX512-BF16 EPYC), while the training GEMMs (hundreds of rows)
run ~2.2x faster in bf16 there.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from rewardlab.kernels.cpu_linear import onednn_linears

_COMPUTE: torch.dtype | None = None  # None: float32 training (the default)


def set_training_compute(dtype: torch.dtype | None) -> None:
    """Process-wide: the dtype the training loops compute in (``torch.bfloat16``), or ``None`` for float32."""
    global _COMPUTE
    if dtype not in (None, torch.bfloat16, torch.float16):
        raise ValueError(f"mixed precision computes in bfloat16 or float16, not {dtype}")
    _COMPUTE = dtype


def training_compute() -> torch.dtype | None:
    """The dtype set by :func:`set_training_compute` (``None``: float32)."""
    return _COMPUTE


def _device_type(modules: tuple[nn.Module | None, ...]) -> str:
    for m in modules:
        if m is not None:
            for p in m.parameters():
                return p.device.type
    return "cpu"


@contextmanager
def training_linears(*modules: nn.Module | None) -> Iterator[None]:
    """The block a training loop's forwards and backwards run in: float32 with oneDNN linears on CPU where
    faster (:func:`~rewardlab.kernels.cpu_linear.onednn_linears`), or autocast to the mixed-precision dtype."""
    if _COMPUTE is None:
        with onednn_linears(*modules):
            yield
        return
    # cache_enabled=False: the loops hold this block across many optimizer steps, and autocast's cache of
    # bf16 copies of the weights lives until the outermost autocast block exits; with it, every forward after
    # the first would use the step-1 weights (the model would not learn, the updates would drift unchecked).
    with torch.autocast(_device_type(modules), dtype=_COMPUTE, cache_enabled=False):
        yield
