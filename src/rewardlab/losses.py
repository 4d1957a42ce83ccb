"""Pure loss and estimator functions shared by the reward-model and policy trainers.

Everything here is a stateless function of torch tensors (the two KL controllers are the only
stateful objects). Conventions follow Hugging Face TRL and OpenRLHF where they define one:

* **Masks** may be bool, integer or float tensors of the same shape as the data; any non-zero
  entry counts as valid (1), zero as masked (0). Values at masked positions never influence a
  result, even if they are NaN/inf, because they are selected away with :func:`torch.where`
  rather than multiplied by zero.
* **Reductions** over masks are ``sum(x·m) / sum(m)`` (TRL's ``masked_mean``); an all-masked
  reduction is ``0/0 = NaN``, which is deliberate so that an empty batch is loud, not silent.
* **Stats** returned next to losses are detached tensors (no host sync); call ``.item()`` to log.

Sections: reward modelling (Bradley-Terry, Plackett-Luce, accuracy, calibration), token-level
helpers (log-probs, entropy, masked moments, whitening), KL (estimators, penalties, controllers,
best-of-n), advantages / PPO (GAE, clipped policy and value losses, RLOO, GRPO), and direct
preference optimization (DPO, cDPO, IPO, rDPO, hinge, SimPO, an NLL term, MODPO). Last, offline RL
from a fixed dataset: weighted likelihood, filtered-MLE selection, RWR weights, reward-quantile
tokens, A-LoL.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "AdaptiveKLController",
    "FixedKLController",
    "PreferenceLoss",
    "alol_importance_weights",
    "alol_loss",
    "best_of_n_kl",
    "bradley_terry_loss",
    "chosen_nll_loss",
    "discounted_future_sum",
    "dph_loss",
    "dpo_sigmoid_loss",
    "entropy_from_logits",
    "expected_calibration_error",
    "gae",
    "grpo_advantages",
    "hinge_dpo_loss",
    "ift_loss",
    "ift_mixed_embeddings",
    "ift_token_weights",
    "ipo_loss",
    "kl_estimators",
    "kl_penalty",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "modpo_loss",
    "plackett_luce_loss",
    "ppo_policy_loss",
    "ppo_value_loss",
    "preference_accuracy",
    "reward_quantile_bins",
    "rloo_advantages",
    "robust_dpo_loss",
    "rwr_weights",
    "selective_log_softmax",
    "simpo_loss",
    "top_quantile_mask",
    "weighted_nll",
]

Reduction = Literal["mean", "sum", "none"]
KLEstimator = Literal["k1", "k2", "k3"]


# --------------------------------------------------------------------------------------------
# internal helpers
# --------------------------------------------------------------------------------------------


def _as_bool_mask(mask: Tensor, like: Tensor, name: str = "mask") -> Tensor:
    """Return ``mask != 0`` as a bool tensor after checking it has the shape of ``like``."""
    if mask.shape != like.shape:
        raise ValueError(f"{name} has shape {tuple(mask.shape)}, expected {tuple(like.shape)}")
    return mask if mask.dtype == torch.bool else mask != 0


def _reduce(x: Tensor, reduction: Reduction) -> Tensor:
    if reduction == "mean":
        return x.mean()
    if reduction == "sum":
        return x.sum()
    if reduction == "none":
        return x
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _check_same_shape(a: Tensor, b: Tensor, names: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{names} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")


# --------------------------------------------------------------------------------------------
# reward modelling
# --------------------------------------------------------------------------------------------


def bradley_terry_loss(
    r_chosen: Tensor,
    r_rejected: Tensor,
    *,
    margin: Tensor | float | None = None,
    target: Tensor | float | None = None,
    center_coef: float = 0.0,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Bradley-Terry negative log-likelihood of pairwise preferences.

    With ``d = r_c - r_r - m``, ``t`` the probability that the chosen item is preferred::

        loss = mean( -[ t·logσ(d) + (1 - t)·logσ(-d) ] ) + center_coef · mean((r_c + r_r)²)

    * ``t = 1`` (default) gives TRL's ``RewardTrainer`` loss ``-logσ(r_c - r_r - m)`` exactly;
      ``t = 0.5`` encodes a tie (minimised at ``d = 0`` where it equals ``log 2``); any
      ``t ∈ [0, 1]`` is a soft label (binary cross-entropy on the logit ``d``).
    * ``m`` (default 0) is the Llama-2 style margin: the chosen reward has to beat the
      rejected one by ``m`` before the loss saturates.
    * The centering term (Eisenstein et al. 2023, "Helping or Herding? Reward Model Ensembles
      Mitigate but do not Eliminate Reward Hacking"; TRL's ``center_rewards_coefficient``)
      pins the otherwise unidentified reward offset near zero.

    Bradley & Terry (1952), as used for RLHF reward models by Christiano et al. (2017),
    Stiennon et al. (2020) and Ouyang et al. (2022). ``logsigmoid`` keeps it stable for large
    ``|d|``.

    Args:
        r_chosen, r_rejected: rewards of the chosen/rejected items, same shape (e.g. ``[B]``).
        margin: scalar or tensor broadcastable to ``r_chosen``.
        target: scalar or tensor in ``[0, 1]`` broadcastable to ``r_chosen``.
        center_coef: weight of the centering penalty (0 disables it).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (per-pair losses, the
            centering term then being ``center_coef·(r_c + r_r)²`` per pair).
    """
    _check_same_shape(r_chosen, r_rejected, "r_chosen and r_rejected")
    d = r_chosen - r_rejected
    if margin is not None:
        d = d - margin
    if target is None:
        losses = -F.logsigmoid(d)
    else:
        if isinstance(target, (int, float)) and not 0.0 <= float(target) <= 1.0:
            raise ValueError(f"target must lie in [0, 1], got {target}")
        losses = -(target * F.logsigmoid(d) + (1.0 - target) * F.logsigmoid(-d))
    if center_coef:
        losses = losses + center_coef * (r_chosen + r_rejected) ** 2
    return _reduce(losses, reduction)


def plackett_luce_loss(
    scores: Tensor,
    ranking: Tensor,
    valid: Tensor | None = None,
    *,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Negative log-likelihood of a ranking under the Plackett-Luce model.

    For one example with scores ``s`` and ranking ``π`` (indices of the items, best first)::

        loss = -Σ_i [ s_{π_i} - logsumexp_{j ≥ i} s_{π_j} ]

    i.e. the best item is chosen by a softmax over all items, the second by a softmax over the
    remaining ones, and so on (the last term is always 0). With ``K = 2`` this is exactly
    :func:`bradley_terry_loss` (``t = 1``, no margin). Plackett (1975), Luce (1959); used as a
    K-wise reward-model loss by Zhu, Jordan & Jiao (2023), "Principled Reinforcement Learning
    with Human Feedback from Pairwise or K-wise Comparisons".

    Args:
        scores: ``[B, K]`` item scores (rewards).
        ranking: ``[B, K]`` long, ``ranking[b, i]`` is the index (into ``scores[b]``) of the
            item placed ``i``-th. Each row's valid entries must be distinct indices.
        valid: optional ``[B, K]`` mask over *ranking positions*; invalid positions are
            padding, for rows that rank fewer than ``K`` items. Items not named by a valid
            position take no part in that row's likelihood at all (they are absent, not
            "ranked below"), and the entries of ``ranking`` there may be anything (e.g. -1).
            A row with at most one valid position has loss 0.
        reduction: ``"mean"`` over the batch (default), ``"sum"`` or ``"none"`` (``[B]``).
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must be [B, K], got shape {tuple(scores.shape)}")
    _check_same_shape(scores, ranking, "scores and ranking")
    if valid is None:
        valid_b = torch.ones_like(scores, dtype=torch.bool)
    else:
        valid_b = _as_bool_mask(valid, scores, "valid")
    safe_index = torch.where(valid_b, ranking, torch.zeros_like(ranking)).long()
    ordered = scores.gather(1, safe_index)  # s_{π_i}
    # A large finite negative instead of -inf keeps logcumsumexp and its gradient NaN-free
    # when a suffix holds only padding.
    very_negative = torch.finfo(scores.dtype).min
    ordered_for_lse = torch.where(valid_b, ordered, torch.full_like(ordered, very_negative))
    # suffix logsumexp: lse_i = logsumexp_{j >= i} s_{π_j}
    suffix_lse = torch.logcumsumexp(ordered_for_lse.flip(-1), dim=-1).flip(-1)
    terms = torch.where(valid_b, ordered - suffix_lse, torch.zeros_like(ordered))
    return _reduce(-terms.sum(dim=-1), reduction)


