"""Losses and estimators against independent computations (written to kill mutmut's mutants of
``rewardlab.losses``; see docs/testing.md). Every expected value is derived by hand or from a plain
formula evaluated here with python floats, never read off the code under test."""

from __future__ import annotations

import math
import re
import warnings
from typing import Any

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


# ------------------------------------------------------------------------------ shape checks name their inputs
def _pairs(n1: int, n2: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(n1), torch.zeros(n2)


SHAPE_CASES: list[tuple[str, Any]] = [
    ("r_chosen and r_rejected must", lambda: L.bradley_terry_loss(*_pairs(2, 3))),
    ("mask has shape", lambda: L.masked_sum(torch.zeros(2), torch.ones(3))),
    ("r_chosen and r_rejected must", lambda: L.preference_accuracy(*_pairs(2, 3))),
    ("scores and ranking must", lambda: L.plackett_luce_loss(torch.zeros(2, 3), torch.zeros(2, 2, dtype=torch.long))),
    ("valid has shape", lambda: L.plackett_luce_loss(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 2))),
    ("logp and ref_logp must", lambda: L.kl_estimators(*_pairs(2, 3))),
    ("logp and ref_logp must", lambda: L.kl_penalty(*_pairs(2, 3))),
    ("logp and ref_logp must", lambda: L.alol_importance_weights(torch.zeros(1, 2), torch.zeros(1, 3), torch.ones(1, 2), 0.5)),
    ("rewards and values must", lambda: L.gae(torch.zeros(1, 2), torch.zeros(1, 3), torch.ones(1, 2))),
    ("logp and old_logp must", lambda: L.ppo_policy_loss(torch.zeros(2), torch.zeros(3), torch.zeros(2), torch.ones(2))),
    ("logp and advantages must", lambda: L.ppo_policy_loss(torch.zeros(2), torch.zeros(2), torch.zeros(3), torch.ones(2))),
    ("values and old_values must", lambda: L.ppo_value_loss(torch.zeros(2), torch.zeros(3), torch.zeros(2), torch.ones(2))),
    ("values and returns must", lambda: L.ppo_value_loss(torch.zeros(2), torch.zeros(2), torch.zeros(3), torch.ones(2))),
    ("rloo_advantages: k must", lambda: L.rloo_advantages(torch.zeros(4), 0)),
    ("grpo_advantages: k must", lambda: L.grpo_advantages(torch.zeros(4), 0)),
    ("grpo_advantages: 3 scores", lambda: L.grpo_advantages(torch.zeros(3), 2)),
    ("policy_chosen_logps and policy_rejected_logps must",
     lambda: L.dpo_sigmoid_loss(torch.zeros(2), torch.zeros(3), torch.zeros(2), torch.zeros(3))),
    ("policy_chosen_logps and policy_rejected_logps must",
     lambda: L.simpo_loss(torch.zeros(2), torch.zeros(3), torch.ones(2), torch.ones(3))),
    ("policy_chosen_logps and chosen_lengths must",
     lambda: L.simpo_loss(torch.zeros(2), torch.zeros(2), torch.ones(3), torch.ones(2))),
    ("policy_rejected_logps and rejected_lengths must",
     lambda: L.simpo_loss(torch.zeros(2), torch.zeros(2), torch.ones(2), torch.ones(3))),
    ("policy_chosen_logps and chosen_lengths must", lambda: L.chosen_nll_loss(torch.zeros(2), torch.ones(3))),
    ("margin_chosen and policy_chosen_logps must",
     lambda: L.modpo_loss(*[torch.zeros(2)] * 4, torch.zeros(3), torch.zeros(2))),
    ("margin_rejected and policy_rejected_logps must",
     lambda: L.modpo_loss(*[torch.zeros(2)] * 4, torch.zeros(2), torch.zeros(3))),
    ("token_weights and logp must",
     lambda: L.weighted_nll(torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1), token_weights=torch.ones(1, 3))),
    ("groups and rewards must", lambda: L.top_quantile_mask(torch.zeros(3), 0.5, torch.zeros(2))),
    ("policy_chosen_logps and ref_chosen_logps must",
     lambda: L.dpo_sigmoid_loss(torch.zeros(2), torch.zeros(2), torch.zeros(3), torch.zeros(2))),
    ("policy_rejected_logps and ref_rejected_logps must",
     lambda: L.dpo_sigmoid_loss(torch.zeros(2), torch.zeros(2), torch.zeros(2), torch.zeros(3))),
]  # fmt: skip


