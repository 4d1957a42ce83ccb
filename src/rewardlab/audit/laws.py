"""Reward model over-optimization laws: fit how gold reward rises, peaks and falls with KL.

Gao, Schulman & Hilton (2022), "Scaling Laws for Reward Model Overoptimization" (arXiv:2210.10760),
measure the distance a policy has travelled from its initialization by ``d = sqrt(KL(π ‖ π_init))``
and find that the *gold* reward, relative to its value at the start, ``R(d) = gold(d) - gold(0)``,
follows (their eqs. 1-2)::

    best-of-n:  R_bon(d) = d (a - b d)
    RL:         R_rl(d)  = d (a - b log d)

Both are linear in ``(a, b)`` (columns ``d, -d²`` and ``d, -d log d``), so they are fitted here by
ordinary least squares with no intercept (``R(0) = 0`` by construction). ``a`` is the initial
slope of gold in ``d``; ``b`` is the rate at which over-optimization eats into it. With ``b > 0``
the curve has one interior maximum:

    best-of-n:  dR/dd = a - 2 b d = 0         ->  d* = a / (2 b),      R(d*) = a² / (4 b)   (needs a > 0)
    RL:         dR/dd = a - b log d - b = 0   ->  d* = exp(a / b - 1), R(d*) = b d*

and ``KL* = d*²``. With ``b <= 0`` gold never turns down within the law: no peak (a ``b`` at
floating-point noise level, ``b <= 1e-12 |a|``, counts as 0).

Also here: :func:`smoothed_peak` (the peak of a noisy curve, read from a centered moving average
because the maximum of noisy readings is biased upward) and :func:`gold_attribution` (which
gold part moved, between two audit rows).

Everything is pure numpy; nothing here reads files.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

LawKind = Literal["bon", "rl"]

#: The gold parts an audit row carries (``gold/part_<name>``), in the order reports show them.
#: The parts of gold of the default (arithmetic) task; other tasks declare theirs (``TaskInfo.gold_parts``).
GOLD_PARTS: tuple[str, ...] = ("accuracy", "length", "sycophancy", "confidence")


@dataclass(frozen=True)
class LawFit:
    """A fitted over-optimization law ``R(d)`` (gold relative to the start, ``d = sqrt(KL)``).

    ``r2`` is the coefficient of determination ``1 - SS_res / SS_tot`` (``SS_tot`` around the mean
    of ``R``) on the points given to the fit; it can be negative for a fit worse than a flat line.
    ``d_peak``/``kl_peak``/``peak_value`` are ``None`` when the law has no interior maximum.
    ``d_max`` is the largest ``d`` fitted: a ``d_peak`` beyond it is an extrapolation.
    ``gold0`` is the absolute gold at the reference point (0 unless fitted with :func:`fit_law`).
    """

    kind: LawKind
    a: float
    b: float
    r2: float
    d_peak: float | None
    kl_peak: float | None
    peak_value: float | None
    n_points: int = 0
    d_max: float = math.nan
    gold0: float = 0.0

    def predict(self, d: float | Sequence[float] | np.ndarray) -> float | np.ndarray:
        """``R(d)``: the law's gold gain over the start at ``d = sqrt(KL)`` (``R(0) = 0``).

        A float for a scalar ``d``, an array otherwise.
        """
        out = _law(self.kind, self.a, self.b, np.asarray(d, dtype=float))
        return float(out) if out.ndim == 0 else out

    def predict_gold(self, d: float | Sequence[float] | np.ndarray) -> float | np.ndarray:
        """Absolute gold: ``gold0 + R(d)``."""
        return self.gold0 + self.predict(d)

    @property
    def peak_in_range(self) -> bool:
        """Whether the law's peak lies within the fitted range of ``d`` (not extrapolated)."""
        return self.d_peak is not None and self.d_peak <= self.d_max

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _law(kind: str, a: float, b: float, d: np.ndarray) -> np.ndarray:
    if kind == "bon":
        return d * (a - b * d)
    if kind == "rl":
        with np.errstate(divide="ignore", invalid="ignore"):
            out = d * (a - b * np.log(d))
        return np.where(d > 0, out, 0.0)
    raise ValueError(f"unknown law kind {kind!r}; expected 'bon' or 'rl'")