def preference_accuracy(
    r_chosen: Tensor, r_rejected: Tensor, *, ties: Literal["wrong", "half"] = "wrong"
) -> float:
    """Fraction of pairs the reward model orders correctly, ``mean(r_c > r_r)``.

    This is TRL's reward-model accuracy (``(rewards_chosen > rewards_rejected).float().mean()``),
    where a tie counts as wrong; pass ``ties="half"`` to score ties as 0.5 instead, which is
    the expected accuracy of breaking ties by a coin flip.
    """
    _check_same_shape(r_chosen, r_rejected, "r_chosen and r_rejected")
    if r_chosen.numel() == 0:
        raise ValueError("preference_accuracy needs at least one pair")
    correct = (r_chosen > r_rejected).double()
    if ties == "half":
        correct = correct + 0.5 * (r_chosen == r_rejected).double()
    elif ties != "wrong":
        raise ValueError(f"ties must be 'wrong' or 'half', got {ties!r}")
    return float(correct.mean())


def expected_calibration_error(p_chosen: Tensor, label: Tensor, n_bins: int = 10) -> float:
    r"""Expected calibration error of binary preference probabilities (Guo et al. 2017).

    ``p_chosen`` is the predicted probability that the first item is preferred (for a reward
    model, ``σ(r_1 - r_2)``), ``label`` is 1 where the first item was preferred, 0 otherwise.
    As in Guo et al. ("On Calibration of Modern Neural Networks"), the predicted class is
    ``p ≥ 0.5`` (ties go to the first item), its confidence is ``max(p, 1 - p)``, confidences
    fall into ``n_bins`` equal-width bins ``(k/n, (k+1)/n]`` of ``[0, 1]`` (so only the upper
    half is used for a binary problem), and::

        ECE = Σ_bins |B|/N · | accuracy(B) - mean confidence(B) |

    Returns a python float in ``[0, 1]``; computed in float64.
    """
    if p_chosen.shape != label.shape:
        raise ValueError(f"p_chosen and label must have the same shape, got {p_chosen.shape}, {label.shape}")
    if p_chosen.numel() == 0:
        raise ValueError("expected_calibration_error needs at least one prediction")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    p = p_chosen.detach().double().flatten()
    y = (label.detach().flatten() != 0).double()
    if bool(((p < 0) | (p > 1)).any()):
        raise ValueError("p_chosen must lie in [0, 1]")
    pred = (p >= 0.5).double()
    confidence = torch.where(pred == 1, p, 1.0 - p)
    correct = (pred == y).double()
    inner_edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64)[1:-1]
    bin_idx = torch.bucketize(confidence, inner_edges, right=False)  # (edge_k, edge_{k+1}]
    conf_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, bin_idx, confidence)
    acc_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, bin_idx, correct)
    # Σ_B |B|/N · |acc_B - conf_B| = Σ_B |acc_sum_B - conf_sum_B| / N
    return float((acc_sum - conf_sum).abs().sum() / p.numel())


# --------------------------------------------------------------------------------------------
# token-level helpers
# --------------------------------------------------------------------------------------------


def selective_log_softmax(logits: Tensor, index: Tensor) -> Tensor:
    """Log-probabilities of the ``index`` tokens, ``log_softmax(logits)[..., index]``.

    ``logits [B, T, V]``, ``index [B, T]`` → ``[B, T]``. Memory-efficient as in TRL: for
    float32/float64 it computes ``logits.gather(index) - logsumexp(logits)`` row by row and never
    materialises the full ``[B, T, V]`` log-softmax; for low-precision dtypes (bf16/fp16), where
    the logsumexp route loses accuracy, it falls back to a row-wise ``log_softmax`` + gather.
    """
    if logits.shape[:-1] != index.shape:
        raise ValueError(f"index shape {tuple(index.shape)} does not match logits {tuple(logits.shape)}")
    index = index.long()
    if logits.dtype in (torch.float32, torch.float64):
        return _SelectedLogProb.apply(logits, index)
    if logits.ndim < 2:
        return F.log_softmax(logits, dim=-1).gather(-1, index.unsqueeze(-1)).squeeze(-1)
    rows = [
        F.log_softmax(row, dim=-1).gather(-1, row_index.unsqueeze(-1)).squeeze(-1)
        for row, row_index in zip(logits, index)
    ]
    return torch.stack(rows)


class _SelectedLogProb(torch.autograd.Function):
    """``logits.gather(index) - logsumexp(logits)`` row by row (float32/float64), with the backward in one pass:
    ``d/dlogits = g * (onehot(index) - softmax(logits))``, written into one ``[.., V]`` tensor (row by row, from
    the saved logits and log-normalizers), instead of autograd's zero-filled gather gradient, per-row softmax
    gradients, their concatenation and their sum."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, logits: Tensor, index: Tensor) -> Tensor:
        selected = logits.gather(-1, index.unsqueeze(-1)).squeeze(-1)
        if logits.ndim >= 2:
            lse = torch.stack([torch.logsumexp(row, dim=-1) for row in logits])
        else:
            lse = torch.logsumexp(logits, dim=-1)
        ctx.save_for_backward(logits, index, lse)
        return selected - lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor, None]:
        logits, index, lse = ctx.saved_tensors  # type: ignore[attr-defined]
        grad = grad.contiguous()
        out = torch.empty_like(logits)
        if logits.ndim >= 2:
            rows = zip(logits, lse, grad, out, strict=True)
        else:
            rows = iter([(logits, lse, grad, out)])
        for x, norm, g, o in rows:  # o = -g * softmax(x)
            torch.sub(x, norm.unsqueeze(-1), out=o)
            o.exp_().mul_(g.unsqueeze(-1).neg())
        out.scatter_add_(-1, index.unsqueeze(-1), grad.unsqueeze(-1))
        return out, None


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of the categorical distribution ``softmax(logits)`` over the last axis.

    ``H = -Σ_v p_v log p_v`` with ``p = softmax(logits)``; ``[B, T, V]`` → ``[B, T]`` (any
    leading shape works). Computed row by row over the first axis to bound peak memory (as TRL's
    chunked version), via ``log_softmax`` so that ``-inf`` logits (banned tokens) contribute 0
    and produce neither NaN values nor NaN gradients.
    """

    def _entropy(lg: Tensor) -> Tensor:
        logp = F.log_softmax(lg, dim=-1)
        finite_logp = logp.clamp(min=torch.finfo(logp.dtype).min)
        return -(logp.exp() * finite_logp).sum(dim=-1)

    if logits.ndim >= 2:
        return torch.stack([_entropy(row) for row in logits])
    return _entropy(logits)