@pytest.mark.parametrize(("message", "call"), SHAPE_CASES)
def test_shape_errors_name_the_inputs(message: str, call: Any) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        call()


# ------------------------------------------------------------------------------ DPO family: defaults and formulas
PW, PL, RW, RL = [-3.0, -7.0, -2.0], [-5.0, -4.0, -2.5], [-3.5, -6.0, -2.2], [-4.0, -4.5, -2.0]
DELTA = [(a - b) - (c - d) for a, c, b, d in zip(PW, PL, RW, RL)]


def _dpo_args() -> tuple[torch.Tensor, ...]:
    return _t(PW), _t(PL), _t(RW), _t(RL)


def test_dpo_family_defaults_by_hand() -> None:
    beta = 0.1  # every DPO-family loss defaults to TRL's beta = 0.1
    _close(L.dpo_sigmoid_loss(*_dpo_args()).losses, [-_logsig(beta * d) for d in DELTA])
    _close(L.hinge_dpo_loss(*_dpo_args()).losses, [max(0.0, 1.0 - beta * d) for d in DELTA])
    _close(L.ipo_loss(*_dpo_args()).losses, [(d - 1.0 / (2 * beta)) ** 2 for d in DELTA])
    eps = 0.1  # rDPO's default flip rate
    _close(
        L.robust_dpo_loss(*_dpo_args()).losses,
        [(-(1 - eps) * _logsig(beta * d) + eps * _logsig(-beta * d)) / (1 - 2 * eps) for d in DELTA],
    )
    out = L.dpo_sigmoid_loss(*_dpo_args())
    _close(out.chosen_rewards, [beta * (a - b) for a, b in zip(PW, RW)])
    _close(out.rejected_rewards, [beta * (a - b) for a, b in zip(PL, RL)])


@pytest.mark.parametrize("eps", [0.0, 0.3])
def test_cdpo_and_rdpo_by_hand(eps: float) -> None:
    beta = 0.5
    z = [beta * d for d in DELTA]
    _close(
        L.dpo_sigmoid_loss(*_dpo_args(), beta=beta, label_smoothing=eps).losses,
        [-(1 - eps) * _logsig(x) - eps * _logsig(-x) for x in z],
    )
    _close(
        L.robust_dpo_loss(*_dpo_args(), beta=beta, label_smoothing=eps).losses,
        [(-(1 - eps) * _logsig(x) + eps * _logsig(-x)) / (1 - 2 * eps) for x in z],
    )


def test_ipo_per_token_form_by_hand() -> None:
    beta = 0.25
    nw, nl = [1.0, 3.0, 0.0], [2.0, 1.0, 4.0]
    out = L.ipo_loss(*_dpo_args(), beta=beta, chosen_lengths=_t(nw), rejected_lengths=_t(nl))
    h = [(a - b) / max(x, 1.0) - (c - d) / max(y, 1.0) for a, b, c, d, x, y in zip(PW, RW, PL, RL, nw, nl)]
    _close(out.losses, [(x - 1.0 / (2 * beta)) ** 2 for x in h])
    _close(L.ipo_loss(*_dpo_args(), beta=beta).losses, [(d - 2.0) ** 2 for d in DELTA])
    with pytest.raises(ValueError):
        L.ipo_loss(*_dpo_args(), chosen_lengths=_t(nw))


def test_dpo_family_parameter_ranges() -> None:
    for fn in (L.dpo_sigmoid_loss, L.robust_dpo_loss):
        fn(*_dpo_args(), label_smoothing=0.0)  # type: ignore[operator]
        fn(*_dpo_args(), label_smoothing=0.49)  # type: ignore[operator]
        for bad in (0.5, 0.7, -0.1):
            with pytest.raises(ValueError):
                fn(*_dpo_args(), label_smoothing=bad)  # type: ignore[operator]
    for fn in (L.dpo_sigmoid_loss, L.ipo_loss, L.robust_dpo_loss, L.hinge_dpo_loss):
        for bad in (0.0, -0.1):
            with pytest.raises(ValueError, match="beta must be > 0"):
                fn(*_dpo_args(), beta=bad)  # type: ignore[operator]


