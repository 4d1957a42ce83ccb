"""Recipe: PPO (or RLOO/GRPO) of the SFT policy against the proxy, audited against the hidden gold."""

from __future__ import annotations

import random
from pathlib import Path

import torch
from accelerate import Accelerator

from rewardlab.audit.tracker import AuditLog
from rewardlab.config import PipelineConfig
from rewardlab.losses import AdaptiveKLController, FixedKLController
from rewardlab.optimize.lm import make_optimizer, save_model
from rewardlab.optimize.ppo import SharedValueHead, ValueModel, make_rollout, ppo_update, rollout_metrics
from rewardlab.pipelines.common import eval_problems, setup_stage, stage_input
from rewardlab.policies.models import load_causal_lm, load_tokenizer
from rewardlab.rewards.model import RewardModel
from rewardlab.runs import Run, advance

RL_PROMPT_SEED = 555_555


def run_ppo(cfg: PipelineConfig, quiet: bool = False, stage: str | None = None) -> Path:
    """Train with ``cfg.ppo``; the stage folder is named after the advantage estimator unless given."""
    task = setup_stage(cfg, 5)
    pc = cfg.ppo
    stage = stage or ("ppo" if pc.advantage == "gae" else pc.advantage)
    policy_path = stage_input(cfg, pc.policy_path, "sft", "model", "policy")
    reward_path = stage_input(cfg, pc.reward_path, "reward", "model", "reward model")
    run = Run(cfg.stage_dir(stage), stage, cfg, cfg.report_to, quiet)
    run.write_json("../arm.json", {"preset": cfg.label.rater.preset, "seed": cfg.seed})
    acc = Accelerator()
    tok = load_tokenizer(policy_path)
    policy = load_causal_lm(policy_path)
    ref = load_causal_lm(policy_path).eval().requires_grad_(False).to(acc.device)
    rm = RewardModel.load(reward_path)
    for m in rm.members:
        m.requires_grad_(False).to(acc.device)

    critic: torch.nn.Module | None = None
    if pc.advantage == "gae":
        if pc.value_model == "shared":
            critic = SharedValueHead(policy.config.hidden_size)
        else:
            critic = ValueModel.from_pretrained(
                reward_path / "members" / "0" if pc.value_init == "reward" else policy_path
            )
    opt, _ = make_optimizer(torch.nn.ModuleList([policy, *([critic] if critic else [])]), pc.optim, pc.steps)
    if critic is not None:
        policy, critic, opt = acc.prepare(policy, critic, opt)
    else:
        policy, opt = acc.prepare(policy, opt)
    kl_ctl = (AdaptiveKLController(pc.kl_coef, pc.kl_target, pc.kl_horizon) if pc.kl_controller == "adaptive"
              else FixedKLController(pc.kl_coef))  # fmt: skip
    gen = torch.Generator().manual_seed(cfg.seed * 1_000 + 5)
    rng = random.Random(RL_PROMPT_SEED + cfg.seed)
    held_out = eval_problems(task, pc.eval_prompts)
    audit = AuditLog(run, ref, tok, rm, task, held_out, max_new_tokens=pc.max_new_tokens, seed=cfg.seed,
                     kl_estimator=pc.kl_estimator, temperature=pc.temperature, samples_to_save=pc.samples_to_save)  # fmt: skip
    audit(acc.unwrap_model(policy), 0, kl_coef=kl_ctl.value)
    policy.train()
    with run.progress(pc.steps, f"{stage} steps") as prog:
        for step in range(1, pc.steps + 1):
            problems = [task.sample_problem(rng) for _ in range(pc.prompts_per_step)]
            prompts = [p.text for p in problems for _ in range(pc.samples_per_prompt)]
            ro = make_rollout(policy, ref, critic, rm, tok, prompts, pc, kl_ctl.value, gen)
            metrics = rollout_metrics(ro, pc, kl_ctl.value)
            metrics.update(
                ppo_update(policy, critic, opt, ro, pc, gen, step, acc.backward, acc.clip_grad_norm_)
            )
            kl_ctl.update(metrics["objective/kl"], len(prompts))
            metrics["eps"] = step * len(prompts) / max(run.elapsed, 1e-9)
            metrics["time/elapsed"] = run.elapsed
            run.log_metrics(metrics, step)
            if step % pc.eval_every == 0 or step == pc.steps:
                audit(acc.unwrap_model(policy), step, kl_coef=kl_ctl.value)
            advance(prog, f"score {metrics['objective/scores']:+.2f} kl {metrics['objective/kl']:.2f}")
    out = save_model(acc.unwrap_model(policy), tok, run.dir / "model")
    run.write_json("summary.json", {"start": audit.rows[0], "end": audit.rows[-1], "seconds": run.elapsed})
    run.info(f"saved {out} in {run.elapsed:.0f}s")
    run.close()
    return out