def masked_sum(x: Tensor, mask: Tensor, dim: int | tuple[int, ...] | None = None) -> Tensor:
    """``Σ x·m`` over ``dim`` (all axes if ``None``); masked entries are ignored even if NaN."""
    m = _as_bool_mask(mask, x)
    xm = torch.where(m, x, torch.zeros_like(x))
    return xm.sum() if dim is None else xm.sum(dim=dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | tuple[int, ...] | None = None) -> Tensor:
    """``Σ x·m / Σ m`` over ``dim`` (all axes if ``None``), TRL/OpenRLHF ``masked_mean``.

    An all-masked reduction gives ``0/0 = NaN`` on purpose.
    """
    m = _as_bool_mask(mask, x)
    count = m.sum() if dim is None else m.sum(dim=dim)
    return masked_sum(x, m, dim) / count.to(x.dtype)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of the valid entries of ``x`` (over all axes), as TRL's ``masked_var``.

    ``var = masked_mean((x - masked_mean(x))²)``, times the Bessel correction ``n / (n - 1)``
    when ``unbiased`` (``n`` = number of valid entries). Raises ``ValueError`` when
    ``unbiased`` and ``n ≤ 1``, like TRL, because the estimate is undefined.
    """
    m = _as_bool_mask(mask, x)
    mean = masked_mean(x, m)
    var = masked_mean((x - mean) ** 2, m)
    if unbiased:
        n = int(m.sum())
        if n == 0:
            raise ValueError("masked_var: the mask has no valid entries")
        if n == 1:
            raise ValueError("masked_var: the mask has one valid entry; the unbiased variance is undefined")
        var = var * (n / (n - 1))
    return var


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Normalise the valid entries of ``x`` to mean 0 and (Bessel-corrected) variance 1.

    As TRL's ``masked_whiten``: ``(x - μ) / sqrt(σ² + eps)`` with ``μ = masked_mean(x)`` and
    ``σ² = masked_var(x, unbiased=True)`` over all valid entries; with ``shift_mean=False`` the
    mean is added back (``(x - μ)/sqrt(σ² + eps) + μ``), i.e. only the scale changes.

    Choice at masked positions: unlike TRL (which whitens them too), the result is **0** at
    masked positions, so it can be summed without a mask and garbage/NaN there never leaks.
    Needs at least two valid entries (see :func:`masked_var`).
    """
    m = _as_bool_mask(mask, x)
    mean = masked_mean(x, m)
    var = masked_var(x, m, unbiased=True)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(m, whitened, torch.zeros_like(whitened))


# --------------------------------------------------------------------------------------------
# KL
# --------------------------------------------------------------------------------------------


def kl_estimators(logp: Tensor, ref_logp: Tensor) -> dict[str, Tensor]:
    r"""Per-token estimators of ``KL(π || π_ref)`` from samples of ``π`` (Schulman 2020).

    With ``log r = ref_logp - logp = log(π_ref(x)/π(x))`` for ``x ~ π``:

    * ``k1 = -log r = logp - ref_logp`` — unbiased, high variance, can be negative;
    * ``k2 = ½ (log r)²`` — biased (its expectation is ``½ E_π[(log π/π_ref)²]``, which only
      matches the KL to second order as ``π_ref → π``), low variance, ≥ 0;
    * ``k3 = (r - 1) - log r`` — unbiased (``E_π[r] = 1``) and always ≥ 0 since ``e^y ≥ 1 + y``.

    J. Schulman, "Approximating KL Divergence" (2020); same names in TRL, OpenRLHF and verl.
    Returns ``{"k1", "k2", "k3"}`` tensors of the input shape.
    """
    _check_same_shape(logp, ref_logp, "logp and ref_logp")
    log_r = ref_logp - logp
    return {
        "k1": -log_r,
        "k2": 0.5 * log_r**2,
        "k3": torch.expm1(log_r) - log_r,
    }


def kl_penalty(logp: Tensor, ref_logp: Tensor, estimator: KLEstimator = "k1") -> Tensor:
    """Per-token KL penalty ``KL(π || π_ref)`` with one of :func:`kl_estimators`' estimators.

    ``k1 = logp - ref_logp`` (TRL PPO/RLOO default, added to the reward as ``-β·k1``),
    ``k2 = ½(logp - ref_logp)²``, ``k3 = exp(ref_logp - logp) - 1 - (ref_logp - logp)``
    (GRPO's per-token KL, DeepSeekMath; Schulman 2020).
    """
    _check_same_shape(logp, ref_logp, "logp and ref_logp")
    log_r = ref_logp - logp
    if estimator == "k1":
        return -log_r
    if estimator == "k2":
        return 0.5 * log_r**2
    if estimator == "k3":
        return torch.expm1(log_r) - log_r
    raise ValueError(f"estimator must be 'k1', 'k2' or 'k3', got {estimator!r}")


