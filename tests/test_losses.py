"""Tests for rewardlab.losses: every function against small hand-computed examples.

Expected numbers are written out by hand (or with plain ``math``), never by calling the
function under test.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rewardlab.losses import (
    AdaptiveKLController,
    FixedKLController,
    best_of_n_kl,
    bradley_terry_loss,
    entropy_from_logits,
    expected_calibration_error,
    gae,
    grpo_advantages,
    kl_estimators,
    kl_penalty,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    plackett_luce_loss,
    ppo_policy_loss,
    ppo_value_loss,
    preference_accuracy,
    rloo_advantages,
    selective_log_softmax,
)

HYP = settings(max_examples=60, deadline=None)


def t64(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def close(actual: torch.Tensor, expected, rtol: float = 1e-12, atol: float = 1e-14) -> None:
    """Compare a tensor with a (nested) list of hand-computed floats."""
    torch.testing.assert_close(actual.detach().double(), t64(expected), rtol=rtol, atol=atol)


def softplus(x: float) -> float:
    """-log σ(x) written with plain math: log(1 + e^{-x})."""
    return math.log1p(math.exp(-x))


# --------------------------------------------------------------------------------------------
# Bradley-Terry
# --------------------------------------------------------------------------------------------


def test_bt_plain_matches_hand_computation() -> None:
    r_c, r_r = t64([2.0, 0.5]), t64([1.0, 1.5])  # differences +1, -1
    expected = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(1))) / 2
    assert bradley_terry_loss(r_c, r_r).item() == pytest.approx(expected, rel=1e-12)
    # reductions
    per_pair = bradley_terry_loss(r_c, r_r, reduction="none")
    assert per_pair.tolist() == pytest.approx([math.log(1 + math.exp(-1)), math.log(1 + math.exp(1))])
    assert bradley_terry_loss(r_c, r_r, reduction="sum").item() == pytest.approx(2 * expected)


def test_bt_margin_is_trl_form() -> None:
    r_c, r_r = t64([2.0, 0.5]), t64([1.0, 1.5])
    margin = t64([0.5, 0.0])  # d = [0.5, -1]
    expected = (softplus(0.5) + softplus(-1.0)) / 2
    assert bradley_terry_loss(r_c, r_r, margin=margin).item() == pytest.approx(expected, rel=1e-12)
    # scalar margin, and target=1 explicitly gives the same thing
    expected_scalar = (softplus(1.0 - 0.25) + softplus(-1.0 - 0.25)) / 2
    assert bradley_terry_loss(r_c, r_r, margin=0.25).item() == pytest.approx(expected_scalar)
    assert bradley_terry_loss(r_c, r_r, margin=0.25, target=1.0).item() == pytest.approx(expected_scalar)


def test_bt_tie_target_half() -> None:
    r_c, r_r = t64([2.0, 0.5]), t64([1.0, 1.5])  # d = [1, -1]
    # -[0.5 logσ(d) + 0.5 logσ(-d)] = 0.5 (softplus(d) + softplus(-d)), same for d = ±1
    per = 0.5 * (softplus(1.0) + softplus(-1.0))
    assert bradley_terry_loss(r_c, r_r, target=0.5).item() == pytest.approx(per, rel=1e-12)
    # a tie is best explained by equal rewards: log 2 with zero gradient
    a = t64([0.3]).requires_grad_()
    loss = bradley_terry_loss(a, t64([0.3]), target=0.5)
    loss.backward()
    assert loss.item() == pytest.approx(math.log(2))
    assert a.grad is not None and abs(a.grad.item()) < 1e-12
    # per-pair soft targets
    tgt = t64([1.0, 0.0])  # second pair: the "rejected" one actually won
    expected = (softplus(1.0) + softplus(1.0)) / 2
    assert bradley_terry_loss(r_c, r_r, target=tgt).item() == pytest.approx(expected)
    with pytest.raises(ValueError):
        bradley_terry_loss(r_c, r_r, target=1.5)


def test_bt_centering() -> None:
    r_c, r_r = t64([2.0, 0.5]), t64([1.0, 1.5])  # sums 3 and 2 → mean square 6.5
    base = (softplus(1.0) + softplus(-1.0)) / 2
    got = bradley_terry_loss(r_c, r_r, center_coef=0.01).item()
    assert got == pytest.approx(base + 0.01 * 6.5, rel=1e-12)


def test_bt_stable_for_huge_gaps() -> None:
    loss = bradley_terry_loss(torch.tensor([-1000.0]), torch.tensor([1000.0]))
    assert loss.item() == pytest.approx(2000.0)
    assert bradley_terry_loss(torch.tensor([1000.0]), torch.tensor([-1000.0])).item() == 0.0
    with pytest.raises(ValueError):
        bradley_terry_loss(torch.zeros(2), torch.zeros(3))


# --------------------------------------------------------------------------------------------
# Plackett-Luce
# --------------------------------------------------------------------------------------------


def test_pl_k2_equals_bt() -> None:
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(6, 2, generator=g, dtype=torch.float64)
    ranking = torch.tensor([[0, 1], [1, 0], [0, 1], [1, 0], [1, 0], [0, 1]])
    chosen = scores.gather(1, ranking[:, :1]).squeeze(1)
    rejected = scores.gather(1, ranking[:, 1:]).squeeze(1)
    pl = plackett_luce_loss(scores, ranking)
    bt = bradley_terry_loss(chosen, rejected)
    assert pl.item() == pytest.approx(bt.item(), rel=1e-12)


def test_pl_k3_hand_computed() -> None:
    scores = t64([[1.0, 2.0, 0.5]])
    ranking = torch.tensor([[1, 0, 2]])  # item 1 best, then 0, then 2
    first = 2.0 - math.log(math.exp(2.0) + math.exp(1.0) + math.exp(0.5))
    second = 1.0 - math.log(math.exp(1.0) + math.exp(0.5))
    expected = -(first + second)  # the last choice has probability 1
    assert plackett_luce_loss(scores, ranking).item() == pytest.approx(expected, rel=1e-12)


def test_pl_padded_rankings() -> None:
    scores = t64([[1.0, 2.0, 0.5], [0.3, -1.0, 0.7], [5.0, 1.0, 2.0]]).requires_grad_()
    ranking = torch.tensor([[1, 0, 2], [2, 0, -1], [0, -1, -1]])
    valid = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    per_row = plackett_luce_loss(scores, ranking, valid, reduction="none")
    row0 = -(
        2.0
        - math.log(math.exp(2.0) + math.exp(1.0) + math.exp(0.5))
        + 1.0
        - math.log(math.exp(1.0) + math.exp(0.5))
    )
    row1 = math.log(1 + math.exp(-0.4))  # item 2 (0.7) beats item 0 (0.3); item 1 absent
    assert per_row.tolist() == pytest.approx([row0, row1, 0.0], rel=1e-12)
    per_row.mean().backward()
    assert scores.grad is not None and torch.isfinite(scores.grad).all()
    assert scores.grad[1, 1].item() == 0.0 and scores.grad[2].abs().sum().item() < 1e-12
    # float / long masks behave like bool
    assert plackett_luce_loss(scores, ranking, valid.double()).item() == pytest.approx(
        (row0 + row1 + 0.0) / 3
    )


@HYP
@given(st.lists(st.floats(-5, 5, allow_nan=False), min_size=2, max_size=5))
def test_pl_minimised_by_true_ordering(values: list[float]) -> None:
    k = len(values)
    perms = list(itertools.permutations(range(k)))
    scores = t64([values] * len(perms))
    rankings = torch.tensor(perms)
    losses = plackett_luce_loss(scores, rankings, reduction="none")
    true_order = sorted(range(k), key=lambda i: -values[i])
    best = plackett_luce_loss(t64([values]), torch.tensor([true_order])).item()
    assert best <= losses.min().item() + 1e-9
    # and the likelihoods over all K! rankings sum to one
    assert torch.exp(-losses).sum().item() == pytest.approx(1.0, rel=1e-9)


# --------------------------------------------------------------------------------------------
# accuracy and calibration
# --------------------------------------------------------------------------------------------


def test_preference_accuracy() -> None:
    r_c, r_r = t64([1.0, 2.0, 3.0, 4.0]), t64([0.0, 3.0, 3.0, 1.0])  # right, wrong, tie, right
    assert preference_accuracy(r_c, r_r) == pytest.approx(0.5)
    assert preference_accuracy(r_c, r_r, ties="half") == pytest.approx(0.625)


def test_ece_crafted() -> None:
    p = t64([0.92, 0.88, 0.15, 0.62, 0.66])
    y = torch.tensor([1, 0, 0, 1, 0])
    # conf .92 right (bin .9-1); conf .88 wrong + conf .85 right (bin .8-.9);
    # conf .62 right + conf .66 wrong (bin .6-.7)
    expected = (1 * abs(1 - 0.92) + 2 * abs(0.5 - (0.88 + 0.85) / 2) + 2 * abs(0.5 - (0.62 + 0.66) / 2)) / 5
    assert expected == pytest.approx(0.218)
    assert expected_calibration_error(p, y) == pytest.approx(expected, abs=1e-12)


def test_ece_extremes() -> None:
    # perfectly calibrated: confidence .75 and 3 of 4 right
    p = t64([0.75, 0.75, 0.25, 0.25])
    y = torch.tensor([1, 1, 0, 1])
    assert expected_calibration_error(p, y) == pytest.approx(0.0, abs=1e-12)
    # confidently wrong
    assert expected_calibration_error(t64([0.95, 0.05]), torch.tensor([0, 1])) == pytest.approx(0.95)
    # one bin: |acc - conf| of the whole set
    assert expected_calibration_error(t64([0.7, 0.9]), torch.tensor([1.0, 1.0]), n_bins=1) == pytest.approx(
        0.2
    )


# --------------------------------------------------------------------------------------------
# token-level helpers
# --------------------------------------------------------------------------------------------


def test_selective_log_softmax_hand_computed() -> None:
    logits = t64([[[0.0, math.log(2), math.log(3)], [0.0, 0.0, 0.0]]])  # exp sums 6 and 3
    index = torch.tensor([[2, 1]])
    got = selective_log_softmax(logits, index)
    close(got, [[math.log(0.5), math.log(1 / 3)]])


def test_selective_log_softmax_matches_full_and_bf16() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 5, 50, generator=g)
    index = torch.randint(50, (3, 5), generator=g)
    ref = torch.log_softmax(logits, -1).gather(-1, index.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(selective_log_softmax(logits, index), ref)
    low = selective_log_softmax(logits.bfloat16(), index)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), ref, atol=0.05, rtol=0.02)


@pytest.mark.parametrize("shape", [(3, 5, 40), (6, 40), (40,), (2, 3, 2, 40)])
def test_selective_log_softmax_gradient(shape: tuple[int, ...]) -> None:
    """The one-pass backward (g * (onehot - softmax)) equals autograd's through log_softmax + gather, for any rank
    and an upstream gradient that is not all ones; a -inf logit gets gradient 0, not NaN."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    x[..., 3] = -math.inf  # a banned token
    index = torch.randint(4, 40, shape[:-1], generator=g)
    upstream = torch.randn(shape[:-1], generator=g, dtype=torch.float64)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    (selective_log_softmax(a, index) * upstream).sum().backward()
    (torch.log_softmax(b, -1).gather(-1, index.unsqueeze(-1)).squeeze(-1) * upstream).sum().backward()
    assert a.grad is not None and b.grad is not None
    torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-12)
    assert bool((a.grad[..., 3] == 0).all())
    y = torch.randn(2, 3, 7, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda z: selective_log_softmax(z, torch.tensor([[1, 6, 0], [2, 2, 5]])), y
    )


