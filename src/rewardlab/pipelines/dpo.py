"""Recipes: DPO and its variants on the arm's rater labels, iterated (online) DPO, and MODPO.

Every recipe trains the SFT policy against a frozen reference, audits it like PPO (proxy = the arm's
separately trained reward model, gold, KL, sycophancy; :class:`~rewardlab.audit.tracker.AuditLog`)
at step 0 and every ``dpo.eval_every`` steps, and evaluates the implicit reward β·log(π/π_ref) as a
reward model on the held-out rater labels (``implicit/accuracy_rater``, ``implicit/accuracy_gold``).

* :func:`run_dpo` - one run into ``<run_dir>/<arm>/<dpo.name>`` (default ``dpo``).
* :func:`run_dpo_sweep` - one run per ``dpo.beta_sweep`` value into ``<name>-b<beta>``.
* :func:`run_iterative_dpo` - rounds of sample pairs -> rater labels -> DPO (``<arm>/dpo-iter``).
* :func:`run_modpo` - MODPO for each weighting into ``<arm>/modpo/w<w>``; ``pareto.json``/``pareto.png``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import broadcast_object_list

from rewardlab.audit.policy_eval import generate_responses
from rewardlab.audit.tracker import AuditLog, AuditSpec, scheduled_evals
from rewardlab.checkpoint import Checkpointer
from rewardlab.config import PipelineConfig
from rewardlab.distributed import make_accelerator, process_state, stage_run
from rewardlab.feedback.base import Rater
from rewardlab.feedback.factory import require_rater
from rewardlab.feedback.records import Comparison, load_comparisons, save_comparisons
from rewardlab.feedback.simulated import rater_error_rate
from rewardlab.optimize.dpo import (
    PairStream,
    PreferenceData,
    cached_reference_logps,
    implicit_reward_metrics,
    needs_reference,
    pair_order,
    tokenize_comparisons,
    train_dpo,
    write_summary,
)
from rewardlab.pipelines.common import (
    eval_problems,
    label_source,
    load_stage_policy,
    setup_stage,
    stage_input,
)
from rewardlab.policies.models import load_tokenizer
from rewardlab.policies.tokenizer import Limits, completion_text
from rewardlab.rewards.model import RewardModel
from rewardlab.training import Cadence, Trainee, make_optimizer
from rewardlab.utils import RewardlabError, atomic_write_text

#: Seed of the fresh prompts of iterated DPO (distinct from the label stage's and the audit's).
ONLINE_PROMPT_SEED = 888_888


def _write_arm(cfg: PipelineConfig) -> None:
    atomic_write_text(Path(cfg.run_dir) / cfg.arm / "arm.json", json.dumps(cfg.arm_info(), indent=2) + "\n")


def _pairs(comps: Sequence[Comparison], drop_ties: bool) -> list[Comparison]:
    return [c for c in comps if not (drop_ties and c.tie)]


def second_reward(cfg: PipelineConfig, comps: Sequence[Comparison]) -> tuple[torch.Tensor, torch.Tensor]:
    """MODPO's second, fixed reward r₂ of each pair's chosen and rejected completion."""
    mc = cfg.modpo
    if mc.second_reward == "brevity":
        words = [[len(completion_text(x).split()) for x in (c.chosen, c.rejected)] for c in comps]
        w = torch.tensor(words, dtype=torch.float32)
        return -mc.brevity_scale * w[:, 0], -mc.brevity_scale * w[:, 1]
    rm = RewardModel.load(stage_input(cfg, mc.second_reward_path, "reward", "model", "second reward model"))
    prompts = [c.prompt for c in comps]
    return rm.score(prompts, [c.chosen for c in comps]).mean, rm.score(
        prompts, [c.rejected for c in comps]
    ).mean


def run_dpo(cfg: PipelineConfig, quiet: bool = False, stage: str | None = None, *,
            out_dir: Path | None = None, modpo_weight: float | None = None) -> Path:  # fmt: skip
    """Train one DPO-family policy on the arm's rater labels; audited every ``dpo.eval_every`` steps.

    ``modpo_weight`` turns it into MODPO with ``cfg.modpo``'s second reward (see :func:`run_modpo`).
    Runs data-parallel under ``torchrun`` (the main process audits and writes) and resumes from
    ``<stage>/checkpoint`` with ``--resume``.
    """
    # 1. the task and the inputs: policy, reference, labels, proxy (for the audit only)
    task = setup_stage(cfg, 6)
    dc = cfg.dpo
    stage = stage or dc.name
    policy_path = stage_input(cfg, dc.policy_path, "sft", "model", "policy")
    ref_path = Path(dc.reference_path) if dc.reference_path else policy_path
    reward_path = stage_input(cfg, dc.reward_path, "reward", "model", "reward model")
    train_path = stage_input(cfg, dc.data_path, "label", "train.jsonl", "comparisons")
    eval_path = stage_input(cfg, dc.eval_path, "label", "eval.jsonl", "eval comparisons")
    cache_dir = Path(dc.cache_dir) if dc.cache_dir else Path(cfg.run_dir) / cfg.arm / "cache"
    acc = make_accelerator()
    main = acc.is_main_process
    run = stage_run(acc, out_dir or cfg.stage_dir(stage), stage, cfg, cfg.report_to, quiet)
    if main:
        _write_arm(cfg)
    tok = load_tokenizer(policy_path)
    pad = int(tok.pad_token_id)  # type: ignore[arg-type]
    start_policy = load_stage_policy(cfg, run, policy_path, dc.lora, acc.device)
    policy = start_policy.model
    ref = start_policy.reference(ref_path, acc.device)  # LoRA, no other reference: adapter disabled

    # 2. the pairs, tokenized once, with cached reference log-probs (and MODPO's second reward)
    all_train = load_comparisons(train_path)
    train_comps = _pairs(all_train, dc.drop_ties)
    eval_comps = load_comparisons(eval_path)[: dc.eval_pairs]
    limits = Limits.for_stage(tok, dc, "dpo")
    train = PreferenceData(tokenize_comparisons(tok, train_comps, limits))
    held = PreferenceData(tokenize_comparisons(tok, eval_comps, limits))
    if limits.describe():
        run.info(limits.describe())  # type: ignore[arg-type]
        run.record("data/truncated", limits.cut)
    cache: dict[str, Any] = {}
    if needs_reference(dc, modpo_weight):
        for name, data in (("train", train), ("eval", held)):
            if name == "train" and dc.reference == "live":
                continue
            data.ref_chosen, data.ref_rejected, key, hit = cached_reference_logps(
                ref, data.examples, pad, cache_dir, packing=dc.packing, device=acc.device, write=main
            )
            cache[name] = {"key": key, "hit": hit}
            run.info(
                f"reference log-probs ({name}, {len(data)} pairs): {'cache hit' if hit else 'computed'} {key}"
            )
    if modpo_weight is not None:
        train.second_chosen, train.second_rejected = second_reward(cfg, train_comps)
        held.second_chosen, held.second_rejected = second_reward(cfg, eval_comps)
    what = f"MODPO w={modpo_weight:g}" if modpo_weight is not None else f"{dc.loss} beta={dc.beta:g}"
    run.info(f"{what}: {len(train)} train pairs ({len(all_train) - len(train_comps)} ties dropped), "
             f"{len(held)} held-out pairs; {dc.steps} steps of {dc.batch_size}")  # fmt: skip

    # 3. optimizer, batch order, the audit and the implicit-reward evaluation
    opt, sched = make_optimizer(policy, dc.optim, dc.steps)
    policy, opt = acc.prepare(policy, opt)
    order = pair_order(train, dc.batch_size, cfg.seed * 1000 + 6)
    audit = None
    if main:
        rm = RewardModel.load(reward_path)
        for m in rm.members:
            m.requires_grad_(False).to(acc.device)
        spec = AuditSpec(task, eval_problems(task, dc.eval_prompts), dc.max_new_tokens, cfg.seed,
                         temperature=dc.temperature, samples_to_save=dc.samples_to_save,
                         evals=scheduled_evals(cfg.audit_evals))  # fmt: skip
        audit = AuditLog(run, ref, tok, rm, spec)
    # On the audit's samples the mean implicit reward is beta * KL_k1 exactly (same reference, T = 1).
    implicit_on_samples = dc.loss != "simpo" and modpo_weight is None and dc.temperature == 1.0

    def evaluate(step: int) -> None:
        if audit is None:  # not the main process: go on to the next all-reduce and wait there
            return
        model = acc.unwrap_model(policy)
        imp = implicit_reward_metrics(
            model, held, eval_comps, dc, pad, modpo_weight=modpo_weight, device=acc.device
        )
        row = audit(
            model, step, beta=dc.beta, **({"modpo/weight": modpo_weight} if modpo_weight else {}), **imp
        )
        extra = {"implicit/audit_mean": dc.beta * row["kl/k1"]} if implicit_on_samples else {}
        run.log_metrics({**imp, **extra}, step)

    # 4. resume, or audit the starting policy; then train (train_dpo: share, log-probs, loss, update, metrics)
    ckpt = Checkpointer(run, every=dc.checkpoint_every, total_steps=dc.steps, resume=cfg.resume, accelerator=acc,
                        files=("metrics.jsonl", "audit.jsonl", "audit.json"))  # fmt: skip
    ckpt.track(policy=policy, optimizer=opt, scheduler=sched, data=order)
    start = ckpt.restore()
    if start and audit is not None:
        audit.rows = list(ckpt.extra["audit_rows"])
    elif not start:
        evaluate(0)
    cadence = Cadence(dc.steps, start, dc.eval_every, evaluate, ckpt,
                      checkpoint_extra=lambda: {"audit_rows": audit.rows if audit is not None else []})  # fmt: skip
    stats = train_dpo(Trainee(policy, opt, sched, acc), PairStream(train, order, pad), dc, run, cadence,
                      reference=ref, modpo_weight=modpo_weight, stats=ckpt.extra if start else None)  # fmt: skip
    # 5. save the policy and the summary
    out = run.dir / "model"  # in <stage>.partial until the stage is complete
    if audit is not None:
        out = start_policy.save(tok, out)  # with LoRA: adapter/ and the merged model/
        write_summary(run, method=what, start=audit.rows[0], end=audit.rows[-1], train=stats, reference_cache=cache,
                      pairs_train=len(train), pairs_eval=len(held), ties_dropped=len(all_train) - len(train_comps),
                      num_processes=acc.num_processes)  # fmt: skip
        end = audit.rows[-1]
        gold = end.get("implicit/accuracy_gold") if task.info.has_gold else None
        run.info(f"{stats['pairs_per_second']:.0f} pairs/s; implicit reward accuracy vs labels "
                 f"{end.get('implicit/accuracy_rater', float('nan')):.3f}"
                 + (f", vs gold {gold:.3f}" if gold is not None else "") + f"; saved {run.final / 'model'} in {run.elapsed:.0f}s")  # fmt: skip
    acc.wait_for_everyone()
    return run.commit() / "model"


def run_dpo_sweep(cfg: PipelineConfig, quiet: bool = False) -> list[Path]:
    """``rewardlab dpo``: one run per ``dpo.beta_sweep`` value (folders ``<name>-b<beta>``), else one run."""
    if not cfg.dpo.beta_sweep:
        return [run_dpo(cfg, quiet)]
    outs = []
    for beta in cfg.dpo.beta_sweep:
        c = cfg.model_copy(deep=True)
        c.dpo.beta = beta
        outs.append(run_dpo(c, quiet, stage=f"{cfg.dpo.name}-b{beta:g}"))
    return outs


def _label_round(model: torch.nn.Module, tok: Any, task: Any, rater: Rater, ic: Any, seed: int,
                 gen: torch.Generator) -> tuple[list[Comparison], float]:  # fmt: skip
    """Two samples per fresh prompt from ``model``, identical pairs dropped, the rest labelled by ``rater``.

    Returns the labelled pairs and the share of prompts whose two samples were identical.
    """
    problems = task.sample_items(ic.prompts_per_round, seed=seed)
    responses = generate_responses(model, tok, [task.prompt(p) for p in problems for _ in range(2)],
                                   max_new_tokens=ic.max_new_tokens, temperature=ic.temperature, generator=gen)  # fmt: skip
    keep = [i for i in range(len(problems)) if responses[2 * i] != responses[2 * i + 1]]
    labelled = rater.label_pairs(
        [problems[i] for i in keep], [(responses[2 * i], responses[2 * i + 1]) for i in keep]
    )
    return labelled, 1 - len(keep) / len(problems)


def run_iterative_dpo(cfg: PipelineConfig, quiet: bool = False, stage: str | None = None) -> Path:
    """Iterated (online) DPO: per round, sample a pair per fresh prompt from the current policy, have the
    arm's simulated rater label them, and train ``iterative_dpo.steps_per_round`` DPO steps on them.

    Audit rows carry the cumulative ``step`` and the ``round`` (0 = the starting policy). Under
    ``torchrun`` the main process samples and labels each round and sends the pairs to the others;
    with ``--resume`` the run continues from the last finished round (checkpoints are saved at the end
    of each round when ``dpo.checkpoint_every`` > 0).
    """
    task = setup_stage(cfg, 7)
    dc, ic = cfg.dpo, cfg.iterative_dpo
    stage = stage or ic.name
    policy_path = stage_input(cfg, dc.policy_path, "sft", "model", "policy")
    ref_path = Path(dc.reference_path) if dc.reference_path else policy_path
    reward_path = stage_input(cfg, dc.reward_path, "reward", "model", "reward model")
    eval_path = stage_input(cfg, dc.eval_path, "label", "eval.jsonl", "eval comparisons")
    acc = make_accelerator()
    main = acc.is_main_process
    run = stage_run(acc, cfg.stage_dir(stage), stage, cfg, cfg.report_to, quiet)
    if main:
        _write_arm(cfg)
    tok = load_tokenizer(policy_path)
    pad = int(tok.pad_token_id)  # type: ignore[arg-type]
    if dc.lora is not None and ic.reference == "previous":
        raise RewardlabError(
            "iterative_dpo.reference=previous needs a copy of the policy per round: not with dpo.lora"
        )
    start_policy = load_stage_policy(cfg, run, policy_path, dc.lora, acc.device)
    policy = start_policy.model
    ref = start_policy.reference(ref_path, acc.device)
    eval_comps = load_comparisons(eval_path)[: dc.eval_pairs]
    limits = Limits.for_stage(tok, dc, "dpo")
    held = PreferenceData(tokenize_comparisons(tok, eval_comps, limits))
    rater = require_rater(label_source(cfg, task, seed=cfg.seed * 101 + 7), "iterated DPO")
    gen = torch.Generator().manual_seed(cfg.seed * 17 + 7)
    spr = ic.steps_per_round
    opt, sched = make_optimizer(policy, dc.optim, ic.rounds * spr)
    policy, opt = acc.prepare(policy, opt)
    audit = None
    if main:
        rm = RewardModel.load(reward_path)
        for m in rm.members:
            m.requires_grad_(False).to(acc.device)
        spec = AuditSpec(task, eval_problems(task, dc.eval_prompts), dc.max_new_tokens, cfg.seed,
                         temperature=dc.temperature, samples_to_save=dc.samples_to_save,
                         evals=scheduled_evals(cfg.audit_evals))  # fmt: skip
        audit = AuditLog(run, ref, tok, rm, spec)
    run.info(f"{ic.rounds} rounds x ({ic.prompts_per_round} fresh prompts -> rater {rater.name} -> "
             f"{spr} {dc.loss} steps, beta {dc.beta:g}); reference: {ic.reference}")  # fmt: skip

    def audit_round(step: int, rnd: int, round_ref: torch.nn.Module) -> dict[str, Any]:
        if audit is None:
            return {}
        model = acc.unwrap_model(policy)
        if needs_reference(dc):
            held.ref_chosen, held.ref_rejected, _, _ = cached_reference_logps(
                round_ref, held.examples, pad, None, packing=dc.packing, device=acc.device
            )
        imp = implicit_reward_metrics(model, held, eval_comps, dc, pad, device=acc.device)
        return audit(model, step, round=rnd, beta=dc.beta, **imp)

    ckpt = Checkpointer(run, every=spr if dc.checkpoint_every else 0, total_steps=ic.rounds * spr, resume=cfg.resume,
                        accelerator=acc, files=("metrics.jsonl", "audit.jsonl", "audit.json"))  # fmt: skip
    ckpt.track(policy=policy, optimizer=opt, scheduler=sched, generator=gen, rater=rater)
    start = ckpt.restore()
    rounds: list[dict[str, Any]] = list(ckpt.extra.get("rounds", [])) if start else []
    if start and audit is not None:
        audit.rows = list(ckpt.extra["audit_rows"])
    elif not start:
        audit_round(0, 0, ref)
    for rnd in range(start // spr + 1, ic.rounds + 1):
        model = acc.unwrap_model(policy)
        box: list[Any] = [None]
        if main:
            box[0] = _label_round(
                model, tok, task, rater, ic, ONLINE_PROMPT_SEED + 1000 * cfg.seed + rnd, gen
            )
        if acc.num_processes > 1:
            box = broadcast_object_list(box)
        labelled, identical = box[0]
        comps = _pairs(labelled, dc.drop_ties)
        if main:
            save_comparisons(run.dir / "rounds" / f"round_{rnd}.jsonl", labelled)
        err = rater_error_rate(labelled, by=None)
        info = {"round": rnd, "round/pairs": len(comps), "round/identical_rate": identical,
                "round/ties": len(labelled) - len(comps), "round/rater_error_rate": err.get("error_rate")}  # fmt: skip
        if not comps:
            raise RewardlabError(
                f"{stage}: round {rnd}: every sampled pair was identical or a tie; nothing to train on"
            )
        round_ref = ref if ic.reference == "initial" else copy.deepcopy(model).eval().requires_grad_(False)
        data = PreferenceData(tokenize_comparisons(tok, comps, limits))
        if needs_reference(dc) and dc.reference == "precomputed":
            data.ref_chosen, data.ref_rejected, _, _ = cached_reference_logps(
                round_ref, data.examples, pad, None, packing=dc.packing, device=acc.device
            )
        run.log_metrics(info, (rnd - 1) * spr)
        batches = PairStream(data, pair_order(data, dc.batch_size, cfg.seed * 1000 + 7 + rnd), pad)
        cadence = Cadence(spr, step_offset=(rnd - 1) * spr, log_extra={"round": rnd})
        stats = train_dpo(Trainee(policy, opt, sched, acc), batches, dc, run, cadence, reference=round_ref)
        row = audit_round(rnd * spr, rnd, round_ref)
        rounds.append(
            {**info, **stats, "gold/mean": row.get("gold/mean"), "proxy/mean": row.get("proxy/mean")}
        )
        ckpt.end_step(rnd * spr, rounds=rounds, audit_rows=audit.rows if audit is not None else [])
        run.info(f"round {rnd}: {len(comps)} pairs, rater error vs gold {info['round/rater_error_rate']}, "
                 f"implicit accuracy vs rater {row.get('implicit/accuracy_rater', float('nan')):.3f}")  # fmt: skip
    out = run.dir / "model"  # in <stage>.partial until the stage is complete
    if audit is not None:
        out = start_policy.save(tok, out)
        write_summary(run, method=f"iterated {dc.loss} beta={dc.beta:g}", start=audit.rows[0], end=audit.rows[-1],
                      rounds=rounds, pairs_per_second=float(np.mean([r["pairs_per_second"] for r in rounds])),
                      num_processes=acc.num_processes)  # fmt: skip
        run.info(f"saved {run.final / 'model'} in {run.elapsed:.0f}s")
    acc.wait_for_everyone()
    return run.commit() / "model"


# ------------------------------------------------------------------------------------------ MODPO
def pareto_front(cost: Sequence[float], value: Sequence[float]) -> list[int]:
    """Indices of the points no other point dominates (lower ``cost`` and higher ``value`` are better),
    sorted by cost."""
    pts = list(zip(cost, value, strict=True))
    front = [i for i, (c, v) in enumerate(pts)
             if not any((c2 <= c and v2 >= v) and (c2 < c or v2 > v) for c2, v2 in pts)]  # fmt: skip
    return sorted(front, key=lambda i: pts[i][0])


#: (audit key, axis label, higher is better) of the MODPO Pareto panels, all against response length.
PARETO_METRICS = (("gold/mean", "gold reward (mean)"), ("gold/accuracy", "gold accuracy"),
                  ("proxy/mean", "proxy: the arm's reward model (mean)"))  # fmt: skip


def plot_pareto(points: Sequence[dict[str, Any]], start: dict[str, Any] | None, out: Path) -> Path:
    """Gold mean, gold accuracy and the proxy against response length, one point per MODPO weighting,
    each panel's Pareto front (shorter and higher is better) joined."""
    from rewardlab.report.plots import _figure, _save

    fig, axes = _figure(1, len(PARETO_METRICS), (4.6 * len(PARETO_METRICS), 4.2))
    x = [p["behavior/length"] for p in points]
    for ax, (key, label) in zip(axes[0], PARETO_METRICS, strict=True):
        y = [p[key] for p in points]
        front = pareto_front(x, y)
        ax.plot(
            [x[i] for i in front], [y[i] for i in front], "-", color="#8c564b", lw=1.5, label="Pareto front"
        )
        ax.scatter(x, y, color="#8c564b", zorder=3, label="MODPO weighting")
        for p, xi, yi in zip(points, x, y, strict=True):
            ax.annotate(f"w={p['weight']:g}", (xi, yi), textcoords="offset points", xytext=(5, 4), fontsize=8)
        if start is not None:
            ax.scatter([start["behavior/length"]], [start[key]], marker="*", s=120, color="0.3", zorder=3,
                       label="start (SFT)")  # fmt: skip
        ax.set_xlabel("response length (words; lower = briefer)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        "MODPO: w on the rater preference, 1 - w on the second reward; final audit of each weighting"
    )
    return _save(fig, out)


