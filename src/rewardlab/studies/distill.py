"""Distillation pieces for the teacher-hacking study: sampling sequences, distances between LMs, the
power-law convergence check (Tiapkin et al. 2025, "On Teacher Hacking in Language Model Distillation").

Distances are sequence-level KLs estimated by the chain rule: along sequences ``y ~ p(.|x)``,
``KL(p || q)(x) = E_y [Σ_t KL(p(.|x, y<t) || q(.|x, y<t))]`` (:func:`rewardlab.losses.token_kl`), averaged
over prompts. The detection signal is a pure function of a training curve: fit ``d(t) = a t^-b`` (a straight
line in log-log) on an early window and measure how far the later points leave it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from rewardlab.audit.tracker import position_ids_from_mask
from rewardlab.losses import token_kl
from rewardlab.policies.sampling import SampleBatch, encode_prompts, sample
from rewardlab.utils import RewardlabError


# --------------------------------------------------------------------------------- sequences and distances
def sample_sequences(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                     max_new_tokens: int, seed: int) -> SampleBatch:  # fmt: skip
    """One sampled response per prompt (temperature 1), seeded: the same seed gives the same sequences."""
    ids, mask = encode_prompts(tokenizer, list(prompts), max_new_tokens)
    gen = torch.Generator().manual_seed(seed)
    return sample(model, ids, mask, max_new_tokens=max_new_tokens, generator=gen,
                  eos_token_id=int(tokenizer.eos_token_id), pad_token_id=int(tokenizer.pad_token_id))  # type: ignore[arg-type]  # fmt: skip


def take(batch: SampleBatch, idx: Sequence[int] | Tensor) -> SampleBatch:
    """Rows ``idx`` of a sample batch (trimmed to their longest response)."""
    i = torch.as_tensor(idx, dtype=torch.long)
    width = max(1, int(batch.response_mask[i].sum(1).max()))
    return SampleBatch(batch.prompt_ids[i], batch.prompt_mask[i], batch.response_ids[i, :width],
                       batch.response_mask[i, :width], batch.logprobs[i, :width], batch.finished[i])  # fmt: skip


def response_logits(model: torch.nn.Module, batch: SampleBatch) -> Tensor:
    """``[B, T, V]`` next-token logits of ``model`` at each response position of ``batch``."""
    ids, mask = batch.input_ids, batch.attention_mask
    out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask))
    p = batch.prompt_ids.shape[1]
    return out.logits[:, p - 1 : -1]


@torch.no_grad()
def sequence_kl(
    p_model: torch.nn.Module, q_model: torch.nn.Module, batch: SampleBatch, chunk: int = 128
) -> float:
    """``KL(p || q)`` per prompt, averaged: the token-KL sums along ``batch`` (which must be sampled from ``p``)."""
    total = 0.0
    for s in range(0, len(batch), chunk):
        part = take(batch, range(s, min(s + chunk, len(batch))))
        kl = token_kl(response_logits(p_model, part), response_logits(q_model, part), part.response_mask)
        total += float(kl.sum())
    return total / len(batch)


# --------------------------------------------------------------------------------- the detection signal
@dataclass(frozen=True)
class PowerLawFit:
    """``d(t) = a t^-b`` fitted on the window's points, and the later points' deviation from it.

    ``deviation`` is ``log d(t) - log d_fit(t)`` at every point after the window (positive: the curve
    stays above the law, convergence has slowed); ``max_deviation`` its largest value; ``onset`` the first
    step whose deviation exceeds the threshold (None if none does).
    """

    a: float
    b: float
    r2: float
    window: tuple[int, int]
    steps: tuple[int, ...]
    deviation: tuple[float, ...]
    max_deviation: float
    onset: int | None

    def predict(self, t: Sequence[float] | np.ndarray) -> np.ndarray:
        return self.a * np.asarray(t, dtype=float) ** (-self.b)


def fit_power_law(steps: Sequence[float], values: Sequence[float]) -> tuple[float, float, float]:
    """Least squares of ``log d = log a - b log t`` (steps > 0, values > 0); returns ``(a, b, r2)`` in log space."""
    t, d = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    if len(t) < 2 or np.any(t <= 0) or np.any(d <= 0):
        raise RewardlabError("fit_power_law needs >= 2 points with positive steps and values")
    x, y = np.log(t), np.log(d)
    slope, intercept = np.polyfit(x, y, 1)
    pred = intercept + slope * x
    ss = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float(((y - pred) ** 2).sum()) / ss if ss > 0 else 1.0
    return math.exp(intercept), -float(slope), r2


def power_law_deviation(steps: Sequence[int], values: Sequence[float], window: tuple[int, int],
                        threshold: float = 0.1) -> PowerLawFit:  # fmt: skip
    """Fit a power law to the points whose step lies in ``window`` (inclusive) and measure the later points'
    log-deviation from it (Tiapkin et al. 2025: teacher hacking shows as the proxy curve leaving polynomial
    convergence; no oracle is needed to compute this)."""
    t, d = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    lo, hi = window
    inside = (t >= lo) & (t <= hi) & (t > 0)
    if inside.sum() < 2:
        raise RewardlabError(f"power-law window {window}: fewer than 2 points with step > 0 inside it")
    a, b, r2 = fit_power_law(t[inside], d[inside])
    after = t > hi
    dev = np.log(np.maximum(d[after], 1e-12)) - np.log(a * t[after] ** (-b))
    onset = next((int(s) for s, v in zip(t[after], dev, strict=True) if v > threshold), None)
    return PowerLawFit(a, b, r2, (lo, hi), tuple(int(s) for s in t[after]), tuple(float(v) for v in dev),
                       float(dev.max()) if len(dev) else float("nan"), onset)  # fmt: skip


def eval_steps(total: int, points: int) -> list[int]:
    """0 and about ``points`` log-spaced steps in ``[1, total]`` (a log-log curve needs them spread evenly)."""
    grid = np.unique(np.round(np.geomspace(1, total, points)).astype(int))
    return [0, *[int(s) for s in grid if s <= total]]


def u_shape(steps: Sequence[int], values: Sequence[float]) -> dict[str, float]:
    """Where a curve is lowest, and how far it climbs back from there by the end (0 for a curve that only falls)."""
    v = np.asarray(values, dtype=float)
    k = int(np.argmin(v))
    return {"min_step": int(steps[k]), "min": float(v[k]), "final": float(v[-1]), "rise": float(v[-1] - v[k])}
