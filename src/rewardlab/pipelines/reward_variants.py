"""Recipe steps for the reward models that are not a scalar head (``reward.kind: segment | domain``): train,
normalize, evaluate against rater and gold labels, save. ``run_reward`` hands over to :func:`train_variant` after
it has loaded the task, the backbone and the comparisons (docs/reward-variants.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from rewardlab.config import PipelineConfig
from rewardlab.feedback.records import Comparison
from rewardlab.policies.models import load_causal_lm
from rewardlab.rewards.domain import DomainRewardModel
from rewardlab.rewards.model import init_reward_backbone
from rewardlab.rewards.segment import SegmentRewardModel, train_segment_member
from rewardlab.rewards.train import comparison_accuracies
from rewardlab.runs import Run
from rewardlab.tasks.base import Task

Variant = SegmentRewardModel | DomainRewardModel


def evaluate_variant(rm: Variant, comps: list[Comparison]) -> dict[str, float]:
    """Accuracy of ``rm``'s sequence scores vs rater and gold labels, overall and by difficulty."""
    prompts = [str(c.prompt) for c in comps]
    s_c = rm.score(prompts, [str(c.chosen) for c in comps]).mean
    s_r = rm.score(prompts, [str(c.rejected) for c in comps]).mean
    return comparison_accuracies(s_c, s_r, comps)


def train_variant(cfg: PipelineConfig, task: Task, run: Run, init: Path, tok: PreTrainedTokenizerBase,
                  pairs: list[Comparison], evals: list[Comparison],
                  normalization: tuple[list[Any], list[Any]]) -> Path:  # fmt: skip
    """1. train (segment: backbone + head through the segments' mean; domain: linear on the task's features),
    2. normalize (segment: location-aware on ``normalization``'s completions), 3. evaluate, save, commit."""
    rc = cfg.reward
    rm: Variant
    if rc.kind == "segment":
        model = init_reward_backbone(init, tok, seed=cfg.seed * 100)
        segmenter = load_causal_lm(init)
        rm = train_segment_member(model, segmenter, tok, pairs, rc, run, seed=cfg.seed * 100,
                                  evaluate=lambda m: evaluate_variant(m, evals))  # fmt: skip
        norm = rm.fit_normalizer(*normalization)
        run.info(
            f"location-aware normalizer: mean {norm.a:+.3f}{norm.b:+.3f}p, std {norm.c:.3f}{norm.d:+.3f}p"
        )
    else:
        rm = DomainRewardModel.fit(task, pairs, rc.domain_l2)
        run.info(f"domain-knowledge weights (standardized features): {rm.describe()}")
    final = evaluate_variant(rm, evals)
    run.log_metrics(final, -1)
    rm.save(run.dir / "model")
    extra = {"weights": rm.describe()} if isinstance(rm, DomainRewardModel) else {}
    run.write_json("summary.json", {**final, **extra, "kind": rc.kind, "seconds": run.elapsed})
    run.info(f"{rc.kind} reward model: accuracy vs labels {final.get('eval/accuracy_rater', float('nan')):.3f}, "
             f"vs gold {final.get('eval/accuracy_gold', float('nan')):.3f}; saved in {run.elapsed:.0f}s")  # fmt: skip
    return run.commit() / "model"