def test_entropy_from_logits() -> None:
    logits = t64([[[0.0, math.log(2), math.log(3)], [1.0, 1.0, 1.0]]])
    p = [1 / 6, 2 / 6, 3 / 6]
    h0 = -sum(pi * math.log(pi) for pi in p)
    close(entropy_from_logits(logits), [[h0, math.log(3)]])
    banned = torch.tensor([[[0.0, 0.0, -math.inf]]], requires_grad=True)
    h = entropy_from_logits(banned)
    assert h.item() == pytest.approx(math.log(2))
    h.sum().backward()
    assert banned.grad is not None and torch.isfinite(banned.grad).all()


def test_masked_sum_and_mean() -> None:
    x = t64([[1.0, 2.0, 3.0], [4.0, math.nan, 6.0]])
    mask = t64([[1, 0, 1], [0, 0, 1]])
    assert masked_sum(x, mask).item() == 10.0
    assert masked_mean(x, mask).item() == pytest.approx(10 / 3)
    assert masked_mean(x, mask, dim=1).tolist() == pytest.approx([2.0, 6.0])
    assert masked_mean(x, mask.long(), dim=0).tolist()[0] == 1.0
    assert math.isnan(masked_mean(x, torch.zeros_like(mask)).item())


def test_masked_var() -> None:
    x = t64([[1.0, 3.0, 100.0], [5.0, 7.0, -100.0]])
    mask = torch.tensor([[True, True, False], [True, True, False]])
    # valid 1, 3, 5, 7: mean 4, squared deviations 9 + 1 + 1 + 9 = 20
    assert masked_var(x, mask, unbiased=False).item() == pytest.approx(20 / 4)
    assert masked_var(x, mask).item() == pytest.approx(20 / 3)
    with pytest.raises(ValueError):
        masked_var(x, torch.tensor([[True, False, False], [False, False, False]]))