# ------------------------------------------------------------------------------ reward modelling
def test_bradley_terry_soft_targets_by_hand() -> None:
    rc, rr = [1.0, -0.5], [0.25, 0.5]
    d = [a - b for a, b in zip(rc, rr)]
    _close(L.bradley_terry_loss(_t(rc), _t(rr), target=0.0, reduction="none"), [-_logsig(-x) for x in d])
    _close(L.bradley_terry_loss(_t(rc), _t(rr), target=1.0, reduction="none"), [-_logsig(x) for x in d])
    with pytest.raises(ValueError):
        L.bradley_terry_loss(_t(rc), _t(rr), target=1.5)
    with pytest.raises(ValueError):
        L.bradley_terry_loss(_t(rc), _t(rr), target=-0.5)


def test_preference_accuracy_single_pair_and_ties() -> None:
    assert L.preference_accuracy(_t([1.0]), _t([0.0])) == 1.0
    assert L.preference_accuracy(_t([1.0, 2.0]), _t([1.0, 3.0]), ties="half") == 0.25
    with pytest.raises(ValueError):
        L.preference_accuracy(_t([]), _t([]))


def test_ece_bins_by_hand() -> None:
    # p = 0.5 is predicted "first item" (confidence 0.5); label 1 -> correct
    assert L.expected_calibration_error(_t([0.5]), _t([1.0]), n_bins=2) == pytest.approx(0.5)
    assert L.expected_calibration_error(_t([0.5]), _t([0.0]), n_bins=2) == pytest.approx(0.5 - 0.0)
    # one bin: p = 0.5 predicts the first item (correct with label 1), so accuracy 2/2 against confidence 1.4/2
    assert L.expected_calibration_error(_t([0.5, 0.9]), _t([1.0, 1.0]), n_bins=1) == pytest.approx(
        (2 - 1.4) / 2
    )
    # two bins of [0, 1]: 0.5 falls in (0, 0.5], 0.9 in (0.5, 1]: |1 - 0.5| + |0 - 0.9| over 2
    assert L.expected_calibration_error(_t([0.5, 0.1]), _t([1.0, 1.0]), n_bins=2) == pytest.approx(
        (0.5 + 0.9) / 2
    )
    # an upper bin edge belongs to its bin: with 4 bins 0.75 is in (0.5, 0.75], 0.8 in (0.75, 1]
    assert L.expected_calibration_error(_t([0.75, 0.2]), _t([1.0, 1.0]), n_bins=4) == pytest.approx(
        (0.25 + 0.8) / 2
    )
    # ten bins: 0.7 is in (0.6, 0.7] (not in (0.7, 0.8] with 0.75)
    assert L.expected_calibration_error(_t([0.7, 0.25]), _t([1.0, 1.0]), n_bins=10) == pytest.approx(
        (0.3 + 0.75) / 2
    )
    # the default is 10 bins
    assert L.expected_calibration_error(_t([0.7, 0.25]), _t([1.0, 1.0])) == pytest.approx((0.3 + 0.75) / 2)
    for ok in ([0.0], [1.0]):
        L.expected_calibration_error(_t(ok), _t([1.0]))
    for bad in ([1.1], [-0.1], [1.5], [2.5]):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            L.expected_calibration_error(_t(bad), _t([1.0]))


# ------------------------------------------------------------------------------ token-level helpers
def _ref_log_softmax(row: list[float]) -> list[float]:
    m = max(row)
    lse = m + math.log(sum(math.exp(x - m) for x in row))
    return [x - lse for x in row]


def _ref_entropy(row: list[float]) -> float:
    return -sum(math.exp(x) * x for x in _ref_log_softmax(row))


LOGITS4 = [[[[0.5, -1.0, 2.0, 0.0], [1.5, 0.5, -0.5, 0.25]], [[0.0, 0.0, 3.0, -2.0], [-1.0, 2.5, 0.5, 1.0]]],
           [[[2.0, 1.0, 0.0, -1.0], [0.3, 0.2, 0.1, 0.0]], [[-0.5, 1.5, -2.5, 3.5], [1.0, 1.0, 1.0, 1.0]]]]  # fmt: skip
