"""Over-optimization laws against an independent least-squares solution (written to kill mutmut's
mutants of ``rewardlab.audit.laws``; see docs/testing.md).

The reference fits solve the 2x2 normal equations by Cramer's rule with python floats, and the
smoothing, peak and attribution values are worked out by hand, so nothing here is read off the code
under test.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from rewardlab.audit.laws import (
    LawFit,
    _law,
    _positive_b,
    _r2,
    fit_bon_law,
    fit_law,
    fit_rl_law,
    gold_attribution,
    moving_average,
    smoothed_peak,
)


def _lstsq2(x1: list[float], x2: list[float], y: list[float]) -> tuple[float, float]:
    """Least squares y ~ a*x1 + b*x2 (no intercept) from the normal equations, by Cramer's rule."""
    s11 = sum(u * u for u in x1)
    s22 = sum(v * v for v in x2)
    s12 = sum(u * v for u, v in zip(x1, x2))
    s1y = sum(u * w for u, w in zip(x1, y))
    s2y = sum(v * w for v, w in zip(x2, y))
    det = s11 * s22 - s12 * s12
    return (s1y * s22 - s12 * s2y) / det, (s11 * s2y - s12 * s1y) / det


def _r2_ref(y: list[float], pred: list[float]) -> float:
    mean = sum(y) / len(y)
    ss_res = sum((u - v) ** 2 for u, v in zip(y, pred))
    ss_tot = sum((u - mean) ** 2 for u in y)
    return 1.0 - ss_res / ss_tot


def _bon_ref(d: float, a: float, b: float) -> float:
    return d * (a - b * d)


def _rl_ref(d: float, a: float, b: float) -> float:
    return d * (a - b * math.log(d)) if d > 0 else 0.0


# noisy readings (not on any law), so that the fit, its residuals and R² all matter
D = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
R = [0.0, 0.31, 0.46, 0.52, 0.41, 0.22]


def test_bon_fit_equals_normal_equations() -> None:
    a, b = _lstsq2(D, [-(d**2) for d in D], R)
    fit = fit_bon_law(D, R)
    assert fit.kind == "bon"
    assert fit.a == pytest.approx(a, rel=1e-9) and fit.b == pytest.approx(b, rel=1e-9)
    assert a > 0 and b > 0
    assert fit.r2 == pytest.approx(_r2_ref(R, [_bon_ref(d, a, b) for d in D]), rel=1e-9)
    assert fit.d_peak == pytest.approx(a / (2 * b), rel=1e-9)
    assert fit.kl_peak == pytest.approx((a / (2 * b)) ** 2, rel=1e-9)
    assert fit.peak_value == pytest.approx(a * a / (4 * b), rel=1e-9)
    assert fit.n_points == 6 and fit.d_max == 2.5 and fit.gold0 == 0.0
    assert fit.peak_in_range
    assert fit.predict(1.2) == pytest.approx(_bon_ref(1.2, a, b), rel=1e-9)
    assert isinstance(fit.predict(1.2), float)
    np.testing.assert_allclose(fit.predict([0.5, 3.0]), [_bon_ref(0.5, a, b), _bon_ref(3.0, a, b)], rtol=1e-9)
    assert fit.to_dict()["a"] == fit.a and fit.to_dict()["kind"] == "bon"


def test_rl_fit_equals_normal_equations_without_the_zero_point() -> None:
    pos = [(d, r) for d, r in zip(D, R) if d > 0]
    a, b = _lstsq2([d for d, _ in pos], [-d * math.log(d) for d, _ in pos], [r for _, r in pos])
    fit = fit_rl_law(D, R)
    assert fit.kind == "rl"
    assert fit.a == pytest.approx(a, rel=1e-9) and fit.b == pytest.approx(b, rel=1e-9)
    assert b > 0
    # R² on every point given, the d = 0 one included (where the law is 0)
    assert fit.r2 == pytest.approx(_r2_ref(R, [_rl_ref(d, a, b) for d in D]), rel=1e-9)
    d_star = math.exp(a / b - 1.0)
    assert fit.d_peak == pytest.approx(d_star, rel=1e-9)
    assert fit.kl_peak == pytest.approx(d_star**2, rel=1e-9)
    assert fit.peak_value == pytest.approx(b * d_star, rel=1e-9)
    assert fit.n_points == 6 and fit.d_max == 2.5