def _as_points(
    d: Sequence[float] | np.ndarray, r: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    d_arr = np.asarray(d, dtype=float).ravel()
    r_arr = np.asarray(r, dtype=float).ravel()
    if d_arr.shape != r_arr.shape:
        raise ValueError(f"d and r have different lengths ({d_arr.size} vs {r_arr.size})")
    if not (np.all(np.isfinite(d_arr)) and np.all(np.isfinite(r_arr))):
        raise ValueError("d and r must be finite (drop NaN/inf points first, or use fit_law)")
    if np.any(d_arr < 0):
        raise ValueError("d = sqrt(KL) must be >= 0")
    return d_arr, r_arr


def _r2(y: np.ndarray, pred: np.ndarray) -> float:
    ss_res = float(np.sum((y - pred) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    if ss_tot == 0.0:
        return 1.0 if ss_res == 0.0 else 0.0
    return 1.0 - ss_res / ss_tot


def _solve(kind: LawKind, cols: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    if y.size < 2:
        raise ValueError(f"{kind} law: need at least 2 points with d > 0 to fit (a, b), got {y.size}")
    coef, _, rank, _ = np.linalg.lstsq(cols, y, rcond=None)
    if rank < 2:
        raise ValueError(f"{kind} law: the points do not determine (a, b) (all at the same d?)")
    return float(coef[0]), float(coef[1])


def _positive_b(a: float, b: float) -> bool:
    """``b > 0`` beyond floating-point noise (an exactly linear R fits b ~ 1e-17, not a far peak)."""
    return b > 1e-12 * max(abs(a), abs(b))


def fit_bon_law(d: Sequence[float] | np.ndarray, r: Sequence[float] | np.ndarray) -> LawFit:
    """Fit ``R(d) = d (a - b d)`` by least squares (no intercept).

    ``d``: ``sqrt(KL)`` per point, with best-of-n ``KL = log n - (n - 1) / n``; ``r``: gold minus
    gold at ``n = 1``. Peak: ``d* = a / (2 b)`` when ``a > 0`` and ``b > 0``, else ``None``.
    """
    d_arr, r_arr = _as_points(d, r)
    a, b = _solve("bon", np.column_stack([d_arr, -(d_arr**2)]), r_arr)
    d_peak = a / (2.0 * b) if (_positive_b(a, b) and a > 0) else None
    return _make("bon", a, b, d_arr, r_arr, d_peak)


def fit_rl_law(d: Sequence[float] | np.ndarray, r: Sequence[float] | np.ndarray) -> LawFit:
    """Fit ``R(d) = d (a - b log d)`` by least squares (no intercept).

    Points with ``d = 0`` carry no information (``R(0) = 0`` whatever ``a, b``; ``log 0``) and are
    dropped from the fit; ``r2`` is still computed on all given points. Peak:
    ``d* = exp(a / b - 1)`` when ``b > 0`` (``None`` if it overflows a float), else ``None``.
    """
    d_arr, r_arr = _as_points(d, r)
    pos = d_arr > 0
    dp = d_arr[pos]
    a, b = _solve("rl", np.column_stack([dp, -dp * np.log(dp)]), r_arr[pos])
    d_peak = None
    if _positive_b(a, b):
        try:
            d_peak = math.exp(a / b - 1.0)
        except OverflowError:
            d_peak = None
    return _make("rl", a, b, d_arr, r_arr, d_peak)


_MAX_D = math.sqrt(sys.float_info.max)  # d beyond which d**2 (the KL) overflows


def _make(kind: LawKind, a: float, b: float, d: np.ndarray, r: np.ndarray, d_peak: float | None) -> LawFit:
    r2 = _r2(r, _law(kind, a, b, d))
    if d_peak is not None and not (math.isfinite(d_peak) and d_peak < _MAX_D):
        d_peak = None  # a peak whose KL (d**2) overflows a float: none within any KL a run can reach
    kl_peak = d_peak**2 if d_peak is not None else None
    peak_value = float(_law(kind, a, b, np.asarray(d_peak))) if d_peak is not None else None
    return LawFit(kind, a, b, r2, d_peak, kl_peak, peak_value, n_points=int(d.size), d_max=float(d.max()))


def fit_law(kind: LawKind, kl: Sequence[float] | np.ndarray, gold: Sequence[float] | np.ndarray) -> LawFit:
    """Fit the ``kind`` law (``"bon"`` or ``"rl"``) from KL (nats) and absolute gold.

    Points with a non-finite KL or gold are dropped; negative KL (a noisy ``k1`` estimate) is
    clipped to 0 before ``d = sqrt(KL)``. The reference is the point with the smallest KL:
    ``R = gold - gold[argmin KL]``, so the first audit row should be the unoptimized policy
    (PPO step 0, best-of-1). The result's ``gold0`` holds that reference gold, so
    ``predict_gold(d)`` is on the absolute gold scale.
    """
    if kind not in ("bon", "rl"):
        raise ValueError(f"unknown law kind {kind!r}; expected 'bon' or 'rl'")
    kl_arr = np.asarray(kl, dtype=float).ravel()
    g_arr = np.asarray(gold, dtype=float).ravel()
    if kl_arr.shape != g_arr.shape:
        raise ValueError(f"kl and gold have different lengths ({kl_arr.size} vs {g_arr.size})")
    keep = np.isfinite(kl_arr) & np.isfinite(g_arr)
    kl_arr, g_arr = kl_arr[keep], g_arr[keep]
    if kl_arr.size == 0:
        raise ValueError(f"{kind} law: no finite (KL, gold) points")
    d = np.sqrt(np.clip(kl_arr, 0.0, None))
    gold0 = float(g_arr[int(np.argmin(d))])
    fit = (fit_bon_law if kind == "bon" else fit_rl_law)(d, g_arr - gold0)
    return dataclasses.replace(fit, gold0=gold0)


def moving_average(values: Sequence[float] | np.ndarray, window: int = 3) -> np.ndarray:
    """Centered moving average over ``window`` (odd) points; edges average the points available.

    NaN readings are ignored; a window with no finite reading gives NaN.
    """
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd integer, got {window}")
    v = np.asarray(values, dtype=float).ravel()
    half = window // 2
    out = np.full(v.size, np.nan)
    for i in range(v.size):
        w = v[max(0, i - half) : i + half + 1]
        w = w[np.isfinite(w)]
        if w.size:
            out[i] = float(w.mean())
    return out


def smoothed_peak(values: Sequence[float] | np.ndarray, window: int = 3) -> tuple[int, float]:
    """``(index, value)`` of the maximum of the centered moving average of ``values``.

    The max of noisy readings overestimates the true peak (and picks noise spikes); averaging each
    point with its ``window // 2`` neighbours on each side first gives a less biased estimate.
    ``value`` is the smoothed value at ``index``; ties go to the first index.
    """
    sm = moving_average(values, window)
    if sm.size == 0 or not np.any(np.isfinite(sm)):
        raise ValueError("smoothed_peak: no finite values")
    i = int(np.nanargmax(sm))
    return i, float(sm[i])


def _num(row: Mapping[str, Any], key: str) -> float:
    v = row.get(key)
    try:
        return float(v) if v is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def gold_attribution(start_row: Mapping[str, Any], end_row: Mapping[str, Any],
                     parts: Sequence[str] = GOLD_PARTS) -> dict[str, float]:  # fmt: skip
    """Where the gold change from ``start_row`` to ``end_row`` came from, in gold units.

    For each part ``p`` of gold (the task's; default :data:`GOLD_PARTS`): ``Δ gold/part_p``; plus
    ``"unparseable"``: ``Δ gold/mean - Σ_p Δ gold/part_p``, the change the parts do not explain
    (unparseable responses count only in ``gold/mean``). The values sum to ``Δ gold/mean``. A missing
    value gives NaN.
    """
    out = {p: _num(end_row, f"gold/part_{p}") - _num(start_row, f"gold/part_{p}") for p in parts}
    total = _num(end_row, "gold/mean") - _num(start_row, "gold/mean")
    out["unparseable"] = total - sum(out.values())
    return out


@dataclass(frozen=True)
class RiseThenFall:
    """Whether a gold curve rises, peaks inside its range, then falls by at least a threshold.

    Read on the centered moving average of gold (points ordered by KL): ``peak_index`` is its maximum,
    ``inside`` says the peak is neither the first nor the last point, ``lost_sd`` is the smoothed gold lost
    from the peak to the last point in units of ``gold_sd`` (the gold's standard deviation over the
    starting policy's samples), ``gain_sd`` the gain from the first point to the peak.
    ``rises_then_falls``: ``inside`` and ``lost_sd >= threshold`` (Gao et al. 2022's shape).
    """

    peak_index: int
    peak_kl: float
    gain_sd: float
    lost_sd: float
    inside: bool
    rises_then_falls: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def rise_then_fall(kl: Sequence[float] | np.ndarray, gold: Sequence[float] | np.ndarray, gold_sd: float,
                   threshold: float = 0.1, window: int = 3) -> RiseThenFall:  # fmt: skip
    """Test one curve for over-optimization: peak inside the range, then ``threshold`` gold SDs lost.

    Points are sorted by KL and smoothed with :func:`moving_average` (``window``) before the peak is read
    (:func:`smoothed_peak`), so a single noisy reading neither makes nor hides a peak.
    """
    if not (gold_sd > 0 and math.isfinite(gold_sd)):
        raise ValueError(f"rise_then_fall: gold_sd must be positive and finite, got {gold_sd}")
    kl_arr = np.asarray(kl, dtype=float).ravel()
    g_arr = np.asarray(gold, dtype=float).ravel()
    if kl_arr.shape != g_arr.shape or kl_arr.size < 2:
        raise ValueError(
            f"rise_then_fall: need matching kl and gold with >= 2 points, got {kl_arr.size}, {g_arr.size}"
        )
    order = np.argsort(kl_arr, kind="stable")
    kl_arr, g_arr = kl_arr[order], g_arr[order]
    sm = moving_average(g_arr, window)
    i, peak = smoothed_peak(g_arr, window)
    lost = (peak - float(sm[-1])) / gold_sd
    gain = (peak - float(sm[0])) / gold_sd
    inside = 0 < i < sm.size - 1
    return RiseThenFall(i, float(kl_arr[i]), gain, lost, inside, bool(inside and lost >= threshold))
