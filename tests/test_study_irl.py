"""Inverse RL of the IRL study on a tiny synthetic policy whose reward is planted (known answer)."""

from __future__ import annotations

import numpy as np
import pytest

from rewardlab.studies.irl import max_margin_irl, maxent_irl, pair_accuracy


def _planted(seed: int = 0, prompts: int = 200, cands: int = 6, d: int = 4, n: int = 64):
    """Per prompt, ``cands`` responses with features; pi_ref uniform over them; pi ∝ pi_ref exp(w* . phi)."""
    rng = np.random.default_rng(seed)
    w_star = np.array([1.5, -1.0, 0.0, 0.5])[:d]
    phi = rng.normal(size=(prompts, cands, d))
    logits = phi @ w_star
    pi = np.exp(logits - logits.max(1, keepdims=True))
    pi /= pi.sum(1, keepdims=True)
    take_pi = np.stack([rng.choice(cands, size=n, p=pi[i]) for i in range(prompts)])
    take_ref = rng.integers(0, cands, size=(prompts, n))
    rows = np.arange(prompts)[:, None]
    return w_star, phi[rows, take_pi], phi[rows, take_ref]


def test_maxent_recovers_a_planted_linear_reward() -> None:
    w_star, phi_pi, phi_ref = _planted()
    w = maxent_irl(phi_pi, phi_ref, l2=0.0)
    # the scale is identified too (pi's temperature is 1); with few reference samples per prompt the
    # importance-sampled log Z overfits and inflates it (8 samples: about 2x), the direction stays
    assert np.allclose(w, w_star, atol=0.15)
    cos = w @ w_star / np.linalg.norm(w) / np.linalg.norm(w_star)
    assert cos > 0.97


def test_max_margin_points_along_the_planted_reward() -> None:
    w_star, phi_pi, phi_ref = _planted(seed=1)
    w = max_margin_irl(phi_pi, phi_ref)
    assert np.linalg.norm(w) == pytest.approx(1.0)
    assert w @ w_star / np.linalg.norm(w_star) > 0.9


def test_pair_accuracy_counts_ties_half_and_skips_unlabelled() -> None:
    assert (
        pair_accuracy(np.array([2.0, 1.0, 1.0, 0.0]), np.array([1.0, 2.0, 1.0, 5.0]), np.array([1, 1, 1, 0]))
        == 0.5
    )
    # a function of the prompt added to both sides changes nothing (non-identifiability)
    a, b, lab = np.array([0.3, -1.0]), np.array([0.1, 2.0]), np.array([1, -1])
    assert pair_accuracy(a + 7.0, b + 7.0, lab) == pair_accuracy(a, b, lab) == 1.0


def test_a_feature_only_the_policy_shows_does_not_swallow_the_fits() -> None:
    """Seed 2 of the full-curve run: "definitely" never in the reference's samples, in a handful of the policy's.
    Standardized by the reference alone (std 0) it became a 1e8 feature; scaled by both policies' std it stays one
    feature among others, and the planted weights are still recovered."""
    from rewardlab.studies.irl import feature_scale

    w_star, phi_pi, phi_ref = _planted(seed=2, d=3)
    rare_pi, rare_ref = np.zeros((*phi_pi.shape[:2], 1)), np.zeros((*phi_ref.shape[:2], 1))
    rare_pi[:3, 0, 0] = 1.0  # 3 of 12,800 policy samples
    f_pi, f_ref = np.concatenate([phi_pi, rare_pi], -1), np.concatenate([phi_ref, rare_ref], -1)
    d = f_pi.shape[-1]
    mu, sd = feature_scale(f_ref.reshape(-1, d), f_pi.reshape(-1, d))
    assert np.all(np.isfinite(sd)) and sd[-1] == pytest.approx(
        np.concatenate([f_ref, f_pi]).reshape(-1, d)[:, -1].std()
    )
    z_pi, z_ref = (f_pi - mu) / sd, (f_ref - mu) / sd
    assert np.abs(z_pi).max() < 100
    w = max_margin_irl(z_pi, z_ref)
    assert abs(w[-1]) < 0.1 and (w[:3] * sd[:3]) @ w_star / np.linalg.norm(w_star) > 0.85
    w_ent = maxent_irl(z_pi, z_ref, l2=0.1) / sd  # the L2 penalty shrinks the scale; the direction stays
    assert w_ent[:3] @ w_star / np.linalg.norm(w_ent[:3]) / np.linalg.norm(w_star) > 0.97
    assert np.all(np.isfinite(w_ent)) and abs(w_ent[-1]) < 50
    # constant on both: scale 1, standardized to 0
    _, sd0 = feature_scale(np.zeros((5, 2)), np.zeros((4, 2)))
    assert sd0.tolist() == [1.0, 1.0]
