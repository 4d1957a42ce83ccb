"""Recipe: train the proxy reward model (BT or PL; one member or an ensemble), normalize it, evaluate it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rewardlab.audit.policy_eval import generate_responses
from rewardlab.checkpoint import Checkpointer
from rewardlab.config import PipelineConfig
from rewardlab.distributed import make_accelerator, stage_run
from rewardlab.feedback.records import Comparison, load_comparisons, load_rankings
from rewardlab.pipelines.common import eval_problems, setup_stage, stage_input
from rewardlab.pipelines.reward_variants import train_variant
from rewardlab.policies.models import load_causal_lm, load_tokenizer
from rewardlab.rewards.goal import train_goal_member
from rewardlab.rewards.model import RewardModel, init_reward_backbone
from rewardlab.rewards.report import markdown_table, write_subset_report
from rewardlab.rewards.train import RewardData, evaluate_comparisons, reward_stats, train_reward_member
from rewardlab.tasks.base import Task, has_capability
from rewardlab.utils import RewardlabError


def run_reward(cfg: PipelineConfig, quiet: bool = False) -> Path:
    # 1. the task and the inputs: backbone, comparisons (or rankings), the verifier when the task offers one
    task = setup_stage(cfg, 4)
    rc = cfg.reward
    init = stage_input(cfg, rc.init_path, "sft", "model", "reward-model backbone")
    train_path = stage_input(cfg, rc.data_path, "label", "train.jsonl", "comparisons")
    eval_path = stage_input(cfg, rc.eval_path, "label", "eval.jsonl", "eval comparisons")
    acc = make_accelerator()
    run = stage_run(acc, cfg.stage_dir("reward"), "reward", cfg, cfg.report_to, quiet)
    tok = load_tokenizer(init)
    pairs = load_comparisons(train_path)
    evals = load_comparisons(eval_path)
    rankings = None
    if rc.loss == "plackett_luce":
        rankings = load_rankings(Path(train_path).parent / "rankings_train.jsonl")
    run.info(
        f"{len(pairs)} train / {len(evals)} eval comparisons; loss {rc.loss}, {rc.ensemble_size} member(s)"
    )
    if rc.kind != "scalar":  # segment-level or domain-knowledge (docs/reward-variants.md)
        norm_set = normalization_set(cfg, task, pairs)
        return train_variant(cfg, task, run, Path(init), tok, pairs, evals, norm_set)

    verifier = None
    use_verifier = has_capability(task, "verifier") if rc.verifier is None else rc.verifier
    if use_verifier and not has_capability(task, "verifier"):
        raise RewardlabError(
            f"reward.verifier: task {task.info.name} offers no verifier (its answers are not numbers)"
        )
    if use_verifier:
        vpath = stage_input(cfg, rc.verifier_path, "sft", "model", "verifier")
        verifier = load_causal_lm(vpath).eval().requires_grad_(False)
        run.info(f"verifier feature: frozen {vpath}")
    # 2. train each member of the ensemble (BT or PL; data-parallel under torchrun; resumable)
    members = []
    for m in range(rc.ensemble_size):
        seed = cfg.seed * 100 + m
        model = init_reward_backbone(init, tok, seed=seed, pooling=rc.pooling)

        def evaluate(mod: torch.nn.Module) -> dict[str, float]:
            return evaluate_comparisons(RewardModel([mod], tok, verifier=verifier), evals)

        ckpt = Checkpointer(run, every=rc.checkpoint_every, resume=cfg.resume, accelerator=acc,
                            path=run.dir / "checkpoint" / f"member{m}")  # fmt: skip
        if rc.goal_weight > 0:  # BT + the goal-conditioned contrastive loss (rewards/goal.py)
            if verifier is not None or rc.loss != "bradley_terry" or acc.num_processes > 1:
                raise RewardlabError("reward.goal_weight > 0 needs verifier off, bradley_terry, 1 process")
            members.append(train_goal_member(model, tok, pairs, rc, run, seed=seed, evaluate=evaluate))
            continue
        members.append(train_reward_member(model, RewardData(tok, pairs, rankings, verifier), rc, run, seed=seed,
                                           member=m, evaluate=evaluate, accelerator=acc, checkpoint=ckpt))  # fmt: skip
    if not acc.is_main_process:  # normalization, evaluation and saving happen once, on the main process
        acc.wait_for_everyone()
        return run.final / "model"

    # 3. normalize, evaluate against rater and gold labels, save
    # Normalize (mean 0, std 1 per member) on samples of the SFT policy, or on the training completions.
    prompts, responses = normalization_set(cfg, task, pairs)
    rm = RewardModel(members, tok, alpha=rc.ensemble_alpha, verifier=verifier)
    raw = rm.score(prompts, responses, normalized=False).members
    for i, member in enumerate(members):
        member.config.reward_mean, member.config.reward_std = reward_stats(raw[i])
    final = evaluate_comparisons(rm, evals)
    if rc.ensemble_size > 1:
        final["eval/ensemble_std_mean"] = float(rm.score(prompts, responses).std.mean())
    run.log_metrics(final, -1)
    out = rm.save(run.dir / "model")
    extra = {}  # with subsets in the records' meta (HH-RLHF): accuracy, ECE, reward spread per subset, a figure
    if any("subset" in c.meta for c in evals):
        extra["eval_by_subset"] = write_subset_report(rm, evals, run.dir, "eval")
        run.info("held-out pairs by subset (raw rewards):\n" + markdown_table(extra["eval_by_subset"]))
    run.write_json("summary.json", {**final, **extra, "pooling": rm.pooling,
                                    "normalization": [(m.config.reward_mean, m.config.reward_std) for m in members],
                                    "seconds": run.elapsed})  # the last file: the stage is complete  # fmt: skip
    hard = max(
        (int(k.rsplit("_d", 1)[1]) for k in final if k.startswith("eval/accuracy_gold_d")), default=None
    )
    msg = f"{rm.backbone} backbone; accuracy vs labels {final.get('eval/accuracy_rater', float('nan')):.3f}"
    if "eval/accuracy_gold" in final and task.info.has_gold:
        msg += f", vs gold {final['eval/accuracy_gold']:.3f}"
    if hard is not None and task.info.has_gold:
        msg += (f"; hardest (d{hard}) rater {final.get(f'eval/accuracy_rater_d{hard}', float('nan')):.3f} "
                f"gold {final.get(f'eval/accuracy_gold_d{hard}', float('nan')):.3f}")  # fmt: skip
    run.info(f"{msg}; ECE {final['eval/ece']:.3f}; saved {run.final / 'model'} in {run.elapsed:.0f}s")
    out = run.commit() / "model"
    acc.wait_for_everyone()
    return out


def normalization_set(
    cfg: PipelineConfig, task: Task, pairs: list[Comparison]
) -> tuple[list[Any], list[Any]]:
    """(prompts, completions) the reward is normalized on: ``reward.normalize_prompts`` samples of the SFT
    policy on held-out task prompts (``normalize_on: policy``), or both sides of up to that many training
    comparisons (``data``)."""
    rc = cfg.reward
    if rc.normalize_on == "data":
        head = pairs[: rc.normalize_prompts]
        return [c.prompt for c in head for _ in (0, 1)], [x for c in head for x in (c.chosen, c.rejected)]
    policy_path = stage_input(cfg, rc.normalize_policy_path, "sft", "model", "SFT model (for normalization)")
    policy = load_causal_lm(policy_path)
    problems = eval_problems(task, rc.normalize_prompts)
    prompts = [task.prompt(p) for p in problems]
    responses = generate_responses(policy, load_tokenizer(policy_path), prompts, max_new_tokens=cfg.label.max_new_tokens,
                                   generator=torch.Generator().manual_seed(cfg.seed))  # fmt: skip
    return prompts, responses
