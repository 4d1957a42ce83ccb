"""Domain-knowledge reward model ("Leveraging Domain Knowledge for Efficient Reward Modelling in RLHF: A Case-Study
in E-Commerce Opinion Summarization", Nimkar et al. 2024): the reward is a small model over features that encode
what the domain knows about a good response, so it is fitted from far fewer preference labels than a reward model
that must learn its representation from tokens.

Here the features come from the task (the optional ``domain_features(item, response)`` capability of
:mod:`rewardlab.tasks.base`); the model is linear, ``r(x, y) = w . phi(x, y)`` (standardized features), fitted by
the Bradley-Terry loss with an L2 penalty ``reward.domain_l2 * |w|^2`` (full batch, L-BFGS): the paper's
"few parameters over interpretable features", whose weights a person can read.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from rewardlab.feedback.records import Comparison
from rewardlab.losses import bradley_terry_loss
from rewardlab.rewards.model import RewardScores
from rewardlab.tasks.base import Task, has_capability
from rewardlab.utils import RewardlabError, atomic_dir

META = "domain.json"


def feature_matrix(task: Task, prompts: Sequence[str], completions: Sequence[str]) -> tuple[list[str], torch.Tensor]:  # fmt: skip
    """The task's domain features of each (prompt, completion): names and an [N, F] matrix."""
    if not has_capability(task, "domain_features"):
        raise RewardlabError(f"reward.kind=domain: task {task.info.name} offers no domain_features")
    rows = [task.domain_features(task.item(p), c) for p, c in zip(prompts, completions, strict=True)]  # type: ignore[attr-defined]
    names = sorted(rows[0]) if rows else []
    return names, torch.tensor([[float(r[k]) for k in names] for r in rows], dtype=torch.float64)


def fit_bt_linear(f_chosen: torch.Tensor, f_rejected: torch.Tensor, target: torch.Tensor, l2: float,
                  steps: int = 200) -> torch.Tensor:  # fmt: skip
    """Weights ``w`` [F] minimizing ``BT(w . f_c, w . f_r) + l2 |w|^2`` (full batch, L-BFGS; convex)."""
    w = torch.zeros(f_chosen.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = bradley_terry_loss(f_chosen @ w, f_rejected @ w, target=target) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach()


class DomainRewardModel:
    """The proxy ``w . (phi - mean) / std`` over the task's domain features (normalized to mean 0, std 1 on the
    training completions)."""

    alpha = 0.0

    def __init__(self, task: Task, names: Sequence[str], weights: torch.Tensor, mean: torch.Tensor,
                 std: torch.Tensor, score_mean: float = 0.0, score_std: float = 1.0) -> None:  # fmt: skip
        self.task, self.names = task, list(names)
        self.weights, self.mean, self.std = weights.double(), mean.double(), std.double()
        self.score_mean, self.score_std = score_mean, score_std
        self.members: list[torch.nn.Module] = []  # no network (PPO moves members to its device)

    def raw(self, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        names, f = feature_matrix(self.task, prompts, completions)
        if names != self.names:
            raise RewardlabError(
                f"domain reward model: the task's features {names} are not the fitted {self.names}"
            )
        return ((f - self.mean) / self.std) @ self.weights

    def score(
        self, prompts: Sequence[str], completions: Sequence[str], normalized: bool = True
    ) -> RewardScores:
        r = self.raw(prompts, completions)
        if normalized:
            r = (r - self.score_mean) / self.score_std
        r = r.float()
        return RewardScores(mean=r, std=torch.zeros_like(r), members=r[None])

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        return self.score(prompts, completions).mean.tolist()

    def describe(self) -> dict[str, float]:
        """The weight of each standardized feature (what the model learned to value)."""
        return {n: round(float(w), 4) for n, w in zip(self.names, self.weights, strict=True)}

    @classmethod
    def fit(cls, task: Task, pairs: Sequence[Comparison], l2: float) -> DomainRewardModel:
        """Fit on ``pairs`` (ties as soft labels 0.5)."""
        if not pairs:
            raise RewardlabError("reward.kind=domain: no comparisons to fit")
        prompts = [str(c.prompt) for c in pairs]
        names, fc = feature_matrix(task, prompts, [str(c.chosen) for c in pairs])
        _, fr = feature_matrix(task, prompts, [str(c.rejected) for c in pairs])
        both = torch.cat([fc, fr])
        mean, std = both.mean(0), both.std(0).clamp(min=1e-6)
        target = torch.tensor([0.5 if c.meta.get("tie") else 1.0 for c in pairs], dtype=torch.float64)
        w = fit_bt_linear((fc - mean) / std, (fr - mean) / std, target, l2)
        s = ((both - mean) / std) @ w
        return cls(task, names, w, mean, std, float(s.mean()), float(s.std().clamp(min=1e-6)))

    def save(self, path: Path | str) -> Path:
        meta = {"kind": "domain", "task": self.task.info.name, "names": self.names,
                "weights": self.weights.tolist(), "mean": self.mean.tolist(), "std": self.std.tolist(),
                "score_mean": self.score_mean, "score_std": self.score_std}  # fmt: skip

        def write(tmp: Path) -> None:
            tmp.mkdir(parents=True, exist_ok=True)
            (tmp / META).write_text(json.dumps(meta, indent=2))

        return atomic_dir(path, write)

    @classmethod
    def load(cls, path: Path | str, task: Task) -> DomainRewardModel:
        p = Path(path) / META
        try:
            m = json.loads(p.read_text())
            t = torch.tensor
            return cls(task, m["names"], t(m["weights"]), t(m["mean"]), t(m["std"]), float(m["score_mean"]),
                       float(m["score_std"]))  # fmt: skip
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise RewardlabError(f"{p}: not a domain reward model ({e})") from None
