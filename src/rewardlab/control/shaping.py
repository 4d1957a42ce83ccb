"""Reward shaping on tabular rewards ``R[s, a, s']``: one kind keeps optimal policies, one does not.

* :func:`potential_shaping` - Ng, Harada & Russell 1999 ("Policy invariance under reward transformations"):
  ``R'(s, a, s') = R(s, a, s') + gamma Phi(s') - Phi(s)``. For the discounted problem with the same
  ``gamma``, ``Q'(s, a) = Q(s, a) - Phi(s)`` for every policy's and the optimal ``Q``, so the optimal
  policies are exactly the same (and soft-optimal policies too: the soft ``Q`` shifts by ``Phi(s)`` as well).
* :func:`progress_bonus` - a shaping that is *not* a potential difference: ``+bonus`` whenever a step
  lowers a progress measure ``d`` (e.g. distance to the goal), with no penalty for raising it
  (Randlov & Alstrom 1998's bicycle, which learned to ride in circles round the goal). A loop of
  approach-retreat steps collects the bonus forever, so it changes the optimal policy.
"""

from __future__ import annotations

import numpy as np


def potential_shaping(R: np.ndarray, potential: np.ndarray, gamma: float) -> np.ndarray:
    """``R(s,a,s') + gamma Phi(s') - Phi(s)`` for a potential ``Phi`` of shape ``(S,)``."""
    phi = np.asarray(potential, dtype=float)
    if phi.shape != (R.shape[0],):
        raise ValueError(f"potential must have shape ({R.shape[0]},), got {phi.shape}")
    return R + gamma * phi[None, None, :] - phi[:, None, None]


def random_potential(n_states: int, seed: int, scale: float = 1.0) -> np.ndarray:
    """A potential with independent normal values (``scale`` their standard deviation)."""
    return np.random.default_rng(seed).normal(0.0, scale, size=n_states)


def progress_bonus(R: np.ndarray, progress: np.ndarray, bonus: float) -> np.ndarray:
    """``R + bonus * [d(s') < d(s)]``: pays for every step that lowers ``d`` (``(S,)``), never charges."""
    d = np.asarray(progress, dtype=float)
    if d.shape != (R.shape[0],):
        raise ValueError(f"progress must have shape ({R.shape[0]},), got {d.shape}")
    return R + bonus * (d[None, None, :] < d[:, None, None])
