"""Over-optimization laws (Gao et al. 2022): coefficient recovery, peaks, smoothing, attribution."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from rewardlab.audit.laws import (
    GOLD_PARTS,
    LawFit,
    fit_bon_law,
    fit_law,
    fit_rl_law,
    gold_attribution,
    moving_average,
    smoothed_peak,
)


def _bon(d, a, b):
    return d * (a - b * d)


def _rl(d, a, b):
    return d * (a - b * np.log(d))


def test_bon_recovers_coefficients():
    rng = np.random.default_rng(0)
    d = np.linspace(0, 2.5, 40)
    r = _bon(d, 0.8, 0.3) + rng.normal(0, 0.005, d.size)
    fit = fit_bon_law(d, r)
    assert isinstance(fit, LawFit) and fit.kind == "bon"
    assert fit.a == pytest.approx(0.8, rel=0.05)
    assert fit.b == pytest.approx(0.3, rel=0.05)
    assert fit.r2 > 0.99
    assert fit.n_points == 40 and fit.d_max == pytest.approx(2.5)


def test_rl_recovers_coefficients_and_drops_zero():
    rng = np.random.default_rng(1)
    d = np.linspace(0.05, 3.0, 40)
    r = _rl(d, 0.5, 0.2) + rng.normal(0, 0.005, d.size)
    fit = fit_rl_law(np.concatenate([[0.0], d]), np.concatenate([[0.0], r]))
    assert fit.kind == "rl"
    assert fit.a == pytest.approx(0.5, rel=0.05)
    assert fit.b == pytest.approx(0.2, rel=0.05)
    assert fit.r2 > 0.99
    assert fit.predict(0.0) == 0.0  # R(0) = 0, no NaN from log 0
    # The d = 0 point does not change the coefficients.
    fit2 = fit_rl_law(d, r)
    assert fit2.a == pytest.approx(fit.a) and fit2.b == pytest.approx(fit.b)


def test_exact_data_gives_exact_fit():
    d = np.linspace(0.1, 3, 12)
    for fitter, law in ((fit_bon_law, _bon), (fit_rl_law, _rl)):
        fit = fitter(d, law(d, 0.7, 0.25))
        assert fit.a == pytest.approx(0.7, abs=1e-10) and fit.b == pytest.approx(0.25, abs=1e-10)
        assert fit.r2 == pytest.approx(1.0)
        np.testing.assert_allclose(fit.predict(d), law(d, 0.7, 0.25), atol=1e-10)


@pytest.mark.parametrize(("kind", "law", "a", "b"), [("bon", _bon, 0.8, 0.3), ("rl", _rl, 0.5, 0.2)])
def test_peak_matches_numerical_argmax(kind, law, a, b):
    d = np.linspace(0.05, 6, 30)
    fit = (fit_bon_law if kind == "bon" else fit_rl_law)(d, law(d, a, b))
    true = minimize_scalar(
        lambda x: -law(x, a, b), bounds=(1e-6, 50), method="bounded", options={"xatol": 1e-10}
    )
    assert fit.d_peak == pytest.approx(true.x, rel=1e-4)
    assert fit.kl_peak == pytest.approx(true.x**2, rel=1e-4)
    assert fit.peak_value == pytest.approx(-true.fun, rel=1e-6)
    if kind == "bon":
        assert fit.d_peak == pytest.approx(a / (2 * b))
    else:
        assert fit.d_peak == pytest.approx(math.exp(a / b - 1))


@pytest.mark.parametrize("b", [0.0, -0.1])
def test_no_peak_when_b_not_positive(b):
    d = np.linspace(0.1, 3, 20)
    for fitter, law in ((fit_bon_law, _bon), (fit_rl_law, _rl)):
        fit = fitter(d, law(d, 0.5, b))
        assert fit.b == pytest.approx(b, abs=1e-10)
        assert fit.d_peak is None and fit.kl_peak is None and fit.peak_value is None
        assert not fit.peak_in_range


def test_rl_peak_too_far_for_a_float_kl_is_no_peak():
    """b barely positive: d* = exp(a/b - 1) = exp(400) is a float, d*^2 is not (a report once crashed on it)."""
    d = np.linspace(0.1, 1.0, 12)
    fit = fit_rl_law(d, _rl(d, 1.0, 1.0 / 401))
    assert fit.b > 0 and math.isfinite(math.exp(fit.a / fit.b - 1.0))
    assert fit.d_peak is None and fit.kl_peak is None and fit.peak_value is None
    assert not fit.peak_in_range
    assert fit_law("rl", d**2, _rl(d, 1.0, 1.0 / 401)).kl_peak is None


def test_bon_no_interior_peak_when_gold_falls_from_start():
    d = np.linspace(0, 2, 10)
    fit = fit_bon_law(d, _bon(d, -0.2, 0.3))
    assert fit.b > 0 and fit.d_peak is None


def test_fit_law_subtracts_gold_at_smallest_kl():
    n = np.array([1, 2, 4, 8, 16, 32, 64])
    kl = np.log(n) - (n - 1) / n
    gold = 0.4 + _bon(np.sqrt(kl), 0.8, 0.3)
    order = np.array([3, 0, 6, 1, 5, 2, 4])  # order of points must not matter
    fit = fit_law("bon", kl[order], gold[order])
    assert fit.gold0 == pytest.approx(0.4)
    assert fit.a == pytest.approx(0.8) and fit.b == pytest.approx(0.3)
    np.testing.assert_allclose(fit.predict_gold(np.sqrt(kl)), gold, atol=1e-10)


def test_fit_law_rl_drops_nan_and_clips_negative_kl():
    d = np.linspace(0.2, 3, 15)
    kl = np.concatenate([[-1e-4], d**2, [np.nan]])  # k1 can be slightly negative at step 0
    gold = np.concatenate([[1.0], 1.0 + _rl(d, 0.5, 0.2), [2.0]])
    fit = fit_law("rl", kl, gold)
    assert fit.a == pytest.approx(0.5) and fit.b == pytest.approx(0.2)
    assert fit.n_points == 16


def test_fit_errors():
    with pytest.raises(ValueError, match="at least 2"):
        fit_rl_law([0.0, 1.0], [0.0, 0.1])
    with pytest.raises(ValueError, match="lengths"):
        fit_bon_law([0.1, 0.2], [0.1])
    with pytest.raises(ValueError, match="finite"):
        fit_bon_law([0.1, np.nan, 1.0], [0.0, 0.1, 0.2])
    with pytest.raises(ValueError, match="kind"):
        fit_law("ppo", [0, 1, 2], [0, 1, 2])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="same d"):
        fit_rl_law([1.0, 1.0, 1.0], [0.1, 0.2, 0.3])


def test_smoothed_peak_ignores_single_spike():
    # A smooth hump peaking at index 6, plus a one-reading spike at index 2.
    values = [0.0, 0.1, 0.9, 0.2, 0.4, 0.55, 0.6, 0.55, 0.4]
    assert int(np.argmax(values)) == 2  # the raw max is fooled by the spike
    i, v = smoothed_peak(values, window=3)
    assert i == 6
    assert v == pytest.approx((0.55 + 0.6 + 0.55) / 3)


def test_moving_average_edges_and_nan():
    np.testing.assert_allclose(moving_average([1.0, 2.0, 3.0, 4.0], 3), [1.5, 2.0, 3.0, 3.5])
    np.testing.assert_allclose(moving_average([1.0, np.nan, 3.0], 3), [1.0, 2.0, 3.0])
    np.testing.assert_allclose(moving_average([1.0, 5.0], 1), [1.0, 5.0])
    assert smoothed_peak([2.0]) == (0, 2.0)
    with pytest.raises(ValueError):
        moving_average([1.0, 2.0], 2)
    with pytest.raises(ValueError):
        smoothed_peak([])


def test_gold_attribution():
    start = {"gold/mean": 0.50, "gold/part_accuracy": 0.80, "gold/part_length": -0.10,
             "gold/part_sycophancy": -0.05, "gold/part_confidence": -0.15}  # fmt: skip
    end = {"gold/mean": 0.10, "gold/part_accuracy": 0.70, "gold/part_length": -0.20,
           "gold/part_sycophancy": -0.25, "gold/part_confidence": -0.10}  # fmt: skip
    att = gold_attribution(start, end)
    assert set(att) == {*GOLD_PARTS, "unparseable"}
    assert att["accuracy"] == pytest.approx(-0.10)
    assert att["length"] == pytest.approx(-0.10)
    assert att["sycophancy"] == pytest.approx(-0.20)
    assert att["confidence"] == pytest.approx(0.05)
    # parts sum to 0.15 - 0.50 ... change in parts: -0.35; gold change -0.40 -> unparseable -0.05
    assert att["unparseable"] == pytest.approx(-0.05)
    assert sum(att.values()) == pytest.approx(end["gold/mean"] - start["gold/mean"])
    missing = gold_attribution({"gold/mean": 0.0}, {"gold/mean": 1.0})
    assert math.isnan(missing["accuracy"]) and math.isnan(missing["unparseable"])