class FixedKLController:
    """Constant KL coefficient β (Ziegler et al. 2019); ``update`` is a no-op."""

    def __init__(self, coef: float) -> None:
        if coef < 0:
            raise ValueError(f"KL coefficient must be >= 0, got {coef}")
        self.value = float(coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Do nothing: the coefficient stays fixed."""

    def __repr__(self) -> str:
        return f"FixedKLController(coef={self.value})"


class AdaptiveKLController:
    """Adaptive KL coefficient of Ziegler et al. (2019), "Fine-Tuning LMs from Human Preferences".

    A proportional controller steering the observed KL towards ``target``::

        error = clip(current_kl / target - 1, -0.2, 0.2)
        β    ← β · (1 + error · n_steps / horizon)

    identical to TRL's ``AdaptiveKLController`` (``n_steps`` is usually the batch size).
    """

    def __init__(self, init_coef: float, target: float, horizon: float) -> None:
        if init_coef < 0:
            raise ValueError(f"init_coef must be >= 0, got {init_coef}")
        if target <= 0:
            raise ValueError(f"target KL must be > 0, got {target}")
        if horizon <= 0:
            raise ValueError(f"horizon must be > 0, got {horizon}")
        self.value = float(init_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Multiply β by ``1 + clip(current_kl/target - 1, ±0.2) · n_steps/horizon``."""
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def __repr__(self) -> str:
        return f"AdaptiveKLController(value={self.value}, target={self.target}, horizon={self.horizon})"


def best_of_n_kl(n: int) -> float:
    """Analytic ``KL(π_BoN || π_base)`` of best-of-``n`` sampling: ``log n - (n - 1)/n``.

    Stiennon et al. (2020), Appendix G.3, and Gao, Schulman & Hilton (2022), "Scaling Laws for
    Reward Model Overoptimization". Exact when the reward has a continuous distribution (no
    ties); for a discrete base distribution it is an upper bound (Beirami et al. 2024,
    "Theoretical guarantees on the best-of-n alignment policy"), tight when every outcome has
    small probability. ``best_of_n_kl(1) == 0``.
    """
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    n = int(n)
    return math.log(n) - (n - 1) / n


# --------------------------------------------------------------------------------------------
# advantages and PPO
# --------------------------------------------------------------------------------------------


def gae(
    rewards: Tensor,
    values: Tensor,
    mask: Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[Tensor, Tensor]:
    r"""Generalized advantage estimation over response tokens (Schulman et al. 2016).

    For each row, over its valid tokens in order ``t = 0..L-1``::

        δ_t = r_t + γ·V_{t+1} - V_t          (V_L = 0: the episode ends at the last valid token)
        A_t = δ_t + γλ·A_{t+1}               (A_L = 0)
        R_t = A_t + V_t                      (returns, the value-function targets)

    as in TRL's PPO trainer for right-padded responses (where padded rewards/values are zeroed
    first). Rewards and values at masked positions are ignored, whatever they contain; masked
    positions of both outputs are 0. Masked positions are *skipped*, so an interior hole in the
    mask links the tokens on either side of it (for right padding this is the TRL recursion).

    Args:
        rewards, values, mask: ``[B, T]``. Pass detached values (no gradient is wanted through
            the targets); this function does not detach for you.
        gamma: discount γ. lam: GAE λ.

    Returns:
        ``(advantages, returns)``, both ``[B, T]``, not whitened (see :func:`masked_whiten`).
    """
    _check_same_shape(rewards, values, "rewards and values")
    m = _as_bool_mask(mask, rewards)
    if rewards.ndim != 2:
        raise ValueError(f"gae expects [B, T] tensors, got shape {tuple(rewards.shape)}")
    if rewards.shape[1] == 0:
        return torch.zeros_like(rewards), torch.zeros_like(rewards)
    zeros = torch.zeros_like(rewards[:, 0])
    next_value = zeros
    last_adv = zeros
    adv_reversed = []
    for t in reversed(range(rewards.shape[1])):
        valid_t = m[:, t]
        r_t = torch.where(valid_t, rewards[:, t], zeros)
        v_t = torch.where(valid_t, values[:, t], zeros)
        delta = r_t + gamma * next_value - v_t
        adv_t = delta + gamma * lam * last_adv
        last_adv = torch.where(valid_t, adv_t, last_adv)
        next_value = torch.where(valid_t, v_t, next_value)
        adv_reversed.append(torch.where(valid_t, adv_t, zeros))
    advantages = torch.stack(adv_reversed[::-1], dim=1)
    returns = torch.where(m, advantages + values, torch.zeros_like(advantages))
    return advantages, returns


def ppo_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_range: float = 0.2,
) -> tuple[Tensor, dict[str, Tensor]]:
    r"""PPO clipped surrogate loss (Schulman et al. 2017), token-level as in TRL.

    ``ratio = exp(logp - old_logp)``::

        pg_losses  = -A · ratio
        pg_losses2 = -A · clip(ratio, 1 - ε, 1 + ε)
        loss       = masked_mean(max(pg_losses, pg_losses2))

    Stats (detached scalars, masked means over valid tokens):
    ``"clipfrac"`` = mean(pg_losses2 > pg_losses) (TRL's definition: the clipped branch was the
    active, pessimistic one); ``"approxkl"`` = ½·mean((logp - old_logp)²); ``"ratio"`` =
    mean(ratio). (TRL averages ``approxkl`` and ``ratio`` without the mask; here padding is
    excluded everywhere.)
    """
    _check_same_shape(logp, old_logp, "logp and old_logp")
    _check_same_shape(logp, advantages, "logp and advantages")
    m = _as_bool_mask(mask, logp)
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    pg_losses = -advantages * ratio
    pg_losses2 = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.max(pg_losses, pg_losses2), m)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((pg_losses2 > pg_losses).to(logp.dtype), m),
            "approxkl": 0.5 * masked_mean(log_ratio**2, m),
            "ratio": masked_mean(ratio, m),
        }
    return loss, stats


def ppo_value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip_range_value: float = 0.2,
) -> tuple[Tensor, dict[str, Tensor]]:
    r"""PPO clipped value loss, as in TRL / OpenAI baselines.

    ``V_clipped = old + clip(V - old, -ε, ε)``::

        loss = ½ · masked_mean( max((V - R)², (V_clipped - R)²) )

    Stats: ``"clipfrac"`` = masked mean of ``(V_clipped - R)² > (V - R)²`` (detached).
    """
    _check_same_shape(values, old_values, "values and old_values")
    _check_same_shape(values, returns, "values and returns")
    m = _as_bool_mask(mask, values)
    v_clipped = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    vf_losses1 = (values - returns) ** 2
    vf_losses2 = (v_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(vf_losses1, vf_losses2), m)
    with torch.no_grad():
        stats = {"clipfrac": masked_mean((vf_losses2 > vf_losses1).to(values.dtype), m)}
    return loss, stats


def _grouped(scores: Tensor, k: int, name: str) -> Tensor:
    if scores.ndim != 1:
        raise ValueError(f"{name}: scores must be 1-D [N*k], got shape {tuple(scores.shape)}")
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise ValueError(f"{name}: k must be a positive integer, got {k!r}")
    if scores.numel() == 0 or scores.numel() % k != 0:
        raise ValueError(f"{name}: {scores.numel()} scores cannot be split into groups of k={k}")
    return scores.view(-1, int(k))


def rloo_advantages(scores: Tensor, k: int) -> Tensor:
    r"""REINFORCE leave-one-out advantages (Ahmadian et al. 2024, "Back to Basics").

    ``scores`` is ``[N*k]``: N groups of k consecutive samples for the same prompt. Each sample's
    baseline is the mean of the *other* ``k - 1`` samples of its group::

        A_i = r_i - (Σ_group r - r_i)/(k - 1)  =  k/(k - 1) · (r_i - mean_group r)

    Requires ``k ≥ 2`` (``ValueError`` otherwise). (TRL's RLOO trainer lays scores out as
    ``[k, N]``; this function uses the consecutive ``[N, k]`` layout.)
    """
    groups = _grouped(scores, k, "rloo_advantages")
    if k < 2:
        raise ValueError(f"rloo_advantages needs k >= 2 samples per group, got k={k}")
    baseline = (groups.sum(dim=1, keepdim=True) - groups) / (k - 1)
    return (groups - baseline).reshape(-1)


def grpo_advantages(
    scores: Tensor,
    k: int,
    eps: float = 1e-4,
    scale: Literal["group", "batch", "none"] = "group",
) -> Tensor:
    r"""GRPO group-relative advantages (Shao et al. 2024, DeepSeekMath), as in TRL.

    ``scores`` is ``[N*k]``, N groups of k consecutive samples. ``A_i = (r_i - mean_group r) / (σ + eps)``
    where σ depends on ``scale`` (TRL's ``scale_rewards``):

    * ``"group"``: the std of the sample's own group (the original GRPO);
    * ``"batch"``: one std over the whole batch (the mean is still the group mean);
    * ``"none"``: no division, ``A_i = r_i - mean_group r`` (Dr. GRPO, Liu et al. 2025).

    Like TRL this uses the **unbiased** ``torch.std`` (divides by n - 1), and, like TRL, a std
    taken over a single value (k = 1, or a batch of one) is defined as 0 instead of NaN, so
    those advantages are 0.
    """
    groups = _grouped(scores, k, "grpo_advantages")
    centered = groups - groups.mean(dim=1, keepdim=True)
    if scale == "none":
        return centered.reshape(-1)
    if scale == "group":
        std = groups.std(dim=1, keepdim=True) if k > 1 else torch.zeros_like(groups[:, :1])
    elif scale == "batch":
        std = scores.std() if scores.numel() > 1 else torch.zeros_like(scores[0])
    else:
        raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")
    return (centered / (std + eps)).reshape(-1)