INDEX4 = [[[2, 0], [3, 1]], [[0, 3], [1, 2]]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_selective_log_softmax_any_rank_by_hand(dtype: torch.dtype) -> None:
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
    x4 = torch.tensor(LOGITS4, dtype=dtype)
    i4 = torch.tensor(INDEX4)
    exp4 = [
        _ref_log_softmax(LOGITS4[a][b][c])[INDEX4[a][b][c]]
        for a in range(2)
        for b in range(2)
        for c in range(2)
    ]
    got = L.selective_log_softmax(x4, i4)
    assert got.shape == (2, 2, 2)
    assert got.float().flatten().tolist() == pytest.approx(exp4, abs=tol)
    row = LOGITS4[0][1][1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a 1-D input names its axis (no implicit-dimension warning)
        got1 = L.selective_log_softmax(torch.tensor(row, dtype=dtype), torch.tensor(1))
    assert got1.shape == () and float(got1) == pytest.approx(_ref_log_softmax(row)[1], abs=tol)
    with pytest.raises(ValueError):
        L.selective_log_softmax(x4, i4[:, :1])


def test_entropy_any_rank_by_hand() -> None:
    x4 = torch.tensor(LOGITS4, dtype=torch.float64)
    exp4 = [_ref_entropy(LOGITS4[a][b][c]) for a in range(2) for b in range(2) for c in range(2)]
    got = L.entropy_from_logits(x4)
    assert got.shape == (2, 2, 2) and got.flatten().tolist() == pytest.approx(exp4, rel=1e-10)
    row = LOGITS4[1][0][0]
    assert float(L.entropy_from_logits(torch.tensor(row, dtype=torch.float64))) == pytest.approx(
        _ref_entropy(row)
    )


def test_masked_var_needs_valid_entries() -> None:
    with pytest.raises(ValueError, match="no valid entries"):
        L.masked_var(_t([1.0, 2.0]), torch.zeros(2))
    with pytest.raises(ValueError, match="one valid entry"):
        L.masked_var(_t([1.0, 2.0]), torch.tensor([1, 0]))
    _close(L.masked_var(_t([1.0, 2.0, 4.0]), torch.tensor([1, 1, 0])), 0.5)
    _close(L.masked_var(_t([1.0, 2.0, 4.0]), torch.tensor([1, 1, 0]), unbiased=False), 0.25)


# ------------------------------------------------------------------------------ KL controllers, best-of-n, groups
def test_kl_controller_ranges() -> None:
    assert L.FixedKLController(0.0).value == 0.0
    assert L.AdaptiveKLController(0.0, 0.5, 0.5).value == 0.0
    with pytest.raises(ValueError):
        L.FixedKLController(-0.1)
    for args in ((-0.1, 1.0, 1.0), (0.1, 0.0, 1.0), (0.1, -1.0, 1.0), (0.1, 1.0, 0.0), (0.1, 1.0, -1.0)):
        with pytest.raises(ValueError):
            L.AdaptiveKLController(*args)
    c = L.AdaptiveKLController(0.2, 0.5, 0.5)
    c.update(current_kl=0.55, n_steps=1)  # error = clip(0.55/0.5 - 1) = 0.1, times n/horizon = 2
    assert c.value == pytest.approx(0.2 * (1 + 0.1 * 1 / 0.5))


def test_kl_penalty_default_is_k1() -> None:
    logp, ref = _t([-1.0, -2.0]), _t([-1.5, -1.0])
    _close(L.kl_penalty(logp, ref), [0.5, -1.0])
    with pytest.raises(ValueError):
        L.kl_penalty(logp, ref, "k4")  # type: ignore[arg-type]


def test_integer_arguments_are_checked() -> None:
    for bad in (1.5, 0, True, -2):
        with pytest.raises(ValueError):
            L.best_of_n_kl(bad)  # type: ignore[arg-type]
    assert L.best_of_n_kl(4.0) == pytest.approx(math.log(4) - 0.75)  # type: ignore[arg-type]
    for bad_k in (1.5, True, 0):
        with pytest.raises(ValueError):
            L.grpo_advantages(_t([1.0, 2.0, 3.0]), bad_k)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        L.grpo_advantages(_t([]), 1)


def test_grpo_small_groups_and_batches_by_hand() -> None:
    # one score: the std over one value is 0, so the advantage is 0 (not NaN), in every scale
    for scale in ("group", "batch", "none"):
        _close(L.grpo_advantages(_t([3.0]), 1, scale=scale), [0.0])  # type: ignore[arg-type]
    # k = 2: the group std (unbiased) of (1, 3) is sqrt(2)
    s = math.sqrt(2.0)
    _close(L.grpo_advantages(_t([1.0, 3.0]), 2), [-1 / (s + 1e-4), 1 / (s + 1e-4)])
    # batch scale with two scores in groups of one: centered 0, still 0
    _close(L.grpo_advantages(_t([1.0, 3.0]), 1, scale="batch"), [0.0, 0.0])
    # batch scale, two groups of two: group-centred, divided by the batch std of all four
    sc = [1.0, 3.0, 2.0, 6.0]
    mean = sum(sc) / 4
    sd = math.sqrt(sum((x - mean) ** 2 for x in sc) / 3)
    _close(L.grpo_advantages(_t(sc), 2, scale="batch", eps=0.0), [-1 / sd, 1 / sd, -2 / sd, 2 / sd])
    _close(L.rloo_advantages(_t(sc), 2), [-2.0, 2.0, -4.0, 4.0])


# ------------------------------------------------------------------------------ GAE and PPO
def test_gae_edges_and_defaults_by_hand() -> None:
    empty = L.gae(torch.zeros(2, 0), torch.zeros(2, 0), torch.zeros(2, 0))
    assert empty[0].shape == (2, 0) and empty[1].shape == (2, 0)
    adv, ret = L.gae(_t([[2.0]]), _t([[0.5]]), torch.ones(1, 1))
    _close(adv, [1.5])  # one token: delta = r - V
    _close(ret, [2.0])
    r, v = [[1.0, 0.0, 2.0]], [[0.5, 0.25, 1.0]]
    adv, _ = L.gae(_t(r), _t(v), torch.ones(1, 3))  # defaults: gamma 1, lambda 0.95
    d2 = 2.0 - 1.0
    d1 = 0.0 + 1.0 - 0.25
    d0 = 1.0 + 0.25 - 0.5
    a2 = d2
    a1 = d1 + 0.95 * a2
    a0 = d0 + 0.95 * a1
    _close(adv, [a0, a1, a2])


def test_ppo_defaults_by_hand() -> None:
    logp, old = _t([0.0, 0.5, -0.5]), _t([0.0, 0.0, 0.0])
    adv = _t([1.0, 1.0, -1.0])
    loss, _ = L.ppo_policy_loss(logp, old, adv, torch.ones(3))  # default clip 0.2
    ratio = [1.0, math.exp(0.5), math.exp(-0.5)]
    terms = [max(-a * r, -a * min(max(r, 0.8), 1.2)) for a, r in zip([1.0, 1.0, -1.0], ratio)]
    _close(loss, sum(terms) / 3)
    values, old_v, ret = _t([1.0, -1.0, 0.1]), _t([0.0, 0.0, 0.0]), _t([0.0, 0.5, 0.3])
    vloss, stats = L.ppo_value_loss(values, old_v, ret, torch.ones(3))  # default clip 0.2
    clipped = [0.2, -0.2, 0.1]
    per = [max((v - r) ** 2, (c - r) ** 2) for v, c, r in zip([1.0, -1.0, 0.1], clipped, [0.0, 0.5, 0.3])]
    _close(vloss, 0.5 * sum(per) / 3)
    # clipped branch active (larger) for rows 0? (0.2-0)^2 < 1: no; row 1: (-0.2-0.5)^2 = 0.49 < 2.25: no
    _close(stats["clipfrac"], 0.0)
    values2, old2, ret2 = _t([0.5, -0.5]), _t([0.2, -0.1]), _t([0.0, 0.0])
    vloss2, stats2 = L.ppo_value_loss(values2, old2, ret2, torch.ones(2), clip_range_value=0.1)
    clipped2 = [0.3, -0.2]  # old + clip(V - old, -0.1, 0.1)
    per2 = [max(v**2, c**2) for v, c in zip([0.5, -0.5], clipped2)]
    _close(vloss2, 0.5 * sum(per2) / 2)
    _close(stats2["clipfrac"], 0.0)
    values3, old3, ret3 = _t([0.5]), _t([2.0]), _t([0.0])
    vloss3, stats3 = L.ppo_value_loss(values3, old3, ret3, torch.ones(1), clip_range_value=0.5)
    _close(vloss3, 0.5 * max(0.25, 1.5**2))  # clipped value 1.5 is further from the return
    _close(stats3["clipfrac"], 1.0)


# ------------------------------------------------------------------------------ second round of boundaries
def test_value_clipping_that_increases_the_loss() -> None:
    # V moved from 0 to 1 towards a return of 1: unclipped error 0, clipped value 0.2 -> (0.2 - 1)^2
    loss, stats = L.ppo_value_loss(_t([1.0]), _t([0.0]), _t([1.0]), torch.ones(1))  # default clip 0.2
    _close(loss, 0.5 * 0.8**2)
    _close(stats["clipfrac"], 1.0)


def test_grpo_batch_scale_with_two_scores() -> None:
    s = math.sqrt(2.0)  # unbiased std of (1, 3)
    _close(L.grpo_advantages(_t([1.0, 3.0]), 2, scale="batch"), [-1 / (s + 1e-4), 1 / (s + 1e-4)])


def test_weighted_nll_one_valid_token() -> None:
    _close(L.weighted_nll(_t([[-2.0, -9.0]]), torch.tensor([[1, 0]]), _t([1.5])), 3.0)


def test_top_quantile_mask_three_groups_by_hand() -> None:
    r = [5.0, 1.0, 3.0, 10.0, 20.0, 30.0, -1.0, -2.0, -3.0]
    g = [0, 0, 0, 1, 1, 1, 2, 2, 2]
    # median of each group (fraction 0.5): 3, 20, -2; the median itself is kept (>=)
    assert L.top_quantile_mask(torch.tensor(r), 0.5, torch.tensor(g)).tolist() == [
        True, False, True, False, True, True, True, True, False,
    ]  # fmt: skip


def test_rwr_single_reward() -> None:
    _close(L.rwr_weights(_t([3.0]), 0.7), [1.0])


def test_alol_weights_clip_above_and_below() -> None:
    logp, ref, mask = _t([[1.0, 0.5], [-1.0, -1.0]]), _t([[0.0, 0.0], [0.0, 0.0]]), torch.ones(2, 2)
    w = L.alol_importance_weights(logp, ref, mask, 0.5)  # ratios e^1.5 (above 1.5) and e^-2 (below 0.5)
    _close(w, [1.5, 0.5])
    loss, stats = L.alol_loss(logp, ref, mask, _t([1.0, 0.0]), variant="alol")  # default clip 0.9
    _close(stats["alol/importance_weight"], (1.9 + math.exp(-2.0)) / 2)  # [0.1, 1.9] keeps e^-2 = 0.135
    _close(stats["alol/clipfrac"], 0.5)
    _close(stats["alol/positive_fraction"], 0.5)  # an advantage of exactly 0 is not positive
    _close(loss, 1.0 * 1.9 * -(1.0 + 0.5) / 4)  # -log-probs of the first row, weighted
    assert stats["alol/advantage"].dtype == torch.float64
    # one row inside the clip range, one outside: the clipped share is per sequence
    logp2 = _t([[0.1, 0.0], [2.0, 0.0]])
    _, stats2 = L.alol_loss(logp2, torch.zeros(2, 2, dtype=torch.float64), mask, _t([1.0, 1.0]), clip=0.5)
    _close(stats2["alol/clipfrac"], 0.5)
    # float32 advantages with float64 log-probs: the stats follow the log-probs' dtype
    _, stats3 = L.alol_loss(logp2, torch.zeros(2, 2, dtype=torch.float64), mask, torch.tensor([1.0, 1.0]))
    assert stats3["alol/advantage"].dtype == torch.float64


def test_alol_clip_range_is_closed() -> None:
    # per-token ratios exactly at the ends of [1 - clip, 1 + clip] are not clipped
    logp = _t([[math.log(2.0), 0.0]])
    _, stats = L.alol_loss(logp, torch.zeros(1, 2, dtype=torch.float64), torch.ones(1, 2), _t([1.0]), clip=1.0,
                           variant="alol_seq")  # fmt: skip
    _close(stats["alol/clipfrac"], 0.0)
    logp = _t([[math.log(0.5), 0.0]])
    _, stats = L.alol_loss(logp, torch.zeros(1, 2, dtype=torch.float64), torch.ones(1, 2), _t([1.0]), clip=0.5,
                           variant="alol_seq")  # fmt: skip
    _close(stats["alol/clipfrac"], 0.0)