def test_rl_law_at_zero_is_zero_and_silent() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # log(0) must neither warn nor leak into the result
        out = _law("rl", 0.5, 0.2, np.array([0.0, 1.0, math.e]))
    np.testing.assert_allclose(out, [0.0, 0.5, math.e * (0.5 - 0.2)], rtol=1e-12)
    np.testing.assert_allclose(_law("bon", 0.5, 0.2, np.array([0.0, 2.0])), [0.0, 2.0 * (0.5 - 0.4)])
    with pytest.raises(ValueError, match="unknown law kind"):
        _law("ppo", 0.5, 0.2, np.array([1.0]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit = fit_rl_law(D, R)
        assert fit.predict(0.0) == 0.0


def test_r2_by_hand() -> None:
    # residuals -1, 0, +1: SS_res = 2 = SS_tot, so R² = 0 (a signed or cubed residual would give 1)
    assert _r2(np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 1.0])) == pytest.approx(0.0)
    # SS_res = 0.25 + 0 + 0.25 = 0.5, SS_tot = 2 -> 0.75
    assert _r2(np.array([0.0, 1.0, 2.0]), np.array([0.5, 1.0, 1.5])) == pytest.approx(0.75)
    # a flat R: perfect when the prediction is exact, 0 otherwise
    assert _r2(np.array([0.3, 0.3]), np.array([0.3, 0.3])) == 1.0
    assert _r2(np.array([0.3, 0.3]), np.array([0.3, 0.4])) == 0.0


def test_positive_b_threshold() -> None:
    assert _positive_b(1.0, 2e-12)
    assert not _positive_b(1.0, 0.5e-12)  # noise relative to a
    assert not _positive_b(1.0, 1e-12)  # the threshold itself is noise
    assert not _positive_b(0.0, 0.0)
    assert not _positive_b(1.0, -0.3)
    assert _positive_b(-1.0, 0.3)
    assert _positive_b(1e-20, 1e-20)  # relative to max(|a|, |b|), not to a alone


def test_two_points_are_enough_and_zero_d_is_allowed() -> None:
    # two exact points determine (a, b); d = 0 is a valid distance
    fit = fit_bon_law([1.0, 2.0], [_bon_ref(1.0, 0.6, 0.2), _bon_ref(2.0, 0.6, 0.2)])
    assert fit.a == pytest.approx(0.6) and fit.b == pytest.approx(0.2)
    fit = fit_rl_law([0.0, 1.0, 2.0], [0.0, _rl_ref(1.0, 0.6, 0.2), _rl_ref(2.0, 0.6, 0.2)])
    assert fit.a == pytest.approx(0.6) and fit.b == pytest.approx(0.2)
    with pytest.raises(ValueError, match="at least 2"):
        fit_bon_law([1.0], [0.1])
    with pytest.raises(ValueError, match=">= 0"):
        fit_bon_law([-0.1, 1.0, 2.0], [0.0, 0.1, 0.2])
    with pytest.raises(ValueError, match="finite"):
        fit_bon_law([0.1, 1.0, 2.0], [0.0, np.inf, 0.2])
    with pytest.raises(ValueError, match="same d"):
        fit_bon_law([1.0, 1.0, 1.0], [0.1, 0.2, 0.3])


