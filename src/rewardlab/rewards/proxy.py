"""The proxy interface: anything that scores (prompt, completion) pairs can be optimized and audited.

A learned reward model (:class:`rewardlab.rewards.model.RewardModel`) is one; so is a rule, a judge or
a DPO policy's implicit reward wrapped in a function. Optimizers and the audit accept any
:class:`Proxy`; those that need the ensemble's spread (``ppo.score: conservative``) ask for
:class:`ScoredProxy`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Proxy(Protocol):
    """``proxy(prompts, completions) -> one score per pair`` (higher is better)."""

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]: ...


class ProxyScores(Protocol):
    mean: torch.Tensor
    std: torch.Tensor
    members: torch.Tensor  # [k, N] each member's score (``ppo.score: worst`` takes their minimum)

    def conservative(self, alpha: float) -> torch.Tensor: ...


@runtime_checkable
class ScoredProxy(Proxy, Protocol):
    """A proxy that also reports a spread per pair (an ensemble's std)."""

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> ProxyScores: ...