def run_modpo(cfg: PipelineConfig, quiet: bool = False) -> Path:
    """MODPO for each ``modpo.weights`` value (runs in ``<arm>/<modpo.name>/w<w>``), then the Pareto front
    of the final gold-side metrics (gold mean / accuracy vs length; and the proxy's view):
    ``pareto.json`` and ``pareto.png``."""
    mc = cfg.modpo
    parent = cfg.stage_dir(mc.name)
    points: list[dict[str, Any]] = []
    start: dict[str, Any] | None = None
    for w in mc.weights:
        c = cfg.model_copy(deep=True)
        if mc.steps is not None:
            c.dpo.steps = mc.steps
        run_dpo(c, quiet, stage=f"{mc.name}-w{w:g}", out_dir=parent / f"w{w:g}", modpo_weight=w)
        if not process_state().is_main_process:
            continue
        summary = json.loads((parent / f"w{w:g}" / "summary.json").read_text())
        end = summary["end"]
        start = start or summary["start"]
        keys = ("gold/mean", "gold/accuracy", "behavior/length", "behavior/sycophancy_rate", "proxy/mean", "kl/k1",
                "implicit/accuracy_rater", "implicit/accuracy_gold")  # fmt: skip
        points.append({"weight": w, **{k: end.get(k) for k in keys}})
    if not process_state().is_main_process:
        return parent
    lengths = [p["behavior/length"] for p in points]
    fronts = {key: [points[i]["weight"] for i in pareto_front(lengths, [p[key] for p in points])]
              for key, _ in PARETO_METRICS}  # fmt: skip
    result = {"second_reward": mc.second_reward, "points": points, "start": start, "pareto_front": fronts}
    atomic_write_text(parent / "pareto.json", json.dumps(result, indent=2) + "\n")
    png = plot_pareto(points, start, parent / "pareto.png")
    if not quiet:
        from rewardlab.runs import console

        console.print(f"[bold cyan]{mc.name}[/] Pareto fronts vs length (weights): {fronts}; {png}")
    return parent