def test_bon_peak_needs_positive_a() -> None:
    d = [0.5, 1.0, 1.5, 2.0]
    fit = fit_bon_law(d, [_bon_ref(x, -0.2, 0.3) for x in d])
    assert fit.a == pytest.approx(-0.2) and fit.b == pytest.approx(0.3)
    assert fit.d_peak is None and fit.kl_peak is None and fit.peak_value is None
    assert not fit.peak_in_range


def test_rl_peak_that_overflows_is_none() -> None:
    # a / b = 800: exp(799) overflows a float, so the peak is "none", not an error
    d = [0.5, 1.0, 2.0, 3.0]
    fit = fit_rl_law(d, [_rl_ref(x, 800.0, 1.0) for x in d])
    assert fit.a == pytest.approx(800.0) and fit.b == pytest.approx(1.0)
    assert fit.d_peak is None and fit.kl_peak is None and fit.peak_value is None


def test_peak_beyond_the_fitted_range() -> None:
    d = [0.1, 0.2, 0.3]
    fit = fit_bon_law(d, [_bon_ref(x, 1.0, 0.1) for x in d])  # peak at d = 5
    assert fit.d_peak == pytest.approx(5.0)
    assert fit.d_max == pytest.approx(0.3) and not fit.peak_in_range
    assert LawFit("bon", 1.0, 0.1, 1.0, 2.0, 4.0, 1.0, 3, d_max=2.0).peak_in_range