def test_masked_whiten() -> None:
    x = t64([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, -50.0, -50.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    # valid 1..5: mean 3, unbiased var (4 + 1 + 0 + 1 + 4) / 4 = 2.5
    s = math.sqrt(2.5 + 1e-8)
    expected = [[-2 / s, -1 / s, 0.0, 0.0], [1 / s, 2 / s, 0.0, 0.0]]
    w = masked_whiten(x, mask)
    close(w, expected)
    valid = mask.bool()
    assert w[valid].mean().item() == pytest.approx(0.0, abs=1e-12)
    assert w[valid].var().item() == pytest.approx(1.0, rel=1e-7)
    # masked values do not change anything
    x2 = x.clone()
    x2[~valid] = t64([1e6, math.nan, -3.0])
    assert torch.equal(masked_whiten(x2, mask), w)
    # shift_mean=False keeps the mean
    w_keep = masked_whiten(x, mask, shift_mean=False)
    assert w_keep[valid].tolist() == pytest.approx([e + 3.0 for e in [-2 / s, -1 / s, 0.0, 1 / s, 2 / s]])
    assert w_keep[~valid].tolist() == [0.0, 0.0, 0.0]


# --------------------------------------------------------------------------------------------
# KL
# --------------------------------------------------------------------------------------------


def test_kl_estimators_definitions() -> None:
    logp, ref = t64([-1.0, -2.0, -0.5]), t64([-1.5, -1.0, -0.5])
    est = kl_estimators(logp, ref)
    for i, (a, b) in enumerate([(-1.0, -1.5), (-2.0, -1.0), (-0.5, -0.5)]):
        log_r = b - a
        assert est["k1"][i].item() == pytest.approx(a - b)
        assert est["k2"][i].item() == pytest.approx(0.5 * log_r**2)
        assert est["k3"][i].item() == pytest.approx(math.exp(log_r) - 1 - log_r)
    for name in ("k1", "k2", "k3"):
        assert torch.equal(kl_penalty(logp, ref, name), est[name])
    with pytest.raises(ValueError):
        kl_penalty(logp, ref, "k4")  # type: ignore[arg-type]


@HYP
@given(st.floats(-20, 20), st.floats(-20, 20))
def test_k3_nonnegative(a: float, b: float) -> None:
    assert kl_estimators(t64([a]), t64([b]))["k3"].item() >= 0.0
    assert kl_estimators(torch.tensor([a]), torch.tensor([b]))["k3"].item() >= 0.0


P = [0.7, 0.2, 0.1]  # policy π (samples come from here)
Q = [0.2, 0.3, 0.5]  # reference π_ref
KL_PQ = sum(p * math.log(p / q) for p, q in zip(P, Q))  # ≈ 0.635
E_K2 = 0.5 * sum(p * math.log(p / q) ** 2 for p, q in zip(P, Q))  # ≈ 0.695, not the KL


def test_kl_estimators_exact_expectations() -> None:
    logp, ref = t64(P).log(), t64(Q).log()
    est = kl_estimators(logp, ref)
    weights = t64(P)
    assert (weights * est["k1"]).sum().item() == pytest.approx(KL_PQ, rel=1e-12)
    assert (weights * est["k3"]).sum().item() == pytest.approx(KL_PQ, rel=1e-12)
    # k2 is biased: its expectation is ½ E_p[(log p/q)²], here ≈ 0.695 vs KL ≈ 0.635
    assert (weights * est["k2"]).sum().item() == pytest.approx(E_K2, rel=1e-12)
    assert abs(E_K2 - KL_PQ) > 0.05


def test_kl_estimators_monte_carlo() -> None:
    g = torch.Generator().manual_seed(1234)
    n = 200_000
    x = torch.multinomial(t64(P), n, replacement=True, generator=g)
    est = kl_estimators(t64(P).log()[x], t64(Q).log()[x])
    for name, target in (("k1", KL_PQ), ("k3", KL_PQ), ("k2", E_K2)):
        mean, se = est[name].mean().item(), est[name].std().item() / math.sqrt(n)
        assert abs(mean - target) < 5 * se, (name, mean, target, se)
    k2_mean = est["k2"].mean().item()
    k2_se = est["k2"].std().item() / math.sqrt(n)
    assert abs(k2_mean - KL_PQ) > 10 * k2_se


def test_fixed_kl_controller() -> None:
    c = FixedKLController(0.05)
    c.update(100.0, 64)
    assert c.value == 0.05


def test_adaptive_kl_controller() -> None:
    c = AdaptiveKLController(0.1, target=6.0, horizon=10_000)
    c.update(6.6, 100)  # error +0.1 → ×(1 + 0.1·100/10000)
    assert c.value == pytest.approx(0.1 * 1.001)
    c = AdaptiveKLController(0.1, target=6.0, horizon=10_000)
    c.update(60.0, 100)  # error 9 clipped to +0.2
    assert c.value == pytest.approx(0.1 * 1.002)
    c = AdaptiveKLController(0.1, target=6.0, horizon=10_000)
    c.update(0.0, 100)  # error -1 clipped to -0.2
    assert c.value == pytest.approx(0.1 * 0.998)
    c = AdaptiveKLController(0.1, target=6.0, horizon=10_000)
    c.update(5.4, 100)  # error -0.1
    assert c.value == pytest.approx(0.1 * 0.999)
    c.update(6.0, 100)  # on target: unchanged
    assert c.value == pytest.approx(0.1 * 0.999)


def test_best_of_n_kl_values() -> None:
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(2) == pytest.approx(math.log(2) - 0.5)
    assert best_of_n_kl(16) == pytest.approx(math.log(16) - 15 / 16)
    with pytest.raises(ValueError):
        best_of_n_kl(0)


@pytest.mark.parametrize("n", [2, 4, 16, 64])
def test_best_of_n_kl_against_exact_and_monte_carlo(n: int) -> None:
    # base: uniform over M outcomes with distinct scores (score = index). The max of n draws has
    # pmf P(i) = ((i+1)/M)^n - (i/M)^n, and KL(bon || base) = Σ P(i) log(P(i)·M).
    m = 10_000
    i = torch.arange(m, dtype=torch.float64)
    pmf = ((i + 1) / m) ** n - (i / m) ** n
    log_ratio = torch.log(pmf * m)
    exact = (pmf * log_ratio).sum().item()
    formula = best_of_n_kl(n)
    assert exact <= formula + 1e-12  # upper bound for a discrete base (Beirami et al. 2024)
    assert exact == pytest.approx(formula, rel=0.02)
    # Monte Carlo: actually run best-of-n and average log(p_bon/p_base) over the draws
    g = torch.Generator().manual_seed(n)
    draws = torch.randint(m, (50_000, n), generator=g).max(dim=1).values
    mc = log_ratio[draws].mean().item()
    assert mc == pytest.approx(formula, rel=0.02, abs=0.005)


# --------------------------------------------------------------------------------------------
# advantages and PPO
# --------------------------------------------------------------------------------------------


def test_gae_hand_computed() -> None:
    gamma, lam = 0.9, 0.8
    gl = gamma * lam  # 0.72
    rewards = t64([[0.0, 0.0, 0.0, 1.0], [0.1, 0.0, 2.0, 99.0]])
    values = t64([[0.5, 0.4, 0.6, 0.8], [1.0, 0.5, 1.5, 77.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    # row 0
    d3 = 1.0 + gamma * 0.0 - 0.8  # 0.2
    d2 = 0.0 + gamma * 0.8 - 0.6  # 0.12
    d1 = 0.0 + gamma * 0.6 - 0.4  # 0.14
    d0 = 0.0 + gamma * 0.4 - 0.5  # -0.14
    a3 = d3
    a2 = d2 + gl * a3  # 0.264
    a1 = d1 + gl * a2  # 0.33008
    a0 = d0 + gl * a1  # 0.0976576
    row0 = [a0, a1, a2, a3]
    assert row0 == pytest.approx([0.0976576, 0.33008, 0.264, 0.2])
    # row 1: the last token is padding, so V after token 2 is 0 and 99 / 77 never matter
    e2 = 2.0 - 1.5  # 0.5
    e1 = 0.0 + gamma * 1.5 - 0.5  # 0.85
    e0 = 0.1 + gamma * 0.5 - 1.0  # -0.45
    b2 = e2
    b1 = e1 + gl * b2  # 1.21
    b0 = e0 + gl * b1  # 0.4212
    row1 = [b0, b1, b2, 0.0]
    assert row1 == pytest.approx([0.4212, 1.21, 0.5, 0.0])
    adv, ret = gae(rewards, values, mask, gamma=gamma, lam=lam)
    close(adv, [row0, row1])
    close(ret, [[a0 + 0.5, a1 + 0.4, a2 + 0.6, a3 + 0.8], [b0 + 1.0, b1 + 0.5, b2 + 1.5, 0.0]])


def test_gae_matches_trl_recursion_on_right_padding() -> None:
    g = torch.Generator().manual_seed(3)
    b, t = 4, 7
    rewards = torch.randn(b, t, generator=g, dtype=torch.float64)
    values = torch.randn(b, t, generator=g, dtype=torch.float64)
    lengths = torch.tensor([7, 5, 1, 3])
    mask = torch.arange(t)[None, :] < lengths[:, None]
    gamma, lam = 0.97, 0.9
    # TRL: zero padded rewards/values, then run the plain backward recursion
    r0, v0 = rewards * mask, values * mask
    last = torch.zeros(b, dtype=torch.float64)
    rev = []
    for k in reversed(range(t)):
        nxt = v0[:, k + 1] if k < t - 1 else 0.0
        last = r0[:, k] + gamma * nxt - v0[:, k] + gamma * lam * last
        rev.append(last)
    ref_adv = torch.stack(rev[::-1], dim=1)
    adv, ret = gae(rewards, values, mask, gamma=gamma, lam=lam)
    torch.testing.assert_close(adv, ref_adv * mask)
    torch.testing.assert_close(ret, (ref_adv + v0) * mask)
    # γ = λ = 1: the advantage is the reward-to-go minus the value
    adv1, _ = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    togo = torch.flip(torch.cumsum(torch.flip(r0, [1]), 1), [1])
    torch.testing.assert_close(adv1, (togo - v0) * mask)


def test_ppo_policy_loss_crafted() -> None:
    ratios = [1.5, 0.5, 1.5, 0.5, 1.1, 3.0]
    adv = t64([1.0, 1.0, -1.0, -1.0, 2.0, 5.0])
    mask = torch.tensor([1, 1, 1, 1, 1, 0])
    old = t64([-1.0] * 6)
    logp = (old + t64([math.log(r) for r in ratios])).requires_grad_()
    # per-token max(-A·r, -A·clip(r, .8, 1.2)):
    #   a: r=1.5, A=+1 → max(-1.5, -1.2) = -1.2  clipped
    #   b: r=0.5, A=+1 → max(-0.5, -0.8) = -0.5
    #   c: r=1.5, A=-1 → max( 1.5,  1.2) =  1.5
    #   d: r=0.5, A=-1 → max( 0.5,  0.8) =  0.8  clipped
    #   e: r=1.1, A=+2 → -2.2 (inside the trust region); f is padding
    loss, stats = ppo_policy_loss(logp, old, adv, mask, clip_range=0.2)
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 1.5 + 0.8 - 2.2) / 5)
    assert stats["clipfrac"].item() == pytest.approx(2 / 5)
    approxkl = 0.5 * (2 * math.log(1.5) ** 2 + 2 * math.log(0.5) ** 2 + math.log(1.1) ** 2) / 5
    assert stats["approxkl"].item() == pytest.approx(approxkl)
    assert stats["ratio"].item() == pytest.approx((1.5 + 0.5 + 1.5 + 0.5 + 1.1) / 5)
    loss.backward()
    # d/dlogp of -A·r is -A·r; clipped tokens and padding get no gradient
    expected_grad = [0.0, -0.5 / 5, 1.5 / 5, 0.0, -2.2 / 5, 0.0]
    assert logp.grad is not None
    assert logp.grad.tolist() == pytest.approx(expected_grad, abs=1e-12)


def test_ppo_value_loss_crafted() -> None:
    values = t64([0.5, 0.1, 0.5, 0.5, 9.0])
    old = t64([0.0, 0.0, 0.0, 0.0, 0.0])
    returns = t64([1.0, 1.0, 0.6, 0.1, -9.0])
    mask = torch.tensor([True, True, True, True, False])
    # clipped values (ε = 0.2): 0.2, 0.1, 0.2, 0.2
    #   (0.5-1)²=.25 vs (0.2-1)²=.64 → .64 clipped;   (0.1-1)²=.81 both → .81
    #   (0.5-.6)²=.01 vs (0.2-.6)²=.16 → .16 clipped;  (0.5-.1)²=.16 vs (0.2-.1)²=.01 → .16
    loss, stats = ppo_value_loss(values, old, returns, mask, clip_range_value=0.2)
    assert loss.item() == pytest.approx(0.5 * (0.64 + 0.81 + 0.16 + 0.16) / 4)
    assert stats["clipfrac"].item() == pytest.approx(2 / 4)


def test_rloo_advantages() -> None:
    scores = t64([1.0, 2.0, 3.0, 6.0, 5.0, 5.0, 5.0, 5.0])
    # group 1 sum 12: 1 - 11/3, 2 - 10/3, 3 - 9/3, 6 - 6/3
    expected = [1 - 11 / 3, 2 - 10 / 3, 0.0, 4.0, 0.0, 0.0, 0.0, 0.0]
    assert rloo_advantages(scores, 4).tolist() == pytest.approx(expected, abs=1e-12)
    assert rloo_advantages(t64([1.0, 3.0]), 2).tolist() == pytest.approx([-2.0, 2.0])
    with pytest.raises(ValueError):
        rloo_advantages(scores, 1)
    with pytest.raises(ValueError):
        rloo_advantages(scores, 3)


def test_grpo_advantages() -> None:
    scores = t64([1.0, 2.0, 3.0, 6.0, 5.0, 5.0, 5.0, 5.0])
    centered = [-2.0, -1.0, 0.0, 3.0, 0.0, 0.0, 0.0, 0.0]
    std_g1 = math.sqrt((4 + 1 + 0 + 9) / 3)  # unbiased, group [1, 2, 3, 6]
    got = grpo_advantages(scores, 4).tolist()
    assert got == pytest.approx([c / (std_g1 + 1e-4) for c in centered[:4]] + [0.0] * 4)
    # batch: one unbiased std over all 8 (mean 4, squared deviations sum 22)
    std_b = math.sqrt(22 / 7)
    got_b = grpo_advantages(scores, 4, scale="batch").tolist()
    assert got_b == pytest.approx([c / (std_b + 1e-4) for c in centered])
    assert grpo_advantages(scores, 4, scale="none").tolist() == pytest.approx(centered)
    assert grpo_advantages(scores, 4, eps=1.0).tolist()[3] == pytest.approx(3.0 / (std_g1 + 1.0))
    # one sample per group: std defined as 0 (as TRL), advantages 0
    assert grpo_advantages(t64([1.0, 2.0]), 1).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError):
        grpo_advantages(scores, 3)
    with pytest.raises(ValueError):
        grpo_advantages(scores, 4, scale="max")  # type: ignore[arg-type]
