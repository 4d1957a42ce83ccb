"""Exact planning and evaluation on tabular models, and tabular Q-learning.

Arrays follow :class:`rewardlab.tasks.control.gridworlds.TabularModel`: ``P[s, a, s']`` transition
probabilities and rewards ``R[s, a, s']`` of a transition (any reward: visible, gold, learned, shaped).
Policies are ``(S, A)`` arrays of action probabilities (stationary) or ``(H, S, A)`` (one per step of a
finite horizon ``H``; ``policy[t]`` acts at step ``t``).

* :func:`value_iteration` - discounted Bellman optimality, ``Q(s,a) = sum_s' P (R + gamma max_a' Q(s',a'))``.
* :func:`finite_horizon_q` - backward induction over ``H`` steps (undiscounted by default).
* :func:`soft_value_iteration` - the max-ent (soft) Bellman backup of Ziebart et al. 2010 ("Modeling
  interaction via the principle of maximum causal entropy"): ``V(s) = (1/beta) log sum_a exp(beta Q(s,a))``,
  policy ``pi(a|s) = exp(beta (Q(s,a) - V(s)))``; ``beta -> inf`` is value iteration, ``beta = 0`` uniform.
* :func:`evaluate` / :func:`discounted_values` - exact expected return of a policy.
* :func:`q_learning` - Watkins' tabular Q-learning with epsilon-greedy exploration on a gymnasium env.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def expected_reward(P: np.ndarray, R: np.ndarray) -> np.ndarray:
    """``r(s, a) = sum_s' P(s'|s,a) R(s,a,s')``, shape ``(S, A)``."""
    return (P * R).sum(axis=2)


def value_iteration(P: np.ndarray, R: np.ndarray, gamma: float, tol: float = 1e-10, max_iter: int = 100_000
                    ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Optimal ``(V, Q)`` of the discounted problem (``0 <= gamma < 1``), to ``tol`` in max norm."""
    _check_gamma(gamma)
    r = expected_reward(P, R)
    V = np.zeros(P.shape[0])
    for _ in range(max_iter):
        Q = r + gamma * P @ V
        V_new = Q.max(axis=1)
        if np.max(np.abs(V_new - V)) < tol:
            return V_new, r + gamma * P @ V_new
        V = V_new
    raise RuntimeError(f"value iteration did not converge in {max_iter} iterations (gamma={gamma})")


def finite_horizon_q(P: np.ndarray, R: np.ndarray, horizon: int, gamma: float = 1.0) -> np.ndarray:
    """Optimal ``Q[t, s, a]`` of the ``horizon``-step problem (``Q[t]``: value with ``horizon - t`` steps left)."""
    r = expected_reward(P, R)
    Q = np.zeros((horizon, *r.shape))
    V = np.zeros(P.shape[0])
    for t in reversed(range(horizon)):
        Q[t] = r + gamma * P @ V
        V = Q[t].max(axis=1)
    return Q


def soft_value_iteration(P: np.ndarray, R: np.ndarray, beta: float = 1.0, *, horizon: int | None = None,
                         gamma: float = 1.0, tol: float = 1e-10, max_iter: int = 100_000,
                         v0: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Soft (max-ent) Bellman backups at inverse temperature ``beta``; returns ``(Q, policy)``.

    With ``horizon`` the problem is finite (``Q`` and ``policy`` are ``(H, S, A)``, ``gamma`` may be 1);
    without it, discounted with ``gamma < 1`` (``(S, A)``), iterated from ``v0`` (default zeros; a warm start
    from a nearby reward's values converges in fewer backups). ``beta = 0`` gives the uniform policy.
    """
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    r = expected_reward(P, R)

    def backup(Q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if beta == 0:
            return Q.mean(axis=1), np.full(Q.shape, 1.0 / Q.shape[1])
        top = Q.max(axis=1)
        z = np.exp(beta * (Q - top[:, None]))
        total = z.sum(axis=1)
        return top + np.log(total) / beta, z / total[:, None]

    if horizon is not None:
        Qs, pis = np.zeros((horizon, *r.shape)), np.zeros((horizon, *r.shape))
        V = np.zeros(P.shape[0])
        for t in reversed(range(horizon)):
            Qs[t] = r + gamma * P @ V
            V, pis[t] = backup(Qs[t])
        return Qs, pis / pis.sum(axis=-1, keepdims=True)
    _check_gamma(gamma)
    V = np.zeros(P.shape[0]) if v0 is None else np.asarray(v0, dtype=float)
    for _ in range(max_iter):
        Q = r + gamma * P @ V
        V_new, _ = backup(Q)
        if np.max(np.abs(V_new - V)) < tol:
            Q = r + gamma * P @ V_new
            return Q, backup(Q)[1]
        V = V_new
    raise RuntimeError(f"soft value iteration did not converge in {max_iter} iterations (gamma={gamma})")


def greedy(Q: np.ndarray, atol: float = 1e-8) -> np.ndarray:
    """The uniform policy over the maximizing actions of ``Q`` (``(..., S, A)``; ties within ``atol``)."""
    best = Q.max(axis=-1, keepdims=True) - atol <= Q
    return best / best.sum(axis=-1, keepdims=True)


def optimal_actions(Q: np.ndarray, atol: float = 1e-8) -> np.ndarray:
    """Boolean mask of the maximizing actions of ``Q`` (the set that defines "the optimal policy")."""
    return Q.max(axis=-1, keepdims=True) - atol <= Q


def _step_policy(policy: np.ndarray, t: int) -> np.ndarray:
    return policy[min(t, len(policy) - 1)] if policy.ndim == 3 else policy


def state_distributions(P: np.ndarray, policy: np.ndarray, init: np.ndarray, horizon: int) -> np.ndarray:
    """``D[t, s]``: probability of being in ``s`` at step ``t`` (``t = 0..horizon-1``) under ``policy``."""
    D = np.zeros((horizon, P.shape[0]))
    d = np.asarray(init, dtype=float)
    for t in range(horizon):
        D[t] = d
        d = (d[:, None] * _step_policy(policy, t)).reshape(-1) @ P.reshape(-1, P.shape[2])
    return D


def evaluate(P: np.ndarray, R: np.ndarray, policy: np.ndarray, init: np.ndarray, horizon: int,
             gamma: float = 1.0) -> float:  # fmt: skip
    """Exact expected return ``E[sum_t gamma^t R(s_t, a_t, s_t+1)]`` over ``horizon`` steps."""
    r = expected_reward(P, R)
    D = state_distributions(P, policy, init, horizon)
    return float(
        sum(gamma**t * np.einsum("s,sa,sa->", D[t], _step_policy(policy, t), r) for t in range(horizon))
    )


def discounted_values(P: np.ndarray, R: np.ndarray, policy: np.ndarray, gamma: float) -> np.ndarray:
    """``V^pi`` of a stationary policy: the solution of ``V = r_pi + gamma P_pi V`` (one linear solve)."""
    _check_gamma(gamma)
    r_pi = np.einsum("sa,sa->s", policy, expected_reward(P, R))
    P_pi = np.einsum("sa,sap->sp", policy, P)
    return np.asarray(np.linalg.solve(np.eye(P.shape[0]) - gamma * P_pi, r_pi))


def discounted_occupancy(P: np.ndarray, policy: np.ndarray, init: np.ndarray, gamma: float) -> np.ndarray:
    """``rho(s, a) = sum_t gamma^t Pr(s_t = s, a_t = a)`` of a stationary policy (``(S, A)``)."""
    _check_gamma(gamma)
    P_pi = np.einsum("sa,sap->sp", policy, P)
    d = np.linalg.solve(np.eye(P.shape[0]) - gamma * P_pi.T, np.asarray(init, dtype=float))
    return np.asarray(d[:, None] * policy)


def q_learning(env: Any, episodes: int, *, alpha: float = 0.5, gamma: float = 0.95, epsilon: float = 0.1,
               seed: int = 0, reward_fn: Any = None) -> np.ndarray:  # fmt: skip
    """Watkins' Q-learning (Watkins & Dayan 1992): ``Q(s,a) += alpha (r + gamma max_a' Q(s',a') - Q(s,a))``.

    ``env`` has ``Discrete`` observations and actions; it learns from the visible reward unless
    ``reward_fn(s, a, s2)`` is given (a learned or shaped reward). Exploration is epsilon-greedy with
    random tie breaking; the bootstrap is cut at termination (not at truncation). Returns ``Q``.
    """
    rng = np.random.default_rng(seed)
    Q = np.zeros((env.observation_space.n, env.action_space.n))
    for episode in range(episodes):
        s, _ = env.reset(seed=seed + episode)
        done = False
        while not done:
            if rng.random() < epsilon:
                a = int(rng.integers(Q.shape[1]))
            else:
                a = int(rng.choice(np.flatnonzero(Q[s] == Q[s].max())))
            s2, r, terminated, truncated, _ = env.step(a)
            if reward_fn is not None:
                r = reward_fn(s, a, s2)
            target = r + (0.0 if terminated else gamma * Q[s2].max())
            Q[s, a] += alpha * (target - Q[s, a])
            s, done = s2, terminated or truncated
    return Q


def _check_gamma(gamma: float) -> None:
    if not 0.0 <= gamma < 1.0:
        raise ValueError(f"gamma must be in [0, 1) for a discounted problem, got {gamma}")
