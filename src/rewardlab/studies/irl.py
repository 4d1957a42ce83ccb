"""Study: recover the reward an RLHF'd policy learned, by inverse RL over sequences (seed 002).

    rewardlab study irl configs/study-irl.yaml

KL-regularized RL against a reward r has the closed-form optimum ``pi(y|x) = pi_ref(y|x) exp(r(x, y) / beta) /
Z(x)`` (Ziebart 2010; Rafailov et al. 2023, eq. 4), so from the PPO policy and its SFT reference a reward is
recovered up to a function of the prompt: ``r_cf(x, y) = beta * log(pi(y|x) / pi_ref(y|x))``. Two feature-based
fits over the task's surface features and correctness, ``r_w(x, y) = w . phi(x, y)``:

* **maximum entropy** (Ziebart et al. 2008, in the KL-regularized form): maximize the log-likelihood of the
  policy's samples under ``pi_ref exp(w . phi) / Z``, ``L(w) = E_pi[w . phi] - E_x log E_{y ~ pi_ref}[exp(w .
  phi(x, y))] - l2 / 2 |w|^2``; ``Z(x)`` is estimated from reference samples of the same prompt (importance
  sampling), and the gradient is the feature-matching ``E_pi[phi] - E_{pi_ref, tilted}[phi]``;
* **max-margin** (Abbeel & Ng 2004, one step of the projection method with the reference as the only
  alternative): ``w = (mu_pi - mu_ref) / |mu_pi - mu_ref|``, the direction that separates the policy's
  feature expectations from the reference's with the largest margin.

Each recovered reward is scored on held-out preference pairs (the arm's eval pairs): how often it prefers
the side the proxy reward model prefers, the side gold prefers and the side the rater chose. Non-identifiability
is shown by adding a random function of the prompt to ``r_cf``: every same-prompt preference, hence the
policy it implies, is unchanged, while the reward's values (its correlation with ``r_cf`` across prompts)
change arbitrarily.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field

from rewardlab.audit.policy_eval import generate_responses
from rewardlab.feedback.records import Comparison, load_comparisons
from rewardlab.optimize.dpo import compute_logps, tokenize_comparisons
from rewardlab.policies.models import load_causal_lm, load_tokenizer
from rewardlab.rewards.model import RewardModel
from rewardlab.studies.common import StudyConfig, markdown_table, save_figure, write_table
from rewardlab.tasks.base import Task
from rewardlab.utils import RewardlabError, set_threads

COLUMNS = ["seed", "reward", "acc_vs_proxy", "acc_vs_gold", "acc_vs_rater", "n_pairs"]


class IRLStudyConfig(StudyConfig):
    """``configs/study-irl.yaml``: the policy, its reference, the reward model, the samples the fits use."""

    policy: str = Field("{arm}-s{seed}/ppo/model", description="the RLHF'd policy, relative to run_dir")
    reference: str = Field("sft/model", description="its reference (SFT) policy, relative to run_dir")
    reward: str = Field("{arm}-s{seed}/reward/model", description="the proxy it was trained against")
    pairs: str = Field("{arm}-s{seed}/label/eval.jsonl", description="held-out preference pairs")
    arm: str = Field("time-pressed", description="the arm's name ({arm} above)")
    beta: float = Field(0.05, gt=0, description="the KL coefficient of the RL run (scales r_cf only)")
    prompts: int = Field(512, gt=0, description="prompts the feature fits sample from each policy")
    samples: int = Field(4, gt=0, description="samples per prompt from each policy")
    l2: float = Field(0.1, ge=0, description="max-ent L2 penalty on w (standardized features)")
    max_pairs: int = Field(2000, gt=0, description="held-out pairs scored (the first ones)")


# ------------------------------------------------------------------------------ estimators
def maxent_irl(phi_pi: np.ndarray, phi_ref: np.ndarray, l2: float = 1e-3, steps: int = 200) -> np.ndarray:
    """Max-ent IRL against a reference: ``argmax_w E_pi[w.phi] - E_x log E_ref[exp(w.phi)] - l2/2 |w|^2``.

    ``phi_pi``: [P, M, d] features of M policy samples per prompt; ``phi_ref``: [P, K, d] of K reference
    samples of the same P prompts. Concave in w; solved with L-BFGS. Ziebart et al. 2008 ("Maximum Entropy
    Inverse Reinforcement Learning"), with the reference as the base measure (the KL-regularized optimum)."""
    a = torch.as_tensor(phi_pi, dtype=torch.float64)
    b = torch.as_tensor(phi_ref, dtype=torch.float64)
    if a.ndim != 3 or b.ndim != 3 or a.shape[0] != b.shape[0] or a.shape[2] != b.shape[2]:
        raise RewardlabError(f"maxent_irl: expected [P, M, d] and [P, K, d], got {tuple(a.shape)} and {tuple(b.shape)}")  # fmt: skip
    w = torch.zeros(a.shape[2], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")
    log_k = float(np.log(b.shape[1]))

    def closure() -> torch.Tensor:
        opt.zero_grad()
        log_z = torch.logsumexp(b @ w, dim=1) - log_k
        loss = -((a @ w).mean() - log_z.mean()) + 0.5 * l2 * (w @ w)
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy()


def max_margin_irl(phi_pi: np.ndarray, phi_ref: np.ndarray) -> np.ndarray:
    """The unit ``w`` maximizing ``w . (mu_pi - mu_ref)``: ``(mu_pi - mu_ref) / |mu_pi - mu_ref|`` (Abbeel & Ng 2004)."""
    d = np.asarray(phi_pi, dtype=float).reshape(-1, phi_pi.shape[-1]).mean(0) - np.asarray(
        phi_ref, dtype=float
    ).reshape(-1, phi_ref.shape[-1]).mean(0)
    n = np.linalg.norm(d)
    return d / n if n > 0 else d


def pair_accuracy(r_chosen: np.ndarray, r_rejected: np.ndarray, label: np.ndarray) -> float:
    """Share of pairs where the reward prefers the side ``label`` prefers (+1: chosen, -1: rejected; 0 skipped;
    a reward tie counts half)."""
    m = np.sign(np.asarray(r_chosen) - np.asarray(r_rejected))
    lab = np.asarray(label)
    keep = lab != 0
    if not keep.any():
        return float("nan")
    return float(np.mean(np.where(m[keep] == 0, 0.5, (m[keep] == lab[keep]).astype(float))))


# ------------------------------------------------------------------------------ features
def features(task: Task, prompts: Sequence[str], responses: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """``phi(x, y)``: the task's surface features, plus ``correct`` and ``parseable`` from its gold detail."""
    rows, names = [], None
    for p, r in zip(prompts, responses, strict=True):
        item = task.item(p)
        f = dict(task.surface_features(item, r))
        g = task.gold_detail(item, r)
        f["correct"] = float(bool(g is not None and g.correct))
        f["parseable"] = float(bool(g is None or g.parseable))
        names = names or sorted(f)
        rows.append([f[k] for k in names])
    return np.asarray(rows, dtype=float), list(names or [])


def feature_scale(f_ref: np.ndarray, f_pi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and scale [F] that standardize features: the reference samples' mean and std. A feature constant
    on the reference (a phrase only the trained policy says) is scaled by its std over both policies' samples,
    and one constant on both by 1, so that no standardized value explodes (a 1e-8 floor once turned one rare
    "definitely" into a 1e8 feature that swallowed both fits)."""
    mu, sd = f_ref.mean(0), f_ref.std(0)
    pooled = np.concatenate([f_ref, f_pi]).std(0)
    sd = np.where(sd > 0, sd, np.where(pooled > 0, pooled, 1.0))
    return mu, sd


def _sample(path: Path, prompts: list[str], n: int, seed: int, max_new_tokens: int = 20) -> list[str]:
    model, tok = load_causal_lm(path).eval(), load_tokenizer(path)
    gen = torch.Generator().manual_seed(seed)
    return generate_responses(model, tok, [p for p in prompts for _ in range(n)], max_new_tokens=max_new_tokens,
                              generator=gen)  # fmt: skip


def _logps(path: Path, comps: Sequence[Comparison]) -> tuple[np.ndarray, np.ndarray]:
    model, tok = load_causal_lm(path).eval(), load_tokenizer(path)
    c, r = compute_logps(model, tokenize_comparisons(tok, comps), int(tok.pad_token_id))
    return c.numpy(), r.numpy()


# ------------------------------------------------------------------------------ recipe
def run_irl_study(study: IRLStudyConfig, quiet: bool = False) -> Path:
    rows: list[dict[str, Any]] = []
    extra: dict[str, Any] = {"study": study.model_dump(), "weights": {}, "nonidentifiability": {}}
    for seed in study.seeds:
        cfg = study.pipeline_config(seed)
        set_threads(cfg.threads)
        task = cfg.build_task()
        root = Path(cfg.run_dir)
        fill = {"arm": study.arm, "seed": seed}
        pol, ref = root / study.policy.format(**fill), root / study.reference.format(**fill)
        # 1. held-out pairs, and who prefers which side: the proxy, gold, the rater (the chosen side)
        comps = load_comparisons(root / study.pairs.format(**fill))[: study.max_pairs]
        rm = RewardModel.load(root / study.reward.format(**fill))
        prompts = [c.prompt for c in comps]
        pc = rm.score(prompts, [c.chosen for c in comps]).mean.numpy()
        pr = rm.score(prompts, [c.rejected for c in comps]).mean.numpy()
        labels = {"proxy": np.sign(pc - pr), "rater": np.ones(len(comps)),
                  "gold": np.sign([(c.gold_chosen or 0.0) - (c.gold_rejected or 0.0) for c in comps])}  # fmt: skip
        scores: dict[str, tuple[np.ndarray, np.ndarray]] = {"proxy reward model": (pc, pr)}
        # 2. the closed form: beta * log(pi / pi_ref) on both sides of every pair
        lc, lr = _logps(pol, comps)
        rc, rr = _logps(ref, comps)
        scores["closed form beta*log(pi/pi_ref)"] = (study.beta * (lc - rc), study.beta * (lr - rr))
        # 3. feature fits from samples of both policies on training prompts
        train = [task.prompt(i) for i in task.sample_items(study.prompts, seed=4242 + seed)]
        ys_pi = _sample(pol, train, study.samples, seed * 13 + 1)
        ys_ref = _sample(ref, train, study.samples, seed * 13 + 2)
        rep = [p for p in train for _ in range(study.samples)]
        f_pi, names = features(task, rep, ys_pi)
        f_ref, _ = features(task, rep, ys_ref)
        mu, sd = feature_scale(f_ref, f_pi)
        shape = (len(train), study.samples, len(names))
        z_pi, z_ref = ((f_pi - mu) / sd).reshape(shape), ((f_ref - mu) / sd).reshape(shape)
        fits = {"max-ent IRL (features)": maxent_irl(z_pi, z_ref, l2=study.l2),
                "max-margin IRL (features)": max_margin_irl(z_pi, z_ref)}  # fmt: skip
        fc = (features(task, prompts, [c.chosen for c in comps])[0] - mu) / sd
        fr = (features(task, prompts, [c.rejected for c in comps])[0] - mu) / sd
        for name, w in fits.items():
            scores[name] = (fc @ w, fr @ w)
            extra["weights"][f"s{seed}/{name}"] = dict(zip(names, (w / sd).round(4).tolist(), strict=True))
        # 4. accuracies on the held-out pairs
        for name, (a, b) in scores.items():
            rows.append({"seed": seed, "reward": name, "n_pairs": len(comps),
                         **{f"acc_vs_{k}": pair_accuracy(a, b, v) for k, v in labels.items()}})  # fmt: skip
        # 5. non-identifiability: r_cf + c(x) ranks every same-prompt pair the same, its values do not
        a, b = scores["closed form beta*log(pi/pi_ref)"]
        shift = np.random.default_rng(seed).normal(0, 1, len(comps))
        extra["nonidentifiability"][f"s{seed}"] = {
            "acc_vs_gold_shifted": pair_accuracy(a + shift, b + shift, labels["gold"]),
            "acc_vs_gold": pair_accuracy(a, b, labels["gold"]),
            "corr_with_shifted": float(np.corrcoef(np.r_[a, b], np.r_[a + shift, b + shift])[0, 1]),
        }
        write_table(Path(study.out_dir), "irl", rows, COLUMNS, extra)
    _write_weights(Path(study.out_dir), extra["weights"])
    plot_irl(rows, Path(study.out_dir) / "study-irl.png")
    return Path(study.out_dir)


def _write_weights(out: Path, weights: dict[str, dict[str, float]]) -> None:
    rows = [{"fit": k, **v} for k, v in weights.items()]
    cols = ["fit", *sorted({c for r in rows for c in r if c != "fit"})]
    (out / "irl_weights.md").write_text(markdown_table(rows, cols), encoding="utf-8")


def plot_irl(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["reward"] for r in rows))
    keys = ["acc_vs_proxy", "acc_vs_gold", "acc_vs_rater"]
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / len(keys)
    for k, key in enumerate(keys):
        means = [np.nanmean([r[key] for r in rows if r["reward"] == n]) for n in names]
        ax.bar(np.arange(len(names)) + k * width, means, width, label=key.replace("acc_vs_", "agrees with "))
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xticks(np.arange(len(names)) + width, names, fontsize=8)
    ax.set(ylim=(0, 1), ylabel="held-out pair accuracy", title="rewards recovered from the PPO policy")
    ax.legend(fontsize=8)
    return save_figure(fig, path)