# --------------------------------------------------------------------------------------------
# Direct preference optimization
# --------------------------------------------------------------------------------------------
#
# Every loss below is a function of per-sequence log-probabilities, log π(y|x) summed over the
# completion tokens (prompt masked), of the chosen (y_w) and rejected (y_l) completion under the
# policy π_θ and, except SimPO, the frozen reference π_ref. Notation (TRL's):
#
#     ρ_w = log π_θ(y_w|x) - log π_ref(y_w|x),   ρ_l likewise,   Δ = ρ_w - ρ_l.
#
# Each returns a :class:`PreferenceLoss`: per-pair losses ``[B]`` (reduce with ``.mean()``) and the
# detached implicit rewards of both sides, from which TRL's ``rewards/chosen``, ``rewards/rejected``,
# ``rewards/margins`` and ``rewards/accuracies`` are the batch means.


class PreferenceLoss(NamedTuple):
    """Per-pair losses ``[B]`` and the (detached) implicit rewards of the chosen and rejected sides."""

    losses: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor


def _dpo_logratios(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
) -> tuple[Tensor, Tensor]:
    _check_same_shape(
        policy_chosen_logps, policy_rejected_logps, "policy_chosen_logps and policy_rejected_logps"
    )
    _check_same_shape(policy_chosen_logps, ref_chosen_logps, "policy_chosen_logps and ref_chosen_logps")
    _check_same_shape(
        policy_rejected_logps, ref_rejected_logps, "policy_rejected_logps and ref_rejected_logps"
    )
    return policy_chosen_logps - ref_chosen_logps, policy_rejected_logps - ref_rejected_logps


def _check_beta(beta: float) -> None:
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")