def test_fit_law_cleans_points_and_takes_gold_at_smallest_kl() -> None:
    kl = [0.25, np.nan, -0.01, 1.0, 2.25, 4.0, 0.5]
    gold = [0.62, 0.9, 0.5, 0.71, 0.69, np.inf, 0.64]
    fit = fit_law("bon", kl, gold)
    # kept: the finite pairs; KL -0.01 is clipped to 0 and is the reference (gold 0.5)
    keep = [(0.25, 0.62), (0.0, 0.5), (1.0, 0.71), (2.25, 0.69), (0.5, 0.64)]
    d = [math.sqrt(k) for k, _ in keep]
    r = [g - 0.5 for _, g in keep]
    a, b = _lstsq2(d, [-(x**2) for x in d], r)
    assert fit.gold0 == pytest.approx(0.5)
    assert fit.a == pytest.approx(a, rel=1e-9) and fit.b == pytest.approx(b, rel=1e-9)
    assert fit.n_points == 5 and fit.d_max == pytest.approx(1.5)
    assert fit.predict_gold(1.0) == pytest.approx(0.5 + _bon_ref(1.0, a, b), rel=1e-9)
    rl = fit_law("rl", kl, gold)
    pos = [(x, y) for x, y in zip(d, r) if x > 0]
    a, b = _lstsq2([x for x, _ in pos], [-x * math.log(x) for x, _ in pos], [y for _, y in pos])
    assert rl.kind == "rl" and rl.gold0 == pytest.approx(0.5)
    assert rl.a == pytest.approx(a, rel=1e-9) and rl.b == pytest.approx(b, rel=1e-9)
    with pytest.raises(ValueError, match="kind"):
        fit_law("ppo", [0.0, 1.0], [0.0, 1.0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lengths"):
        fit_law("bon", [0.0, 1.0], [0.0])
    with pytest.raises(ValueError, match="no finite"):
        fit_law("rl", [np.nan, 1.0], [0.0, np.nan])


def test_moving_average_by_hand() -> None:
    v = [1.0, 3.0, 2.0, 6.0, 4.0]
    np.testing.assert_allclose(moving_average(v, 3), [2.0, 2.0, 11 / 3, 4.0, 5.0])
    np.testing.assert_allclose(moving_average(v, 5), [2.0, 3.0, 3.2, 15 / 4, 4.0])
    np.testing.assert_allclose(moving_average(v), [2.0, 2.0, 11 / 3, 4.0, 5.0])  # default window 3
    np.testing.assert_allclose(moving_average(v, 1), v)
    out = moving_average([np.nan, np.nan, np.nan, 1.0], 3)
    assert math.isnan(out[0]) and math.isnan(out[1])  # no finite reading in the window
    np.testing.assert_allclose(out[2:], [1.0, 1.0])
    assert moving_average([], 3).size == 0
    for bad in (0, -1, 2, 4):
        with pytest.raises(ValueError, match="odd"):
            moving_average(v, bad)


def test_smoothed_peak_by_hand() -> None:
    # smoothed (window 3): [1.5, 2, 3, 3, 3, 2.5]; the tie goes to the first index
    assert smoothed_peak([1.0, 2.0, 3.0, 4.0, 2.0, 3.0]) == (2, pytest.approx(3.0))
    i, v = smoothed_peak([1.0, 2.0, 3.0, 4.0, 2.0, 3.0], window=5)
    # window 5: [2, 2.5, 2.4, 2.8, 3, 3] -> first maximum at 4
    assert (i, v) == (4, pytest.approx(3.0))
    i, v = smoothed_peak([5.0, 1.0, 1.0, 1.0, 1.0], window=1)
    assert (i, v) == (0, 5.0)
    assert smoothed_peak([np.nan, 2.0, np.nan]) == (0, pytest.approx(2.0))
    with pytest.raises(ValueError, match="no finite"):
        smoothed_peak([np.nan, np.nan])
    with pytest.raises(ValueError, match="no finite"):
        smoothed_peak([])


def test_gold_attribution_by_hand() -> None:
    start = {"gold/mean": 0.2, "gold/part_a": 0.5, "gold/part_b": "0.25"}
    end = {"gold/mean": 0.6, "gold/part_a": 0.75, "gold/part_b": 0.0}
    att = gold_attribution(start, end, ("a", "b"))
    assert att == {"a": pytest.approx(0.25), "b": pytest.approx(-0.25), "unparseable": pytest.approx(0.4)}
    bad = gold_attribution(
        {"gold/mean": None, "gold/part_a": "x"}, {"gold/mean": 1.0, "gold/part_a": [1]}, ("a",)
    )
    assert math.isnan(bad["a"]) and math.isnan(bad["unparseable"])
    only_mean = gold_attribution({"gold/mean": 0.0}, {"gold/mean": 1.0}, ())
    assert only_mean == {"unparseable": 1.0}


def test_predict_of_a_scalar_is_a_python_float() -> None:
    for fit in (fit_bon_law(D, R), fit_rl_law(D, R)):
        for d in (0.0, 1.2):
            out = fit.predict(d)
            assert type(out) is float
        assert isinstance(fit.predict([1.2]), np.ndarray)


def test_errors_name_the_law_and_nulls_count_as_missing() -> None:
    with pytest.raises(ValueError, match=r"^bon law: need at least 2"):
        fit_bon_law([1.0], [0.1])
    with pytest.raises(ValueError, match=r"^rl law: need at least 2"):
        fit_rl_law([0.0, 1.0], [0.0, 0.1])
    # JSON nulls are missing readings: ignored by the moving average, dropped by the fit
    np.testing.assert_allclose(moving_average([1.0, None, 3.0], 3), [1.0, 2.0, 3.0])  # type: ignore[list-item]
    d = [0.5, 1.0, 1.5]
    fit = fit_law(
        "bon", [0.0, None, *[x * x for x in d]], [0.2, 0.9, *[0.2 + _bon_ref(x, 0.6, 0.2) for x in d]]
    )  # type: ignore[list-item]
    assert fit.n_points == 4 and fit.gold0 == 0.2
    assert fit.a == pytest.approx(0.6) and fit.b == pytest.approx(0.2)
    fit = fit_law(
        "bon", [0.0, 0.04, *[x * x for x in d]], [0.2, None, *[0.2 + _bon_ref(x, 0.6, 0.2) for x in d]]
    )  # type: ignore[list-item]
    assert fit.n_points == 4 and fit.a == pytest.approx(0.6)
