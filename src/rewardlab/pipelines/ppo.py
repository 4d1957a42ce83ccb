"""Recipe: PPO (or RLOO/GRPO) of the SFT policy against the proxy, audited against the hidden gold."""

from __future__ import annotations

import random
from pathlib import Path

import torch
from accelerate import Accelerator

from rewardlab.audit.tracker import AuditLog, AuditSpec, scheduled_evals
from rewardlab.checkpoint import Checkpointer
from rewardlab.config import PipelineConfig, PPOConfig
from rewardlab.distributed import make_accelerator, stage_run
from rewardlab.losses import AdaptiveKLController, FixedKLController
from rewardlab.optimize.ppo import (
    Actors,
    Rollout,
    RolloutSamples,
    SharedValueHead,
    ValueModel,
    concat_samples,
    make_rollout,
    ppo_update,
    rollout_from_samples,
    rollout_metrics,
    sample_and_score,
    scheduled_kl_coef,
)
from rewardlab.pipelines.common import eval_problems, load_stage_policy, setup_stage, stage_input
from rewardlab.policies.models import load_tokenizer
from rewardlab.policies.sampling import SampleBatch
from rewardlab.rewards.segment import load_proxy
from rewardlab.runs import advance
from rewardlab.training import make_optimizer
from rewardlab.utils import RewardlabError

RL_PROMPT_SEED = 555_555


