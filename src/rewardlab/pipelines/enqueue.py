"""Recipe: ``rewardlab label enqueue RUN_DIR``: pairs for people to label, sampled from a run's policy.

Two completions per prompt are sampled from the policy (default ``<run>/sft/model``); with
``--select disagreement`` the pairs kept are those the arm's reward model is least sure about (active
learning, as Christiano et al. 2017 query the pairs with the most ensemble variance):

* an ensemble of k >= 2 members: the std over members of the predicted difference ``r_i(a) - r_i(b)``;
* a single model: the smallest ``|r(a) - r(b)|`` (the pair closest to a coin flip for Bradley-Terry).

With ``--select random`` a seeded random subset is kept. Identical pairs are dropped. Each item keeps the
gold of both sides when the task has gold, so the annotators' error rate against gold can be measured.
"""

from __future__ import annotations

import argparse
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rewardlab.audit.policy_eval import generate_responses
from rewardlab.config import PipelineConfig, load_config
from rewardlab.feedback.human.commands import overlap_wanted
from rewardlab.feedback.human.db import LabelDB
from rewardlab.policies.models import load_causal_lm, load_tokenizer
from rewardlab.rewards.model import RewardModel
from rewardlab.utils import RewardlabError

ENQUEUE_PROMPT_SEED = 55_555


def run_config(run_dir: Path, arm: str | None) -> tuple[PipelineConfig, Path | None]:
    """The run's resolved config (from the arm's reward stage, else the SFT stage) and the arm's reward model."""
    arms = [arm] if arm else sorted(p.parent.parent.name for p in run_dir.glob("*/reward/model"))
    for name in arms:
        if (run_dir / name / "reward" / "config.yaml").is_file():
            return load_config(run_dir / name / "reward" / "config.yaml"), run_dir / name / "reward" / "model"
    if arm:
        raise RewardlabError(f"--arm {arm}: {run_dir / arm / 'reward'} has no finished reward stage")
    if (run_dir / "sft" / "config.yaml").is_file():
        return load_config(run_dir / "sft" / "config.yaml"), None
    raise RewardlabError(f"{run_dir}: not a run folder (no <arm>/reward or sft stage)")


def disagreement(members: torch.Tensor, n_pairs: int) -> tuple[torch.Tensor, str]:
    """Per pair, how unsure the reward model is; ``members`` is [k, 2 * n_pairs] with pair i at 2i, 2i + 1."""
    diff = members[:, 0 : 2 * n_pairs : 2] - members[:, 1 : 2 * n_pairs : 2]
    if members.shape[0] > 1:
        return diff.std(dim=0, unbiased=True), "ensemble_std"
    return -diff[0].abs(), "neg_abs_margin"


@dataclass(frozen=True)
class Selection:
    """Which pairs go into the queue: ``n`` of ``candidates`` sampled pairs (default ``3 n``), chosen by
    ``select`` (``disagreement`` or ``random``), a share ``overlap`` labelled twice, drawn with ``seed``."""

    n: int = 100
    select: str = "disagreement"
    candidates: int | None = None
    overlap: float = 0.0
    seed: int = 0


def enqueue_from_run(run_dir: Path, db: Path, queue: str, selection: Selection = Selection(), *,
                     arm: str | None = None, policy: Path | None = None, quiet: bool = False) -> dict[str, Any]:  # fmt: skip
    """Sample, select and enqueue ``selection.n`` pairs; returns a summary."""
    n, select, candidates, overlap, seed = (selection.n, selection.select, selection.candidates,
                                            selection.overlap, selection.seed)  # fmt: skip
    # 1. the run's task, policy and (for disagreement) reward model
    cfg, reward_path = run_config(run_dir, arm)
    task = cfg.build_task()
    policy = policy or run_dir / "sft" / "model"
    if not policy.is_dir():
        raise RewardlabError(f"--policy: {policy} not found (run `rewardlab sft` first or pass --policy)")
    if select == "disagreement" and reward_path is None:
        raise RewardlabError(
            f"--select disagreement: {run_dir} has no trained reward model; use --select random"
        )
    m = candidates or 4 * n
    if m < n:
        raise RewardlabError(f"--candidates {m}: fewer than --n {n}")
    # 2. two completions per prompt from the policy
    items = task.sample_items(m, seed=ENQUEUE_PROMPT_SEED + seed)
    prompts = [task.prompt(it) for it in items]
    tok, model = load_tokenizer(policy), load_causal_lm(policy).eval()
    if not quiet:
        print(f"sampling {2 * m} completions from {policy}", file=sys.stderr)
    gen = torch.Generator().manual_seed(seed * 13 + 5)
    outs = generate_responses(model, tok, [p for p in prompts for _ in range(2)], max_new_tokens=cfg.label.max_new_tokens,
                              temperature=cfg.label.temperature, batch_size=cfg.label.batch_size, generator=gen)  # fmt: skip
    pairs = [(outs[2 * i], outs[2 * i + 1]) for i in range(m)]
    keep = [i for i, (a, b) in enumerate(pairs) if a != b]
    # 3. choose: the reward model's least sure pairs, or random ones
    scores: dict[int, float] = {}
    how = "random"
    if select == "disagreement":
        assert reward_path is not None
        rm = RewardModel.load(reward_path)
        flat_p = [prompts[i] for i in keep for _ in range(2)]
        flat_c = [c for i in keep for c in pairs[i]]
        d, how = disagreement(rm.score(flat_p, flat_c).members, len(keep))
        scores = {i: float(v) for i, v in zip(keep, d.tolist(), strict=True)}
        chosen = sorted(keep, key=lambda i: (-scores[i], i))[:n]
    else:
        chosen = sorted(random.Random(seed).sample(keep, min(n, len(keep))))
    # 4. the items, with gold per side where the task has it, into the queue
    rows = []
    for i, wanted in zip(chosen, overlap_wanted(len(chosen), overlap, seed), strict=True):
        a, b = pairs[i]
        meta = {**task.meta(items[i]), "policy": policy.name if policy.name != "model" else policy.parent.name,
                "selection": how}  # fmt: skip
        if i in scores:
            meta["disagreement"] = scores[i]
        gold = task.info.has_gold
        rows.append({"prompt": prompts[i], "a": a, "b": b, "meta": meta, "wanted": wanted,
                     "gold_a": task.gold(items[i], a) if gold else None,
                     "gold_b": task.gold(items[i], b) if gold else None})  # fmt: skip
    added = LabelDB(db).add_items(queue, rows)
    return {"added": added, "candidates": m, "identical_dropped": m - len(keep), "selection": how,
            "queue": queue, "db": str(db)}  # fmt: skip


def enqueue_command(args: argparse.Namespace) -> int:
    """``rewardlab label enqueue RUN_DIR``."""
    selection = Selection(args.n, args.select, args.candidates, args.overlap, args.seed)
    s = enqueue_from_run(
        args.source, args.db, args.queue, selection, arm=args.arm, policy=args.policy, quiet=args.quiet
    )
    print(f"{s['added']} pairs ({s['selection']}, of {s['candidates']} sampled, {s['identical_dropped']} identical "
          f"dropped) added to queue {s['queue']} of {s['db']}", file=sys.stderr)  # fmt: skip
    return 0
