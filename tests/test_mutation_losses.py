"""Losses and estimators against independent computations (written to kill mutmut's mutants of
``rewardlab.losses``; see docs/testing.md). Every expected value is derived by hand or from a plain
formula evaluated here with python floats, never read off the code under test."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rewardlab import losses as L


def test_best_of_n_kl_by_hand() -> None:
    assert L.best_of_n_kl(1) == 0.0
    assert math.isclose(L.best_of_n_kl(2), math.log(2) - 0.5, rel_tol=1e-12)
    assert math.isclose(L.best_of_n_kl(8), math.log(8) - 7 / 8, rel_tol=1e-12)


# ------------------------------------------------------------------ helpers (python floats, not torch)


def _logsig(x: float) -> float:
    """log σ(x), stable for both signs."""
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def _t(x: list[float] | list[list[float]], grad: bool = False) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64, requires_grad=grad)


def _close(t: torch.Tensor, expected: list[float] | float, tol: float = 1e-10) -> None:
    np_t = t.detach().double().flatten().tolist()
    exp = expected if isinstance(expected, list) else [expected]
    assert len(np_t) == len(exp)
    for a, b in zip(np_t, exp):
        assert a == pytest.approx(b, rel=tol, abs=tol), (np_t, exp)


# ------------------------------------------------------------------------------------ SimPO, MODPO, NLL
@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_simpo_by_hand(eps: float) -> None:
    lw, ll, nw, nl = [-4.0, -9.0, -2.0], [-6.0, -3.0, -5.0], [2.0, 3.0, 0.0], [4.0, 1.0, 2.0]
    beta, gamma = 2.5, 0.4
    out = L.simpo_loss(_t(lw), _t(ll), _t(nw), _t(nl), beta=beta, gamma=gamma, label_smoothing=eps)
    rw = [beta * a / max(n, 1.0) for a, n in zip(lw, nw)]
    rl = [beta * a / max(n, 1.0) for a, n in zip(ll, nl)]
    z = [a - b - gamma for a, b in zip(rw, rl)]
    _close(out.losses, [-(1 - eps) * _logsig(x) - eps * _logsig(-x) for x in z])
    _close(out.chosen_rewards, rw)
    _close(out.rejected_rewards, rl)


def test_simpo_defaults_and_checks() -> None:
    lw, ll, n = _t([-3.0]), _t([-5.0]), _t([2.0])
    out = L.simpo_loss(lw, ll, n, n)  # beta 2, gamma 1, no smoothing
    _close(out.losses, -_logsig(2.0 * -3.0 / 2 - 2.0 * -5.0 / 2 - 1.0))
    for kw in ({"beta": 0.0}, {"label_smoothing": 0.5}, {"label_smoothing": -0.1}):
        with pytest.raises(ValueError):
            L.simpo_loss(lw, ll, n, n, **kw)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        L.simpo_loss(lw, _t([-5.0, -1.0]), n, n)
    with pytest.raises(ValueError):
        L.simpo_loss(lw, ll, _t([2.0, 1.0]), n)
    with pytest.raises(ValueError):
        L.simpo_loss(lw, ll, n, _t([2.0, 1.0]))


@pytest.mark.parametrize("w", [1.0, 0.25])
def test_modpo_by_hand(w: float) -> None:
    pw, pl, rw, rl = [-3.0, -2.0], [-4.0, -1.0], [-3.5, -2.5], [-3.0, -1.5]
    mw, ml = _t([0.7, -0.2], grad=True), _t([0.1, 0.4], grad=True)
    beta = 0.3
    out = L.modpo_loss(_t(pw, grad=True), _t(pl), _t(rw), _t(rl), mw, ml, beta=beta, weight=w)
    r1w = [(beta * (a - b) - (1 - w) * m) / w for a, b, m in zip(pw, rw, [0.7, -0.2])]
    r1l = [(beta * (a - b) - (1 - w) * m) / w for a, b, m in zip(pl, rl, [0.1, 0.4])]
    _close(out.losses, [-_logsig(a - b) for a, b in zip(r1w, r1l)])
    _close(out.chosen_rewards, r1w)
    _close(out.rejected_rewards, r1l)
    out.losses.sum().backward()
    assert mw.grad is None and ml.grad is None  # the second reward is fixed
    assert not out.chosen_rewards.requires_grad


def test_modpo_default_weight_and_checks() -> None:
    one = _t([-1.0])
    out = L.modpo_loss(_t([-1.0]), _t([-2.0]), one, one, _t([1.0]), _t([0.0]))  # beta 0.1, w 0.5
    r1w = (0.1 * 0.0 - 0.5 * 1.0) / 0.5
    r1l = (0.1 * -1.0 - 0.5 * 0.0) / 0.5
    _close(out.losses, -_logsig(r1w - r1l))
    for kw in ({"weight": 0.0}, {"weight": 1.5}, {"beta": -1.0}):
        with pytest.raises(ValueError):
            L.modpo_loss(one, one, one, one, one, one, **kw)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        L.modpo_loss(one, one, one, one, _t([1.0, 2.0]), one)
    with pytest.raises(ValueError):
        L.modpo_loss(one, one, one, one, one, _t([1.0, 2.0]))


def test_chosen_nll_by_hand() -> None:
    _close(L.chosen_nll_loss(_t([-6.0, -2.0, -3.0]), _t([3.0, 0.0, 1.0])), [2.0, 2.0, 3.0])
    with pytest.raises(ValueError):
        L.chosen_nll_loss(_t([-6.0]), _t([3.0, 1.0]))


# ------------------------------------------------------------------------------------ offline RL
LOGP = [[-1.0, -2.0, -0.5], [-0.25, -3.0, -4.0]]
MASK = [[1, 1, 0], [1, 1, 1]]


def test_weighted_nll_by_hand() -> None:
    logp = _t(LOGP, grad=True)
    w = _t([2.0, 0.5], grad=True)
    tok = _t([[1.0, 0.5, 7.0], [2.0, 1.0, 1.0]], grad=True)
    out = L.weighted_nll(logp, torch.tensor(MASK), w)
    _close(out, (2.0 * (1.0 + 2.0) + 0.5 * (0.25 + 3.0 + 4.0)) / 5)
    out2 = L.weighted_nll(logp, torch.tensor(MASK), w, token_weights=tok)
    _close(out2, (2.0 * (1.0 * 1.0 + 0.5 * 2.0) + 0.5 * (2.0 * 0.25 + 3.0 + 4.0)) / 5)
    out2.backward()
    assert w.grad is None and tok.grad is None  # weights are constants
    # d/dlogp: -w_i c_it / 5 on valid tokens, 0 at the masked one
    _close(logp.grad, [-2.0 / 5, -1.0 / 5, 0.0, -1.0 / 5, -0.5 / 5, -0.5 / 5])
    # an all-masked batch gives 0, not NaN
    _close(L.weighted_nll(_t(LOGP), torch.zeros(2, 3), _t([1.0, 1.0])), 0.0)
    with pytest.raises(ValueError):
        L.weighted_nll(_t(LOGP), torch.tensor(MASK), _t([1.0, 1.0, 1.0]))
    with pytest.raises(ValueError):
        L.weighted_nll(_t(LOGP), torch.tensor(MASK), _t([1.0, 1.0]), token_weights=_t([[1.0, 1.0]]))


def test_weighted_nll_float32_weights_on_float64_logp() -> None:
    out = L.weighted_nll(_t([[-1.0]]), torch.ones(1, 1), torch.tensor([1.0 / 3.0], dtype=torch.float32))
    assert out.dtype == torch.float64


def test_top_quantile_mask_against_numpy() -> None:
    r = [0.3, -1.0, 2.0, 0.7, 0.7, 1.5, -0.2, 0.1]
    for f in (0.25, 0.5, 1.0, 0.1):
        q = float(np.quantile(np.array(r), 1.0 - f))
        assert L.top_quantile_mask(torch.tensor(r), f).tolist() == [x >= q for x in r]
    groups = [0, 0, 0, 0, 1, 1, 1, 1]
    expected = []
    for g in (0, 1):
        rg = [x for x, gg in zip(r, groups) if gg == g]
        q = float(np.quantile(np.array(rg), 0.5))
        expected += [x >= q for x in rg]
    assert L.top_quantile_mask(torch.tensor(r), 0.5, torch.tensor(groups)).tolist() == expected
    # ties at the threshold are all kept
    assert L.top_quantile_mask(torch.tensor([1.0, 1.0, 0.0]), 0.34).tolist() == [True, True, False]
    for bad in (0.0, 1.5, -0.5):
        with pytest.raises(ValueError):
            L.top_quantile_mask(torch.tensor(r), bad)
    with pytest.raises(ValueError):
        L.top_quantile_mask(torch.tensor([[1.0]]), 0.5)
    with pytest.raises(ValueError):
        L.top_quantile_mask(torch.tensor([]), 0.5)
    with pytest.raises(ValueError):
        L.top_quantile_mask(torch.tensor(r), 0.5, torch.tensor([0, 1]))


def test_rwr_weights_by_hand() -> None:
    r, T = [1.0, -0.5, 2.0, 0.0], 0.5
    e = [math.exp(x / T) for x in r]
    mean = sum(e) / len(e)
    _close(L.rwr_weights(_t(r), T), [x / mean for x in e])
    _close(L.rwr_weights(_t(r), T, max_weight=1.5), [min(x / mean, 1.5) for x in e])
    big = L.rwr_weights(torch.tensor([1000.0, 999.0]), 1.0)  # log-space: no overflow
    _close(big, [2 * math.e / (math.e + 1), 2 / (math.e + 1)], tol=1e-6)
    assert L.rwr_weights(torch.tensor([1.0, 2.0], dtype=torch.float32), 1.0).dtype == torch.float32
    assert L.rwr_weights(torch.tensor([1, 2]), 1.0).dtype == torch.float32
    for bad_t in (0.0, -1.0):
        with pytest.raises(ValueError):
            L.rwr_weights(_t(r), bad_t)
    with pytest.raises(ValueError):
        L.rwr_weights(_t([[1.0]]), 1.0)
    with pytest.raises(ValueError):
        L.rwr_weights(_t([]), 1.0)


def test_reward_quantile_bins_against_numpy() -> None:
    r = [0.3, -1.0, 2.0, 0.7, 0.7, 1.5, -0.2, 0.1, 0.9]
    for k in (2, 3, 4):
        edges = np.quantile(np.array(r), [j / k for j in range(1, k)])
        bins, e = L.reward_quantile_bins(torch.tensor(r, dtype=torch.float64), k)
        assert bins.dtype == torch.long
        assert bins.tolist() == [int(sum(x >= ej for ej in edges)) for x in r]
        np.testing.assert_allclose(e.numpy(), edges, rtol=1e-12)
    _, e = L.reward_quantile_bins(torch.tensor([1, 2, 3, 4]), 2)
    assert e.dtype == torch.float32 and e.tolist() == [2.5]
    _, e = L.reward_quantile_bins(torch.tensor([1.0, 2.0], dtype=torch.float32), 2)
    assert e.dtype == torch.float32
    for bad in (1, 0, 2.5, True):
        with pytest.raises(ValueError):
            L.reward_quantile_bins(torch.tensor(r), bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        L.reward_quantile_bins(torch.tensor([[1.0]]), 2)
    with pytest.raises(ValueError):
        L.reward_quantile_bins(torch.tensor([]), 2)


REF = [[-1.5, -1.0, 9.0], [-0.25, -2.0, -4.5]]


def test_alol_importance_weights_by_hand() -> None:
    # log-ratios on valid tokens: row 0: 0.5, -1.0 (masked 9.0 ignored); row 1: 0, -1.0, 0.5
    seq_raw = [math.exp(0.5 - 1.0), math.exp(0.0 - 1.0 + 0.5)]
    for clip in (0.9, 0.2, 1.5):
        lo, hi = max(0.0, 1.0 - clip), 1.0 + clip
        w = L.alol_importance_weights(_t(LOGP, grad=True), _t(REF), torch.tensor(MASK), clip)
        _close(w, [min(max(x, lo), hi) for x in seq_raw])
        assert not w.requires_grad
        tok = L.alol_importance_weights(_t(LOGP), _t(REF), torch.tensor(MASK), clip, per_token=True)
        raw = [[0.5, -1.0, None], [0.0, -1.0, 0.5]]
        _close(tok, [0.0 if x is None else min(max(math.exp(x), lo), hi) for row in raw for x in row])
    for bad in (0.0, -0.1):
        with pytest.raises(ValueError):
            L.alol_importance_weights(_t(LOGP), _t(REF), torch.tensor(MASK), bad)
    with pytest.raises(ValueError):
        L.alol_importance_weights(_t(LOGP), _t([[0.0]]), torch.tensor(MASK), 0.5)


def test_alol_loss_variants_by_hand() -> None:
    adv = [0.8, -0.3]
    clip = 0.3
    lo, hi = 0.7, 1.3
    nll = [1.0 + 2.0, 0.25 + 3.0 + 4.0]
    seq_raw = [math.exp(-0.5), math.exp(-0.5)]
    seq_rho = [min(max(x, lo), hi) for x in seq_raw]
    pos = [max(a, 0.0) for a in adv]
    for variant in ("alol", "alol_seq", "ref_free"):
        loss, stats = L.alol_loss(_t(LOGP), _t(REF), torch.tensor(MASK), _t(adv), clip=clip, variant=variant)
        _close(stats["alol/advantage"], (0.8 + 0.0) / 2)
        _close(stats["alol/positive_fraction"], 0.5)
        if variant == "ref_free":
            _close(loss, (0.8 * nll[0]) / 5)
            assert set(stats) == {"alol/advantage", "alol/positive_fraction"}
        elif variant == "alol":
            _close(loss, (pos[0] * seq_rho[0] * nll[0] + pos[1] * seq_rho[1] * nll[1]) / 5)
            _close(stats["alol/importance_weight"], sum(seq_rho) / 2)
            _close(stats["alol/clipfrac"], 1.0)  # exp(-0.5) = 0.61 < 0.7 in both rows
        else:
            tok = [[math.exp(0.5), math.exp(-1.0)], [1.0, math.exp(-1.0), math.exp(0.5)]]
            rho = [[min(max(x, lo), hi) for x in row] for row in tok]
            expected = 0.8 * (rho[0][0] * 1.0 + rho[0][1] * 2.0) / 5
            _close(loss, expected)
            _close(stats["alol/importance_weight"], (sum(rho[0]) + sum(rho[1])) / 5)
            # outside [0.7, 1.3]: e^0.5 = 1.65 (twice), e^-1 = 0.37 (twice); 1.0 inside
            _close(stats["alol/clipfrac"], 4 / 5)
    # the default variant is alol with clip 0.9: [0.1, 1.9] keeps exp(-0.5)
    loss, stats = L.alol_loss(_t(LOGP), _t(REF), torch.tensor(MASK), _t(adv))
    _close(loss, 0.8 * seq_raw[0] * nll[0] / 5)
    _close(stats["alol/clipfrac"], 0.0)
    with pytest.raises(ValueError):
        L.alol_loss(_t(LOGP), None, torch.tensor(MASK), _t(adv), variant="alol")
    with pytest.raises(ValueError):
        L.alol_loss(_t(LOGP), _t(REF), torch.tensor(MASK), _t(adv), variant="nope")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        L.alol_loss(_t(LOGP), _t(REF), torch.tensor(MASK), _t([1.0]))


def test_alol_loss_gradient_only_through_logp() -> None:
    logp, ref, adv = _t(LOGP, grad=True), _t(REF, grad=True), _t([0.8, 0.5], grad=True)
    loss, _ = L.alol_loss(logp, ref, torch.tensor(MASK), adv, clip=0.9)
    loss.backward()
    assert ref.grad is None and adv.grad is None
    rho0, rho1 = math.exp(-0.5), math.exp(-0.5)
    _close(
        logp.grad, [-0.8 * rho0 / 5, -0.8 * rho0 / 5, 0.0, -0.5 * rho1 / 5, -0.5 * rho1 / 5, -0.5 * rho1 / 5]
    )