def run_ppo(cfg: PipelineConfig, quiet: bool = False, stage: str | None = None) -> Path:
    """Train with ``cfg.ppo``; the stage folder is named after the advantage estimator unless given.

    With several processes, the rollout of each step is sampled in ``ppo.rollout_shards`` shards
    (default: one per process), each with its own generator, spread over the processes and gathered,
    so that every process computes the same rewards, whitening and advantages on the whole batch;
    the update is then sharded by minibatch rows (see :func:`ppo_update`). A run's samples depend on
    the number of shards, not on the number of processes.
    """
    # 1. the task, the inputs and the processes
    task = setup_stage(cfg, 5)
    pc = cfg.ppo
    stage = stage or ("ppo" if pc.advantage == "gae" else pc.advantage)
    policy_path = stage_input(cfg, pc.policy_path, "sft", "model", "policy")
    reward_path = stage_input(cfg, pc.reward_path, "reward", "model", "reward model")
    acc = make_accelerator()
    world, rank = acc.num_processes, acc.process_index
    shards = pc.rollout_shards or world
    if shards % world or pc.prompts_per_step % shards:
        raise RewardlabError(
            f"ppo.rollout_shards={shards} must be a multiple of the number of processes ({world}) and divide "
            f"ppo.prompts_per_step={pc.prompts_per_step}"
        )
    run = stage_run(acc, cfg.stage_dir(stage), stage, cfg, cfg.report_to, quiet)
    run.write_json("../arm.json", cfg.arm_info())
    # 2. the actors: policy, frozen reference (with LoRA: the policy with its adapter disabled), proxy, critic (GAE)
    tok = load_tokenizer(policy_path)
    start_policy = load_stage_policy(cfg, run, policy_path, pc.lora, acc.device)
    policy = start_policy.model
    ref = start_policy.reference(device=acc.device)
    rm = load_proxy(reward_path, task)  # plain, ensemble, segment-level or domain-knowledge
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
    # 3. optimizer, KL controller, generators, the audit
    opt, _ = make_optimizer(torch.nn.ModuleList([policy, *([critic] if critic else [])]), pc.optim, pc.steps)
    if critic is not None:
        policy, critic, opt = acc.prepare(policy, critic, opt)
    else:
        policy, opt = acc.prepare(policy, opt)
    kl_ctl = (AdaptiveKLController(pc.kl_coef, pc.kl_target, pc.kl_horizon) if pc.kl_controller == "adaptive"
              else FixedKLController(pc.kl_coef))  # fmt: skip
    gen = torch.Generator().manual_seed(cfg.seed * 1_000 + 5)
    # one shard: `gen` samples and shuffles minibatches, as it always has; several: one generator per shard
    my_shards = range(rank * shards // world, (rank + 1) * shards // world)
    shard_gens = {0: gen} if shards == 1 else {s: rollout_generator(cfg.seed, s) for s in my_shards}
    rng = random.Random(RL_PROMPT_SEED + cfg.seed)
    held_out = eval_problems(task, pc.eval_prompts)
    audit = None
    if acc.is_main_process:
        spec = AuditSpec(task, held_out, pc.max_new_tokens, cfg.seed, pc.kl_estimator, pc.temperature,
                         pc.samples_to_save, evals=scheduled_evals(cfg.audit_evals))  # fmt: skip
        audit = AuditLog(run, ref, tok, rm, spec)
    # 4. resume, or audit the starting policy
    ckpt = Checkpointer(run, every=pc.checkpoint_every, total_steps=pc.steps, resume=cfg.resume, accelerator=acc,
                        files=("metrics.jsonl", "audit.jsonl", "audit.json"))  # fmt: skip
    ckpt.track(policy=policy, critic=critic, optimizer=opt, generator=gen, prompt_rng=rng)
    if shards > 1:
        ckpt.track_local(**{f"rollout_generator_{s}": g for s, g in shard_gens.items()})
    start = ckpt.restore()
    if start:
        kl_ctl.value = float(ckpt.extra["kl_coef"])
        if audit is not None:
            audit.rows = list(ckpt.extra["audit_rows"])
    elif audit is not None:
        audit(acc.unwrap_model(policy), 0, kl_coef=kl_ctl.value)
    policy.train()
    with run.progress(pc.steps, f"{stage} steps") as prog:
        if start:
            advance(prog, n=start)
        for step in range(start + 1, pc.steps + 1):
            # 5. generate the trajectory: fresh task prompts, k samples each, scored by the proxy
            if pc.kl_schedule != "constant":
                kl_ctl.value = scheduled_kl_coef(pc, step)
            items = [task.sample_item(rng) for _ in range(pc.prompts_per_step)]
            prompts = [task.prompt(i) for i in items for _ in range(pc.samples_per_prompt)]
            if shards == 1:
                ro = make_rollout(Actors(policy, ref, critic, rm, tok), prompts, pc, kl_ctl.value, gen)
            else:
                ro = sharded_rollout(
                    acc, Actors(policy, ref, critic, rm, tok), prompts, pc, kl_ctl.value, shard_gens
                )
            # 6. update policy (and critic) on the rollout, adapt the KL coefficient
            metrics = rollout_metrics(ro, pc, kl_ctl.value)
            metrics.update(ppo_update(policy, critic, opt, ro, pc, gen, step, accelerator=acc))
            kl_ctl.update(metrics["objective/kl"], len(prompts))
            metrics["eps"] = step * len(prompts) / max(run.elapsed, 1e-9)
            metrics["time/elapsed"] = run.elapsed
            run.log_metrics(metrics, step)
            # 7. audit proxy vs gold vs KL when due, checkpoint
            if audit is not None and (step % pc.eval_every == 0 or step == pc.steps):
                audit(acc.unwrap_model(policy), step, kl_coef=kl_ctl.value)
            ckpt.end_step(step, kl_coef=kl_ctl.value, audit_rows=audit.rows if audit is not None else [])
            advance(prog, f"score {metrics['objective/scores']:+.2f} kl {metrics['objective/kl']:.2f}")
    # 8. save the policy and the summary
    if acc.is_main_process and audit is not None:
        start_policy.save(tok, run.dir / "model")  # with LoRA: adapter/ and the merged model/
        run.write_json(
            "summary.json", {"start": audit.rows[0], "end": audit.rows[-1], "seconds": run.elapsed}
        )
        run.info(f"saved {run.final / 'model'} in {run.elapsed:.0f}s")
    acc.wait_for_everyone()
    return run.commit() / "model"


def rollout_generator(seed: int, shard: int) -> torch.Generator:
    """The sampling generator of rollout shard ``shard`` (when there are several)."""
    return torch.Generator().manual_seed(seed * 1_000 + 5 + 7_919 * (shard + 1))


def sharded_rollout(acc: Accelerator, actors: Actors, prompts: list[str], pc: PPOConfig, kl_coef: float,
                    shard_gens: dict[int, torch.Generator]) -> Rollout:  # fmt: skip
    """Sample and score this process's shards of ``prompts``, gather every shard, finish the rollout.

    ``shard_gens`` maps this process's shard indices (of ``pc.rollout_shards`` or the process count) to
    their generators. Each shard is sampled with its own generator, so the result depends on the shard count only: one
    process sampling two shards gives the same rollout as two processes sampling one each.
    Rewards, whitening and advantages are then computed on the whole batch by every process.
    """
    per = len(prompts) // (pc.rollout_shards or acc.num_processes)
    local = actors._replace(policy=acc.unwrap_model(actors.policy),
                            critic=acc.unwrap_model(actors.critic) if actors.critic is not None else None)  # fmt: skip
    mine = [sample_and_score(local, prompts[s * per : (s + 1) * per], pc, g) for s, g in shard_gens.items()]
    if acc.num_processes > 1:
        from accelerate.utils import gather_object

        mine = [_to(s, torch.device("cpu")) for s in mine]
        parts = [_to(s, acc.device) for s in gather_object(mine)]
    else:
        parts = mine
    return rollout_from_samples(concat_samples(parts, int(actors.tokenizer.pad_token_id)), pc, kl_coef)


def _to(s: RolloutSamples, device: torch.device) -> RolloutSamples:
    b = s.batch
    batch = SampleBatch(*(t.to(device) for t in (b.prompt_ids, b.prompt_mask, b.response_ids, b.response_mask,
                                                 b.logprobs, b.finished)))  # fmt: skip
    values = s.values.to(device) if s.values is not None else None
    return RolloutSamples(batch, s.logprobs.to(device), s.ref_logprobs.to(device), values,
                          s.raw_scores.to(device), s.responses)  # fmt: skip