def dpo_sigmoid_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> PreferenceLoss:
    r"""DPO (Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is Secretly a
    Reward Model", eq. 7), with label smoothing ε = conservative DPO (cDPO, Mitchell 2023, "A note on
    DPO with noisy preferences and relationship to IPO")::

        loss = -(1 - ε)·logσ(β·Δ) - ε·logσ(-β·Δ)

    ε = 0 is plain DPO (TRL's ``loss_type="sigmoid"``); ε > 0 assumes each label is flipped with
    probability ε, so the loss is the cross-entropy against the soft target 1 - ε and, unlike plain
    DPO, has a finite minimiser Δ* = log((1-ε)/ε)/β. (TRL ≤ 0.28 had cDPO as ``sigmoid`` with
    ``label_smoothing``; TRL ≥ 0.29 dropped it.) Implicit rewards: β·ρ_w and β·ρ_l.
    """
    _check_beta(beta)
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    rho_w, rho_l = _dpo_logratios(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    z = beta * (rho_w - rho_l)
    losses = -(1.0 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    return PreferenceLoss(losses, beta * rho_w.detach(), beta * rho_l.detach())


def ipo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
) -> PreferenceLoss:
    r"""IPO (Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
    Preferences", eq. 17), with τ = ``beta``::

        loss = (h - 1/(2τ))²,   h = Δ                              (the paper, no lengths given)
                                h = ρ_w/|y_w| - ρ_l/|y_l|          (lengths given: TRL's form)

    IPO regresses the log-ratio margin onto the constant 1/(2τ) instead of pushing it to infinity,
    so it does not overfit deterministic preferences. TRL's ``loss_type="ipo"`` divides each
    log-ratio by its completion's token count (per-token average; TRL notes the IPO authors
    confirmed the paper's results used this form); pass ``chosen_lengths``/``rejected_lengths`` (the
    completion token counts, clamped to ≥ 1) for it. Implicit rewards: β·ρ_w and β·ρ_l (unnormalised,
    as TRL logs them).
    """
    _check_beta(beta)
    rho_w, rho_l = _dpo_logratios(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    if (chosen_lengths is None) != (rejected_lengths is None):
        raise ValueError("ipo_loss: give both chosen_lengths and rejected_lengths, or neither")
    if chosen_lengths is not None and rejected_lengths is not None:
        h = rho_w / chosen_lengths.clamp(min=1) - rho_l / rejected_lengths.clamp(min=1)
    else:
        h = rho_w - rho_l
    losses = (h - 1.0 / (2.0 * beta)) ** 2
    return PreferenceLoss(losses, beta * rho_w.detach(), beta * rho_l.detach())


def robust_dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.1,
) -> PreferenceLoss:
    r"""Robust DPO (rDPO; Chowdhury et al. 2024, "Provably Robust DPO: Aligning Language Models with
    Noisy Feedback", eq. 8), for labels flipped with a known rate ε = ``label_smoothing`` < 1/2::

        loss = [ (1 - ε)·ℓ(Δ) - ε·ℓ(-Δ) ] / (1 - 2ε),     ℓ(Δ) = -logσ(β·Δ)
             = [ -(1 - ε)·logσ(β·Δ) + ε·logσ(-β·Δ) ] / (1 - 2ε)

    An unbiased estimate of the clean-label DPO loss under label noise (it can be negative). Unlike
    cDPO, the noisy-label term is *subtracted*. TRL's ``loss_type="robust"`` is this formula.
    Implicit rewards: β·ρ_w and β·ρ_l.
    """
    _check_beta(beta)
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing (the flip rate) must be in [0, 0.5), got {label_smoothing}")
    rho_w, rho_l = _dpo_logratios(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    z = beta * (rho_w - rho_l)
    eps = label_smoothing
    losses = (-(1.0 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1.0 - 2.0 * eps)
    return PreferenceLoss(losses, beta * rho_w.detach(), beta * rho_l.detach())


def hinge_dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
) -> PreferenceLoss:
    r"""Hinge loss on the DPO margin, after SLiC (Zhao et al. 2023, "SLiC-HF: Sequence Likelihood
    Calibration with Human Feedback", eq. 1; as in TRL's ``loss_type="hinge"`` and RSO, Liu et al. 2023)::

        loss = max(0, 1 - β·Δ)

    SLiC's calibration loss is max(0, δ - log π(y_w) + log π(y_l)); here the log-likelihoods are
    reference-normalised log-ratios and the margin is δ = 1/β. Pairs with β·Δ ≥ 1 get no gradient.
    Implicit rewards: β·ρ_w and β·ρ_l.
    """
    _check_beta(beta)
    rho_w, rho_l = _dpo_logratios(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    losses = torch.relu(1.0 - beta * (rho_w - rho_l))
    return PreferenceLoss(losses, beta * rho_w.detach(), beta * rho_l.detach())


def simpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
    *,
    beta: float = 2.0,
    gamma: float = 1.0,
    label_smoothing: float = 0.0,
) -> PreferenceLoss:
    r"""SimPO (Meng et al. 2024, "SimPO: Simple Preference Optimization with a Reference-Free
    Reward", eq. 6): reference-free, the reward is the length-normalised log-likelihood::

        r(x, y) = (β/|y|)·log π_θ(y|x)
        loss = -(1 - ε)·logσ(r_w - r_l - γ) - ε·logσ(-(r_w - r_l - γ))

    γ > 0 is the target reward margin; ε (default 0) is label smoothing as in TRL's CPO trainer
    (``loss_type="simpo"``, where ``simpo_gamma`` is γ/β). The paper uses β ≈ 2-2.5 and γ/β ≈ 0.5.
    ``chosen_lengths``/``rejected_lengths`` are completion token counts (clamped to ≥ 1). Implicit
    rewards: r_w and r_l.
    """
    _check_beta(beta)
    _check_same_shape(
        policy_chosen_logps, policy_rejected_logps, "policy_chosen_logps and policy_rejected_logps"
    )
    _check_same_shape(policy_chosen_logps, chosen_lengths, "policy_chosen_logps and chosen_lengths")
    _check_same_shape(policy_rejected_logps, rejected_lengths, "policy_rejected_logps and rejected_lengths")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    r_w = beta * policy_chosen_logps / chosen_lengths.clamp(min=1)
    r_l = beta * policy_rejected_logps / rejected_lengths.clamp(min=1)
    z = r_w - r_l - gamma
    losses = -(1.0 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    return PreferenceLoss(losses, r_w.detach(), r_l.detach())


def chosen_nll_loss(policy_chosen_logps: Tensor, chosen_lengths: Tensor) -> Tensor:
    r"""Per-pair negative log-likelihood of the chosen completion per token, ``-log π_θ(y_w|x)/|y_w|``.

    Added with a weight α to a preference loss (``loss + α·nll``) it keeps the chosen completions
    likely: RPO (Pang et al. 2024, "Iterative Reasoning Preference Optimization", eq. 1, which
    normalises by length; TRL's former ``rpo_alpha``). Returns ``[B]`` (mean it for the batch term).
    """
    _check_same_shape(policy_chosen_logps, chosen_lengths, "policy_chosen_logps and chosen_lengths")
    return -policy_chosen_logps / chosen_lengths.clamp(min=1)


def modpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    margin_chosen: Tensor,
    margin_rejected: Tensor,
    *,
    beta: float = 0.1,
    weight: float = 0.5,
) -> PreferenceLoss:
    r"""MODPO (Zhou et al. 2023, "Beyond One-Preference-Fits-All Alignment: Multi-Objective Direct
    Preference Optimization", eq. 8) for two objectives: the preference r₁ behind the labels and a
    second, *fixed* reward r₂ (e.g. brevity or another reward model), weighted w and 1 - w::

        loss = -logσ( (1/w)·[ β·Δ - (1 - w)·(r₂(x, y_w) - r₂(x, y_l)) ] )

    The policy optimal for the combined reward w·r₁ + (1-w)·r₂ under a KL(π‖π_ref) constraint
    satisfies β·log(π/π_ref) = w·r₁ + (1-w)·r₂ + const, so r₁ = (β·ρ - (1-w)·r₂)/w; the loss is the
    Bradley-Terry likelihood of the labels under that r₁. ``w = 1`` is DPO exactly. ``weight`` is w in
    (0, 1]; ``margin_chosen``/``margin_rejected`` are r₂ of each side (no gradient flows into them).
    Implicit rewards: r₁ of each side up to a shared constant, (β·ρ - (1-w)·r₂)/w.
    """
    _check_beta(beta)
    if not 0.0 < weight <= 1.0:
        raise ValueError(f"weight must be in (0, 1], got {weight}")
    rho_w, rho_l = _dpo_logratios(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    _check_same_shape(margin_chosen, rho_w, "margin_chosen and policy_chosen_logps")
    _check_same_shape(margin_rejected, rho_l, "margin_rejected and policy_rejected_logps")
    r1_w = (beta * rho_w - (1.0 - weight) * margin_chosen.detach()) / weight
    r1_l = (beta * rho_l - (1.0 - weight) * margin_rejected.detach()) / weight
    losses = -F.logsigmoid(r1_w - r1_l)
    return PreferenceLoss(losses, r1_w.detach(), r1_l.detach())


# --------------------------------------------------------------------------------------------
# Offline RL from a fixed dataset
# --------------------------------------------------------------------------------------------
# Filtered MLE, reward-weighted regression and reward-conditioned training (Hu et al. 2023,
# "Aligning Language Models with Offline Learning from Human Feedback") and A-LoL (Baheti et al.
# 2024, "Leftover Lunch: Advantage-based Offline Reinforcement Learning for Language Models",
# arXiv 2305.14718, the seed "Improving Language Models with Advantage-based Offline Policy
# Gradients") all train on responses that were sampled and scored *once*, before training. Each is a
# completion-only likelihood loss with a weight per sequence (:func:`weighted_nll`); the functions
# below compute those weights from the proxy scores.


def weighted_nll(
    logp: Tensor, mask: Tensor, seq_weights: Tensor, token_weights: Tensor | None = None
) -> Tensor:
    r"""Weighted completion-only negative log-likelihood, normalised by the number of completion tokens.

    ``logp [B, T]`` are the policy's log-probs of the completion tokens, ``mask [B, T]`` marks them,
    ``seq_weights [B]`` weighs each sequence and the optional ``token_weights [B, T]`` each token::

        L = Σ_i w_i Σ_t c_it m_it (−log π(y_it | x_i, y_i,<t)) / Σ_i Σ_t m_it

    With every weight 1 this is exactly the SFT loss (mean token cross-entropy over completions), so a
    weighting keeps SFT's learning-rate scale. The weights are constants: they are detached here.
    """
    m = _as_bool_mask(mask, logp)
    if seq_weights.shape != logp.shape[:1]:
        raise ValueError(f"seq_weights has shape {tuple(seq_weights.shape)}, expected ({logp.shape[0]},)")
    w = seq_weights.detach().to(logp.dtype)[:, None].expand_as(logp)
    if token_weights is not None:
        _check_same_shape(token_weights, logp, "token_weights and logp")
        w = w * token_weights.detach().to(logp.dtype)
    per_token = torch.where(m, -logp * w, torch.zeros_like(logp))
    return per_token.sum() / m.sum().clamp(min=1).to(logp.dtype)


def top_quantile_mask(rewards: Tensor, fraction: float, groups: Tensor | None = None) -> Tensor:
    r"""Filtered MLE's selection: ``True`` for the samples in the top ``fraction`` by reward.

    A sample is kept when ``r_i ≥ q_{1 − fraction}``, the ``(1 − fraction)`` quantile of the rewards
    (``torch.quantile``, linear interpolation; ties at the threshold are all kept). With ``groups``
    (``[N]`` integer ids, e.g. the prompt index) the quantile is taken within each group, so every
    prompt keeps its own best samples: with k samples per prompt and ``fraction = 1/k`` that is
    best-of-k selection. Filtered MLE (Hu et al. 2023) then fine-tunes on the kept samples only.
    """
    if rewards.ndim != 1 or rewards.numel() == 0:
        raise ValueError(f"rewards must be a non-empty 1-D tensor, got shape {tuple(rewards.shape)}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    r = rewards.double()
    if groups is None:
        return r >= torch.quantile(r, 1.0 - fraction)
    _check_same_shape(groups, rewards, "groups and rewards")
    keep = torch.zeros_like(rewards, dtype=torch.bool)
    for g in torch.unique(groups):
        idx = groups == g
        keep[idx] = r[idx] >= torch.quantile(r[idx], 1.0 - fraction)
    return keep


def rwr_weights(rewards: Tensor, temperature: float, max_weight: float | None = None) -> Tensor:
    r"""Reward-weighted regression weights (Peters & Schaal 2007; Hu et al. 2023's RWR for LMs).

    RWR maximises ``E_(x,y)~D [exp(r(x, y) / T) · log π(y | x)]``. The exponentiated rewards are
    self-normalised over the dataset (mean weight 1, so the loss keeps SFT's scale) and then clipped
    at ``max_weight`` to bound the variance a few outliers would bring::

        w_i = min( exp(r_i / T) / ((1/N) Σ_j exp(r_j / T)),  w_max )

    computed in log space (``logsumexp``), so large ``r / T`` does not overflow. Smaller ``T``
    concentrates the weight on the best samples (``T → 0`` approaches filtering to the maximum,
    ``T → ∞`` plain SFT on the whole dataset).
    """
    if rewards.ndim != 1 or rewards.numel() == 0:
        raise ValueError(f"rewards must be a non-empty 1-D tensor, got shape {tuple(rewards.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    z = rewards.double() / temperature
    w = torch.exp(z - (torch.logsumexp(z, dim=0) - math.log(z.numel())))
    if max_weight is not None:
        w = w.clamp(max=max_weight)
    return w.to(rewards.dtype if rewards.is_floating_point() else torch.float32)


def reward_quantile_bins(rewards: Tensor, num_bins: int) -> tuple[Tensor, Tensor]:
    r"""Reward-conditioned training's tokens: the reward quantile bin ``0..K-1`` of each sample.

    The bin edges are the dataset's reward quantiles at ``k/K`` for ``k = 1..K-1``, so the bins hold
    about equal numbers of samples; sample i gets bin ``b_i = #{k : r_i ≥ e_k}`` (the best samples get
    ``K − 1``). Decision-transformer-style training (Chen et al. 2021; the "DT" of Hu et al. 2023)
    prefixes the prompt with the token of ``b_i`` and generates conditioned on the top token.
    Returns ``(bins [N] long, edges [K-1])``.
    """
    if rewards.ndim != 1 or rewards.numel() == 0:
        raise ValueError(f"rewards must be a non-empty 1-D tensor, got shape {tuple(rewards.shape)}")
    if isinstance(num_bins, bool) or int(num_bins) != num_bins or num_bins < 2:
        raise ValueError(f"num_bins must be an integer >= 2, got {num_bins!r}")
    r = rewards.double()
    qs = torch.arange(1, num_bins, dtype=torch.float64) / num_bins
    edges = torch.quantile(r, qs)
    bins = (r[:, None] >= edges[None, :]).sum(dim=1)
    return bins.long(), edges.to(rewards.dtype if rewards.is_floating_point() else torch.float32)


ALoLVariant = Literal["alol", "alol_seq", "ref_free"]


def alol_importance_weights(
    logp: Tensor, ref_logp: Tensor, mask: Tensor, clip: float, per_token: bool = False
) -> Tensor:
    r"""A-LoL's clipped importance weight of the learner over the reference (Baheti et al. 2024).

    Sequence level (A-LoL): ``ρ_i = π_θ(y_i|x_i) / π_ref(y_i|x_i) = exp(Σ_t (log π_θ − log π_ref))``;
    per token (A-LoL seq.): ``ρ_it = π_θ(y_it|…) / π_ref(y_it|…)``. Either is clipped, PPO-style, to
    ``[1 − ε, 1 + ε]`` (``clip = ε``; the paper uses ε = 0.9). Returns ``[B]`` (sequence) or
    ``[B, T]`` (per token, 0 at masked positions), detached: the weight scales the gradient of
    ``log π_θ`` and is not differentiated itself.
    """
    _check_same_shape(logp, ref_logp, "logp and ref_logp")
    m = _as_bool_mask(mask, logp)
    if not clip > 0:
        raise ValueError(f"clip must be > 0, got {clip!r}")
    lo, hi = max(0.0, 1.0 - clip), 1.0 + clip
    diff = torch.where(m, logp.detach() - ref_logp.detach(), torch.zeros_like(logp))
    if per_token:
        return torch.where(m, diff.exp().clamp(lo, hi), torch.zeros_like(logp))
    return diff.sum(dim=1).exp().clamp(lo, hi)


def alol_loss(
    logp: Tensor,
    ref_logp: Tensor | None,
    mask: Tensor,
    advantages: Tensor,
    clip: float = 0.9,
    variant: ALoLVariant = "alol",
) -> tuple[Tensor, dict[str, Tensor]]:
    r"""Advantage-Leftover-Lunch offline policy gradient (Baheti et al. 2024, the seed's A-LoL).

    The whole response is one action; with ``A = R(x, y) − V_πref(x)`` (the reference policy's value,
    see the recipe) the gradient is ``E_D[A⁺ · ρ · ∇ log π_θ(y|x)]``: data points with negative
    advantage are dropped (``A⁺ = max(A, 0)``), and ``ρ`` is the clipped importance weight of
    :func:`alol_importance_weights`. As a loss (normalised like :func:`weighted_nll`)::

        alol:     L = Σ_i A⁺_i · clip(ρ_i) · Σ_t −log π_θ(y_it)        / Σ_i |y_i|
        alol_seq: L = Σ_i A⁺_i · Σ_t clip(ρ_it) · −log π_θ(y_it)       / Σ_i |y_i|
        ref_free: L = Σ_i A⁺_i · Σ_t −log π_θ(y_it)                    / Σ_i |y_i|

    ``ref_logp [B, T]`` is needed except for ``ref_free`` (which ignores it). Stats: the mean advantage of
    the batch, the share of positive advantages, and the mean importance weight and the share
    clipped (per sequence, or per token for ``alol_seq``).
    """
    if advantages.shape != logp.shape[:1]:
        raise ValueError(f"advantages has shape {tuple(advantages.shape)}, expected ({logp.shape[0]},)")
    m = _as_bool_mask(mask, logp)
    adv = advantages.detach().to(logp.dtype).clamp(min=0.0)
    stats = {"alol/advantage": adv.mean(), "alol/positive_fraction": (advantages > 0).to(logp.dtype).mean()}
    if variant == "ref_free":
        return weighted_nll(logp, m, adv), stats
    if variant not in ("alol", "alol_seq"):
        raise ValueError(f"variant must be 'alol', 'alol_seq' or 'ref_free', got {variant!r}")
    if ref_logp is None:
        raise ValueError(f"alol_loss: variant {variant!r} needs ref_logp")
    per_token = variant == "alol_seq"
    rho = alol_importance_weights(logp, ref_logp, m, clip, per_token=per_token)
    raw = torch.where(m, (logp - ref_logp).detach(), torch.zeros_like(logp))
    raw = raw.exp() if per_token else raw.sum(dim=1).exp()
    clipped = (raw < max(0.0, 1.0 - clip)) | (raw > 1.0 + clip)
    if per_token:
        stats["alol/importance_weight"] = masked_mean(rho, m)
        stats["alol/clipfrac"] = masked_mean(clipped.to(logp.dtype), m)
        return weighted_nll(logp, m, adv, token_weights=rho), stats
    stats["alol/importance_weight"] = rho.mean()
    stats["alol/clipfrac"] = clipped.to(logp.dtype).mean()
    return weighted_nll(logp, m, adv * rho), stats


# --------------------------------------------------------------------------------- distillation
def token_kl(p_logits: Tensor, q_logits: Tensor, mask: Tensor) -> Tensor:
    r"""Per-sequence sum of full-vocabulary token KLs, ``Σ_t KL(p(·|y<t) || q(·|y<t))`` over ``mask`` ([B]).

    ``p_logits``, ``q_logits``: ``[B, T, V]`` next-token logits of two models at the same positions. Along
    sequences sampled from ``p``, the sum is an unbiased, low-variance estimate of the sequence-level
    ``KL(p || q)`` (the chain rule of KL; used as the distance between LMs by Tiapkin et al. 2025, "On Teacher
    Hacking in Language Model Distillation", and as the distillation loss by Agarwal et al. 2024, GKD).
    """
    m = _as_bool_mask(mask, p_logits[..., 0])
    logp, logq = F.log_softmax(p_logits.float(), -1), F.log_softmax(q_logits.float(), -1)
    kl = (logp.exp() * (logp - logq)).sum(-1)
    return torch.where(m, kl, torch.zeros_like(kl)).sum(-1)


def distillation_loss(teacher_logits: Tensor, student_logits: Tensor, mask: Tensor) -> Tensor:
    r"""Token-level forward-KL distillation (Hinton et al. 2015; Agarwal et al. 2024, GKD with a fixed dataset):

        L = Σ_{i,t} m_it KL(p_teacher(·|y_i,<t) || p_student(·|y_i,<t)) / Σ_{i,t} m_it

    the teacher's whole next-token distribution as the soft target at every labelled position (the teacher is
    detached). The sequences may come from a fixed teacher-sampled dataset (offline) or from the student
    itself (on-policy).
    """
    m = _as_bool_mask(mask, student_logits[..., 0])
    return token_kl(teacher_logits.detach(), student_logits, m).sum() / m.sum()


# --------------------------------------------------------------------------------- goal-conditioned reward models
def goal_contrastive_loss(states: Tensor, goals: Tensor, targets: Tensor | None = None, temperature: float = 1.0) -> Tensor:  # fmt: skip
    r"""InfoNCE between source states and goal states (Nath et al. 2024, "Learning Goal-Conditioned Representations
    for Language Reward Models"; van den Oord et al. 2018)::

        L = -1/B Σ_i log( exp(cos(s_i, g_{t_i}) / τ) / Σ_j exp(cos(s_i, g_j) / τ) )

    ``states`` [B, H]: representations of states on preferred trajectories; ``goals`` [M, H]: candidate goal states,
    where ``g_{t_i}`` (``targets``, default ``i``) is a *future* state of the same preferred trajectory and the others
    (states of the dispreferred trajectories, other examples' goals) are the negatives. Minimizing it raises the
    similarity of a state to the goals its preferred continuation reaches and lowers it to dispreferred ones.
    """
    s = F.normalize(states.float(), dim=-1)
    g = F.normalize(goals.float(), dim=-1)
    logits = s @ g.T / temperature
    t = torch.arange(len(s), device=s.device) if targets is None else targets
    return F.cross_entropy(logits, t)


# ----------------------------------------------------------------- direct preference heads (DPH)
DPHLossKind = Literal["contrastive", "separable"]


def dph_loss(chosen_rewards: Tensor, rejected_rewards: Tensor, *, kind: DPHLossKind = "contrastive",
             label_smoothing: float = 0.0) -> PreferenceLoss:  # fmt: skip
    """Direct Preference Head losses on the head's scalar rewards r_w, r_l ``[B]`` (per pair).

    Hadji-Kyriacou & Arandjelović 2024, "Would I Lie To You? Inference Time Alignment of Language Models
    using Direct Preference Heads" (arXiv:2405.20053): a reward head on the LM's final hidden state is
    trained on preference pairs with a cDPO-style (label-smoothed, ε) objective, the LM untouched::

        contrastive: L = -(1 - ε) · log σ(r_w - r_l) - ε · log σ(r_l - r_w)
        separable:   L = -(1 - ε) · [log σ(r_w) + log σ(-r_l)] - ε · [log σ(-r_w) + log σ(r_l)]

    The contrastive form is cDPO's loss (Mitchell 2023) with the head's reward in place of
    β·log(π/π_ref); the separable form pushes each reward's sign on its own (preferred > 0 > dispreferred),
    so scores are comparable across prompts. ε = 0 is the plain Bradley-Terry / logistic loss.
    Returns per-pair losses and the (detached) rewards.
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    eps = label_smoothing
    if kind == "contrastive":
        margin = chosen_rewards - rejected_rewards
        losses = -(1 - eps) * F.logsigmoid(margin) - eps * F.logsigmoid(-margin)
    elif kind == "separable":
        right = F.logsigmoid(chosen_rewards) + F.logsigmoid(-rejected_rewards)
        wrong = F.logsigmoid(-chosen_rewards) + F.logsigmoid(rejected_rewards)
        losses = -(1 - eps) * right - eps * wrong
    else:
        raise ValueError(f"kind must be 'contrastive' or 'separable', got {kind!r}")
    return PreferenceLoss(losses, chosen_rewards.detach(), rejected_rewards.detach())


# ----------------------------------------------------------------------- intuitive fine-tuning (IFT)
def discounted_future_sum(x: Tensor, gamma: float) -> Tensor:
    """``y_t = Σ_{k ≥ t} γ^(k - t) · x_k`` along the last dimension (a discounted reverse cumulative sum)."""
    t = x.shape[-1]
    idx = torch.arange(t, device=x.device)
    lag = (idx[None, :] - idx[:, None]).to(x.dtype)  # [t, k] = k - t
    kernel = torch.where(lag >= 0, torch.as_tensor(gamma, dtype=x.dtype, device=x.device) ** lag.clamp(min=0),
                         torch.zeros((), dtype=x.dtype, device=x.device))  # fmt: skip
    return x @ kernel.T


def ift_token_weights(logp: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """IFT's per-token weights ``[B, T]`` of the response tokens (0 on masked positions).

    Hua et al. 2024, "Intuitive Fine-Tuning: Towards Simplifying Alignment into a Single Process"
    (arXiv:2405.11870; official trainer TsinghuaC3I/Intuitive-Fine-Tuning, ``src/trainers.py``
    ``get_cumsum_weight`` with its defaults ``propagation_type: loss, propagation_side: left,
    propagation_norm: L1``): with n the row's number of response tokens,

        c_t = Σ_{k ≥ t} γ^(k - t) · (-log π(y_k) / n),      w_t = n · c_t / Σ_s c_s,

    so a token is weighted by the (discounted) loss of everything after it, and a row's weights sum to
    n (L1-normalized). γ = 0 gives all ones (the official trainer's special case): plain SFT.
    Like the official trainer the weights are *not* detached (the gradient also flows through them).
    """
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    m = _as_bool_mask(mask, logp)
    if gamma == 0:
        return m.to(logp.dtype)
    n = m.sum(dim=-1, keepdim=True).to(logp.dtype)
    item = torch.where(m, -logp / n.clamp(min=1.0), torch.zeros_like(logp))
    c = torch.where(m, discounted_future_sum(item, gamma), torch.zeros_like(logp))
    return c * (n / c.sum(dim=-1, keepdim=True).clamp(min=torch.finfo(logp.dtype).tiny))


def ift_loss(logp: Tensor, mask: Tensor, gamma: float) -> tuple[Tensor, Tensor]:
    """IFT's loss: the weighted NLL ``Σ_{b,t} w_bt · (-log π(y_bt)) / Σ_{b,t} m_bt`` (a token mean over the batch).

    ``logp [B, T]``: log-probs of the response tokens from the *mixed-input* forward (see
    :func:`ift_mixed_embeddings`); ``w`` from :func:`ift_token_weights`. The official trainer averages
    each row over its own tokens and then the rows; we take rewardlab's SFT token mean over the batch
    (:func:`rewardlab.optimize.lm.lm_loss`) so that γ = 0, λ = 0 is our SFT loss exactly. Returns the loss
    and the (detached) weights.
    """
    m = _as_bool_mask(mask, logp)
    w = ift_token_weights(logp, m, gamma)
    nll = torch.where(m, -logp * w, torch.zeros_like(logp))
    return nll.sum() / m.sum(), w.detach()


def ift_mixed_embeddings(gold: Tensor, predicted: Tensor, lam: float) -> Tensor:
    """IFT's temporal residual connection: input embeddings ``(1 - λ) · e(y_t) + λ · e(ŷ_t)``.

    ŷ_t is the model's own greedy prediction of y_t from a no-gradient first pass (Hua et al. 2024; the
    official trainer uses λ = 0.2). λ = 0 feeds the demonstration (teacher forcing, SFT); λ = 1 the
    model's own predictions.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lambda must be in [0, 1], got {lam}")
    return (1.0 - lam) * gold + lam * predicted
