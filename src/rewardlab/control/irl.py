"""Tabular maximum-causal-entropy inverse RL, and why its answer is not unique.

**MCE IRL** (Ziebart, Bagnell & Dey 2010, "Modeling interaction via the principle of maximum causal
entropy"; Ziebart's thesis, ch. 6; discounted form as in Gleave & Toyer 2022, "A primer on maximum causal
entropy inverse reinforcement learning"). The demonstrator is modelled as soft-optimal for a reward linear
in state features, ``r_theta(s) = theta . phi(s)`` (paid on leaving ``s``):

    Q(s, a) = r_theta(s) + gamma sum_s' P(s'|s, a) V(s'),   V(s) = log sum_a exp Q(s, a),
    pi_theta(a|s) = exp(Q(s, a) - V(s)).

Maximizing the discounted causal log-likelihood of the demonstrations is a concave problem whose gradient
matches feature expectations:

    grad_theta = mu_E - mu_theta,   mu = sum_s rho(s) phi(s),   rho(s) = sum_t gamma^t Pr(s_t = s),

with ``mu_E`` from the demonstrations and ``mu_theta`` exact from ``pi_theta`` (one linear solve). We ascend
it with Adam and an L2 penalty ``l2 |theta|^2 / 2``.

**Ill-posedness** (Ng & Russell 2000; the chapter's section on IRL): many rewards explain the same
behaviour. :func:`ill_posedness` measures it on a learned reward: the zero reward makes every policy
optimal (the expert's too); a potential-shaped copy ``r + gamma Phi(s') - Phi(s)`` has the same soft ``Q`` up
to ``Phi(s)``, hence *exactly* the same policy and demo likelihood, while looking different state by state;
EPIC (:mod:`rewardlab.control.epic`) calls the two the same reward.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from rewardlab.control.epic import epic_distance
from rewardlab.control.shaping import potential_shaping
from rewardlab.control.tabular import (
    discounted_occupancy,
    optimal_actions,
    soft_value_iteration,
    value_iteration,
)


@dataclass
class IRLResult:
    """A learned reward: ``theta``, the transition reward ``R[s, a, s']`` it induces, its soft policy, and
    the feature-matching gap ``|mu_E - mu_theta|_1`` after each step (``history``)."""

    theta: np.ndarray
    reward: np.ndarray
    policy: np.ndarray
    history: list[float] = field(default_factory=list)


def state_reward(theta: np.ndarray, features: np.ndarray, n_actions: int) -> np.ndarray:
    """``R[s, a, s'] = theta . phi(s)`` as an ``(S, A, S)`` array."""
    r = features @ theta
    return np.broadcast_to(r[:, None, None], (len(r), n_actions, len(r))).copy()


def occupancy_from_demos(demos: Sequence[Sequence[int]], n_states: int, gamma: float,
                         terminal: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """Mean discounted state visitation ``rho(s)`` of demonstrations (each a list of visited states).

    A demo that ends in a ``terminal`` (absorbing) state stays there forever: its tail adds
    ``gamma^T / (1 - gamma)`` at that state, so the estimate matches :func:`discounted_occupancy`.
    """
    rho = np.zeros(n_states)
    for states in demos:
        for t, s in enumerate(states):
            rho[s] += gamma**t
        last = states[-1]
        if terminal is not None and terminal[last]:
            rho[last] += gamma ** len(states) / (1.0 - gamma)
    return rho / len(demos)


def mce_irl(P: np.ndarray, init: np.ndarray, expert_rho: np.ndarray, *, features: np.ndarray | None = None,
            gamma: float = 0.9, lr: float = 0.1, steps: int = 300, l2: float = 0.0) -> IRLResult:  # fmt: skip
    """MCE IRL (module docstring): fit ``theta`` so the soft-optimal policy's discounted state visitation
    matches ``expert_rho`` (``(S,)``, e.g. from :func:`occupancy_from_demos`). ``features`` is ``(S, F)``
    (default: one-hot states). Deterministic: no sampling anywhere."""
    n_s, n_a, _ = P.shape
    phi = np.eye(n_s) if features is None else np.asarray(features, dtype=float)
    if phi.shape[0] != n_s:
        raise ValueError(f"features must have {n_s} rows (one per state), got {phi.shape}")
    if expert_rho.shape != (n_s,):
        raise ValueError(f"expert_rho must have shape ({n_s},), got {expert_rho.shape}")
    mu_e = expert_rho @ phi
    theta = np.zeros(phi.shape[1])
    m, v = np.zeros_like(theta), np.zeros_like(theta)
    b1, b2, eps = 0.9, 0.999, 1e-8
    history = []
    values = np.zeros(n_s)
    for t in range(1, steps + 1):
        # step 1. soft-optimal policy of the current reward (warm-started from the last step's values)
        Q, policy = soft_value_iteration(
            P, state_reward(theta, phi, n_a), 1.0, gamma=gamma, tol=1e-8, v0=values
        )
        values = np.einsum("sa,sa->s", policy, Q - np.log(np.maximum(policy, 1e-300)))
        # step 2. its discounted visitation and the feature-matching gradient
        mu = discounted_occupancy(P, policy, init, gamma).sum(axis=1) @ phi
        grad = mu_e - mu - l2 * theta
        history.append(float(np.abs(mu_e - mu).sum()))
        # step 3. Adam ascent
        m = b1 * m + (1 - b1) * grad
        v = b2 * v + (1 - b2) * grad**2
        theta = theta + lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
    reward = state_reward(theta, phi, n_a)
    _, policy = soft_value_iteration(P, reward, 1.0, gamma=gamma, tol=1e-8)
    return IRLResult(theta=theta, reward=reward, policy=policy, history=history)


def demo_log_likelihood(P: np.ndarray, reward: np.ndarray, demos: Sequence[Sequence[tuple[int, int]]],
                        gamma: float) -> float:  # fmt: skip
    """Log-likelihood of demonstrations (lists of ``(state, action)``) under the soft-optimal policy of ``reward``."""
    _, policy = soft_value_iteration(P, reward, 1.0, gamma=gamma, tol=1e-10)
    return float(sum(np.log(policy[s, a]) for demo in demos for s, a in demo))


def expert_is_optimal(P: np.ndarray, reward: np.ndarray, demos: Sequence[Sequence[tuple[int, int]]],
                      gamma: float) -> bool:  # fmt: skip
    """Whether every demonstrated action is an optimal action for ``reward`` (hard value iteration)."""
    _, Q = value_iteration(P, reward, gamma)
    best = optimal_actions(Q, atol=1e-6)
    return all(best[s, a] for demo in demos for s, a in demo)


def ill_posedness(P: np.ndarray, reward: np.ndarray, demos: Sequence[Sequence[tuple[int, int]]], gamma: float,
                  potential: np.ndarray) -> dict[str, float | bool]:  # fmt: skip
    """How well the zero reward and a potential-shaped copy of ``reward`` explain the same demonstrations."""
    shaped = potential_shaping(reward, potential, gamma)
    zero = np.zeros_like(reward)
    return {
        "loglik_learned": demo_log_likelihood(P, reward, demos, gamma),
        "loglik_shaped": demo_log_likelihood(P, shaped, demos, gamma),
        "loglik_zero": demo_log_likelihood(P, zero, demos, gamma),
        "optimal_learned": expert_is_optimal(P, reward, demos, gamma),
        "optimal_shaped": expert_is_optimal(P, shaped, demos, gamma),
        "optimal_zero": expert_is_optimal(P, zero, demos, gamma),
        "epic_learned_shaped": epic_distance(reward, shaped, gamma),
        "max_abs_change_shaped": float(np.max(np.abs(shaped - reward))),
    }
