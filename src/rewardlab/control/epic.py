"""EPIC: the Equivalent-Policy Invariant Comparison pseudometric between rewards (Gleave, Dennis, Legg,
Russell & Leike, ICLR 2021, "Quantifying differences in reward functions").

Two rewards that differ by potential shaping and positive scaling have the same optimal policies under
any dynamics; EPIC is 0 exactly for them and grows to 1 for opposite rewards, without training a policy.

1. **Canonicalize** each reward with independent coverage distributions ``D_S`` over states and ``D_A``
   over actions (``S, S' ~ D_S``, ``A ~ D_A``):

   ``C(R)(s, a, s') = R(s, a, s') + gamma E[R(s', A, S')] - E[R(s, A, S')] - gamma E[R(S, A, S')]``.

   This removes any potential shaping ``gamma Phi(s') - Phi(s)`` (and any constant).
2. **Pearson distance** of the canonical rewards over a distribution ``D`` of transitions:
   ``D_rho(X, Y) = sqrt((1 - rho(X, Y)) / 2)``, in ``[0, 1]``; it ignores positive scaling.

:func:`epic_distance` does this exactly on tabular rewards ``R[s, a, s']`` (``D`` weights every
transition, uniform by default); :func:`epic_distance_sampled` estimates it for reward *functions* on
sampled transitions, with the expectations of step 1 by Monte Carlo over sampled ``(A, S')`` pairs, as in
the paper's sample-based estimator (so any learned reward on any environment can be compared with gold).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

RewardFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def _dist(p: np.ndarray | None, n: int, name: str) -> np.ndarray:
    if p is None:
        return np.full(n, 1.0 / n)
    p = np.asarray(p, dtype=float)
    if p.shape != (n,) or np.any(p < 0) or not np.isclose(p.sum(), 1.0):
        raise ValueError(f"{name} must be a probability vector of length {n}")
    return p


def canonicalize(R: np.ndarray, gamma: float, state_dist: np.ndarray | None = None,
                 action_dist: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """The canonical form ``C(R)`` of a tabular reward ``R[s, a, s']`` (module docstring, step 1)."""
    n_s, n_a, _ = R.shape
    ds, da = _dist(state_dist, n_s, "state_dist"), _dist(action_dist, n_a, "action_dist")
    mean_from = np.einsum("xay,a,y->x", R, da, ds)  # E[R(x, A, S')] for every x
    mean_all = float(ds @ mean_from)  # E[R(S, A, S')]
    return R + gamma * mean_from[None, None, :] - mean_from[:, None, None] - gamma * mean_all


def pearson_distance(x: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None) -> float:
    """``sqrt((1 - rho) / 2)`` with ``rho`` the (weighted) Pearson correlation of ``x`` and ``y``.

    Raises ``ValueError`` when either is constant under the weights (the correlation is undefined: a
    reward equivalent to zero has no direction to compare).
    """
    x, y = np.ravel(x).astype(float), np.ravel(y).astype(float)
    w = np.full(x.size, 1.0 / x.size) if weights is None else np.ravel(weights) / np.sum(weights)
    xc, yc = x - w @ x, y - w @ y
    vx, vy = w @ (xc * xc), w @ (yc * yc)
    scale = max(1.0, float(np.max(np.abs(x))), float(np.max(np.abs(y))))
    for name, v in (("first", vx), ("second", vy)):
        if v <= (1e-12 * scale) ** 2:
            raise ValueError(
                f"EPIC: the {name} reward is constant after canonicalization (equivalent to zero)"
            )
    rho = float(np.clip((w @ (xc * yc)) / np.sqrt(vx * vy), -1.0, 1.0))
    return float(np.sqrt((1.0 - rho) / 2.0))


def epic_distance(R1: np.ndarray, R2: np.ndarray, gamma: float, *, state_dist: np.ndarray | None = None,
                  action_dist: np.ndarray | None = None, coverage: np.ndarray | None = None) -> float:  # fmt: skip
    """EPIC distance of two tabular rewards ``(S, A, S)``; ``coverage`` weights transitions (uniform default)."""
    if R1.shape != R2.shape:
        raise ValueError(f"rewards must have the same shape, got {R1.shape} and {R2.shape}")
    c1 = canonicalize(R1, gamma, state_dist, action_dist)
    c2 = canonicalize(R2, gamma, state_dist, action_dist)
    return pearson_distance(c1, c2, coverage)


def canonicalize_sampled(reward: RewardFn, transitions: tuple[np.ndarray, np.ndarray, np.ndarray],
                         mean_states: np.ndarray, mean_actions: np.ndarray, gamma: float) -> np.ndarray:  # fmt: skip
    """Monte-Carlo canonical rewards of ``transitions = (s, a, s')`` (``N`` each).

    ``mean_states`` and ``mean_actions`` (``M`` each) are samples of ``D_S`` and ``D_A``; the expectations
    ``E[R(x, A, S')]`` average over the ``M`` pairs ``(mean_actions[j], mean_states[perm[j]])`` (an
    independent pairing), and ``E[R(S, A, S')]`` over the triples ``(mean_states[j], mean_actions[j],
    mean_states[perm[j]])``. ``reward(s, a, s')`` takes batched arrays and returns ``(batch,)``.
    """
    s, a, s2 = transitions
    m = len(mean_states)
    nxt = np.roll(np.arange(m), 1)  # a fixed derangement pairs S with an independent S'
    pair_a, pair_s2 = mean_actions, mean_states[nxt]

    def mean_from(x: np.ndarray) -> np.ndarray:
        n = len(x)
        xs = np.repeat(x, m, axis=0)
        out = reward(xs, np.tile(pair_a, (n,) + (1,) * (pair_a.ndim - 1)),
                     np.tile(pair_s2, (n,) + (1,) * (pair_s2.ndim - 1)))  # fmt: skip
        return np.asarray(out, dtype=float).reshape(n, m).mean(axis=1)

    mean_all = float(np.mean(reward(mean_states, pair_a, pair_s2)))
    base = np.asarray(reward(s, a, s2), dtype=float)
    return base + gamma * mean_from(s2) - mean_from(s) - gamma * mean_all


def epic_distance_sampled(r1: RewardFn, r2: RewardFn, transitions: tuple[np.ndarray, np.ndarray, np.ndarray],
                          mean_states: np.ndarray, mean_actions: np.ndarray, gamma: float) -> float:  # fmt: skip
    """EPIC distance of two reward functions, estimated on sampled transitions (:func:`canonicalize_sampled`)."""
    c1 = canonicalize_sampled(r1, transitions, mean_states, mean_actions, gamma)
    c2 = canonicalize_sampled(r2, transitions, mean_states, mean_actions, gamma)
    return pearson_distance(c1, c2)


def tabular_reward_fn(R: np.ndarray) -> RewardFn:
    """A tabular reward as a batched function of integer ``(s, a, s')`` arrays."""
    return lambda s, a, s2: R[np.asarray(s, dtype=int), np.asarray(a, dtype=int), np.asarray(s2, dtype=int)]
