"""Recipes: offline RLHF from one proxy-scored dataset, and pretraining with human feedback.

=====================  ====================================================================  ==========================
stage (CLI)            what it trains                                                         source
=====================  ====================================================================  ==========================
``filtered-mle``       SFT on the samples the proxy ranks in its top ``fraction``              Hu et al. 2023
``rwr``                SFT on every sample, weighted by ``exp(proxy / T)`` (normalised, clipped)  Hu et al. 2023
``reward-conditioned`` SFT on ``<r_k> prompt`` (k = the proxy's quantile bin); generate with    Hu et al. 2023 ("DT")
                       the top token
``alol``               ``A⁺ · clip(π/π_ref) · ∇ log π`` with ``A = proxy - V_ref(x)``;        Baheti et al. 2024
                       negative advantages dropped
``phf``                pretraining on corpus documents tagged ``<good>``/``<bad>`` by the proxy  Korbak et al. 2023
=====================  ====================================================================  ==========================

The first four share one dataset (:func:`offline_dataset`): SFT samples on training prompts (and/or
the arm's labelled pairs) scored once by the arm's reward model, cached in
``<run_dir>/<arm>/offline-data``. Each writes ``<run_dir>/<arm>/<stage>/``: ``audit.jsonl`` (a row at
step 0 and every ``eval_every`` steps: proxy, gold, KL to the SFT reference, sycophancy; the report
puts it on the gold-vs-sqrt(KL) figure), ``metrics.jsonl``, ``samples/``, ``model`` and
``summary.json`` (first and last audit rows and what the weighted dataset holds).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rewardlab.audit.tracker import AuditLog, AuditSpec, scheduled_evals
from rewardlab.checkpoint import Checkpointer
from rewardlab.config import OfflineMethodConfig, PipelineConfig
from rewardlab.distributed import make_accelerator, stage_run
from rewardlab.feedback.records import load_comparisons
from rewardlab.losses import reward_quantile_bins, rwr_weights, top_quantile_mask
from rewardlab.optimize.lm import Example, train_lm
from rewardlab.optimize.offline import (
    BAD,
    GOOD,
    LMBatches,
    LossFn,
    OfflineSample,
    add_control_tokens,
    alol_objective,
    build_offline_dataset,
    condition_prompt,
    evaluate_conditions,
    evaluate_loss,
    fingerprint,
    load_offline_dataset,
    load_policy,
    phf_batch,
    phf_threshold,
    quantile_summary,
    reference_values,
    reward_token,
    sample_completions,
    save_offline_dataset,
    split_by_group,
    token_logprobs,
    train_offline,
    weighted_loss,
)
from rewardlab.pipelines.common import eval_problems, setup_stage, stage_input
from rewardlab.policies.models import build_causal_lm, load_causal_lm, num_parameters, save_model
from rewardlab.policies.tokenizer import encode_examples, tokenizer_for_task
from rewardlab.rewards.model import RewardModel
from rewardlab.runs import Run
from rewardlab.tasks.base import Task, has_capability
from rewardlab.training import Cadence
from rewardlab.utils import RewardlabError

OFFLINE_PROMPT_SEED = 333_333
PHF_CALIBRATION_SEED = 444_444
DATA_STAGE = "offline-data"


# ------------------------------------------------------------------------------------------ dataset
def offline_dataset(cfg: PipelineConfig, tokenizer: PreTrainedTokenizerBase, reference: PreTrainedModel,
                    reward_model: RewardModel, policy_path: Path, reward_path: Path,
                    log: Callable[[str], None] = print) -> list[OfflineSample]:  # fmt: skip
    """The arm's offline dataset, from the cache ``<run_dir>/<arm>/offline-data`` when its key matches.

    ``offline.data`` = ``policy``: ``samples_per_prompt`` SFT samples on each of ``offline.prompts``
    training prompts; ``labels``: both completions of every pair in ``<arm>/label/train.jsonl``;
    ``both``: the two. Every completion is scored by the proxy; each prompt gets ``V_ref(x)``, the mean
    proxy score of ``value_samples`` fresh reference (SFT) samples.
    """
    oc = cfg.offline
    label_path = cfg.stage_dir("label") / "train.jsonl" if oc.data in ("labels", "both") else None
    if label_path is not None and not label_path.is_file():
        raise RewardlabError(f"offline.data={oc.data}: {label_path} not found (run `rewardlab label` first)")
    settings = oc.model_dump(include={"data", "prompts", "samples_per_prompt", "value_samples",
                                      "temperature", "max_new_tokens"})  # fmt: skip
    key = fingerprint(policy_path, reward_path, label_path, cfg.seed, str(sorted(settings.items())),
                      cfg.task.model_dump_json())  # fmt: skip
    folder = cfg.stage_dir(DATA_STAGE)
    cached = load_offline_dataset(folder, key)
    if cached is not None:
        log(f"offline dataset: {len(cached)} scored samples reused from {folder}")
        return cached
    task = cfg.build_task()
    pairs: list[tuple[str, str, str]] = []
    if oc.data in ("policy", "both"):
        prompts = [task.prompt(p) for p in task.sample_items(oc.prompts, seed=OFFLINE_PROMPT_SEED + cfg.seed)]
        log(
            f"offline dataset: sampling {oc.samples_per_prompt} completions for each of {len(prompts)} prompts"
        )
        completions = sample_completions(reference, tokenizer, prompts, oc.samples_per_prompt,
                                         temperature=oc.temperature, max_new_tokens=oc.max_new_tokens,
                                         generator=torch.Generator().manual_seed(cfg.seed * 1000 + 21))  # fmt: skip
        pairs += [(prompts[i // oc.samples_per_prompt], c, "policy") for i, c in enumerate(completions)]
    if label_path is not None:
        for c in load_comparisons(label_path):
            if not all(isinstance(t, str) for t in (c.prompt, c.chosen, c.rejected)):
                raise RewardlabError(
                    f"{label_path}: offline training needs plain-text prompts and completions"
                )
            pairs += [(str(c.prompt), str(c.chosen), "labels"), (str(c.prompt), str(c.rejected), "labels")]
    value_gen = torch.Generator().manual_seed(cfg.seed * 1000 + 22)

    def values(prompts: list[str]) -> list[float]:
        log(
            f"offline dataset: V_ref(x) from {oc.value_samples} reference samples for each of {len(prompts)} prompts"
        )
        return reference_values(reference, tokenizer, reward_model, prompts, oc.value_samples,
                                temperature=oc.temperature, max_new_tokens=oc.max_new_tokens,
                                generator=value_gen)  # fmt: skip

    samples = build_offline_dataset(pairs, reward_model, values)
    save_offline_dataset(folder, samples, key, {"policy": str(policy_path), "reward": str(reward_path),
                                                "settings": settings})  # fmt: skip
    log(f"offline dataset: {len(samples)} scored samples written to {folder}")
    return samples


def dataset_summary(task: Task, samples: list[OfflineSample], weights: torch.Tensor) -> dict[str, Any]:
    """What the data teach, for the audit only (gold is computed here and never used in training).

    Proxy and advantage statistics of all samples, and the proxy, gold, accuracy and the task's
    behaviours of the whole dataset and of the *weighted* dataset (weights 0/1 for filtered MLE,
    exp-reward for RWR, the top bin for reward-conditioned, A⁺ for A-LoL): the policy moves toward the
    latter. A behaviour is averaged over the samples it applies to (sycophancy: wrong-belief prompts).
    """
    w = weights.double().clamp(min=0)
    items = [task.item(s.prompt) for s in samples]
    cols = {"proxy": torch.tensor([s.proxy for s in samples], dtype=torch.float64)}
    golds = [task.gold_detail(i, s.completion) for i, s in zip(items, samples, strict=True)]
    if all(g is not None for g in golds):
        cols["gold"] = torch.tensor([g.value for g in golds], dtype=torch.float64)  # type: ignore[union-attr]
        cols["accuracy"] = torch.tensor([float(bool(g.correct)) for g in golds], dtype=torch.float64)  # type: ignore[union-attr]
    out: dict[str, Any] = {
        "samples": len(samples),
        "weighted_samples": int((w > 0).sum()),
        "proxy": quantile_summary(cols["proxy"].tolist()),
        "advantage": quantile_summary([s.advantage for s in samples]),
    }
    for name, col in cols.items():
        out[f"{name}/all"] = float(col.mean())
        out[f"{name}/weighted"] = float((w * col).sum() / w.sum()) if w.sum() > 0 else float("nan")
    flags = [task.behavior_flags(i, s.completion) for i, s in zip(items, samples, strict=True)]
    for name in task.info.behaviors:
        idx = [j for j, f in enumerate(flags) if f.get(name) is not None]
        col = torch.tensor([flags[j][name] for j in idx], dtype=torch.float64)
        ww = w[idx]
        out[f"{name}/all"] = float(col.mean()) if idx else float("nan")
        out[f"{name}/weighted"] = float((ww * col).sum() / ww.sum()) if idx and ww.sum() > 0 else float("nan")
    return out


# ------------------------------------------------------------------------------------- the recipes
@dataclass
class _Stage:
    """What every offline recipe starts from."""

    cfg: PipelineConfig
    task: Task
    run: Run
    tok: PreTrainedTokenizerBase
    policy: PreTrainedModel
    ref: PreTrainedModel
    rm: RewardModel
    samples: list[OfflineSample]
    acc: Accelerator


def _start(cfg: PipelineConfig, stage: str, offset: int, quiet: bool) -> _Stage:
    task = setup_stage(cfg, offset)
    oc = cfg.offline
    policy_path = stage_input(cfg, oc.policy_path, "sft", "model", "policy")
    reward_path = stage_input(cfg, oc.reward_path, "reward", "model", "reward model")
    acc = make_accelerator()
    run = stage_run(acc, cfg.stage_dir(stage), stage, cfg, cfg.report_to, quiet)
    run.write_json("../arm.json", cfg.arm_info())
    tok, policy = load_policy(policy_path)
    ref = load_causal_lm(policy_path).eval().requires_grad_(False).to(acc.device)
    rm = RewardModel.load(reward_path)
    for m in rm.members:
        m.requires_grad_(False).to(acc.device)
    if acc.is_main_process:  # one process samples and scores (or reuses) the dataset, the others read it
        offline_dataset(cfg, tok, ref, rm, policy_path, reward_path, run.info)
    acc.wait_for_everyone()
    samples = offline_dataset(cfg, tok, ref, rm, policy_path, reward_path, lambda _msg: None)
    return _Stage(cfg, task, run, tok, policy, ref, rm, samples, acc)


def _train_and_finish(s: _Stage, method: OfflineMethodConfig, prompts: list[str], weights: torch.Tensor,
                      make_loss: Callable[[list[int], list[Example]], LossFn],
                      prompt_transform: Callable[[str], str] | None = None,
                      data_weights: torch.Tensor | None = None,
                      eval_loss: Callable[[list[int], list[Example]], LossFn] | None = None) -> Path:  # fmt: skip
    """Keep the samples with weight > 0, train with ``make_loss``, audit, save the model and summary.

    ``make_loss(indices, examples)`` builds the loss over those samples (indices into ``s.samples``);
    ``eval_loss`` (default: ``make_loss``) the held-out ``eval/loss``. ``method``'s ``steps``, ``optim``
    and ``eval_every`` override ``offline``'s when set.
    """
    cfg, oc, run = s.cfg, s.cfg.offline, s.run
    steps, optim = method.steps or oc.steps, method.optim or oc.optim
    eval_every = method.eval_every or oc.eval_every
    pad = int(s.tok.pad_token_id)  # type: ignore[arg-type]
    train_idx, eval_idx = split_by_group(s.samples, oc.eval_fraction)
    train_idx = [i for i in train_idx if weights[i] > 0]
    eval_idx = [i for i in eval_idx if weights[i] > 0]
    encoded = encode_examples(s.tok, prompts, [x.completion for x in s.samples])
    train_ex, eval_ex = [encoded[i] for i in train_idx], [encoded[i] for i in eval_idx]
    run.info(f"training on {len(train_ex)} samples ({len(eval_ex)} held out for eval/loss)")
    train_loss, held_out_loss = make_loss(train_idx, train_ex), (eval_loss or make_loss)(eval_idx, eval_ex)
    held_out = eval_problems(s.task, oc.eval_prompts)
    audit = None
    if s.acc.is_main_process:
        spec = AuditSpec(s.task, held_out, oc.max_new_tokens, cfg.seed, oc.kl_estimator, oc.temperature,
                         oc.samples_to_save, prompt_transform, evals=scheduled_evals(cfg.audit_evals))  # fmt: skip
        audit = AuditLog(run, s.ref, s.tok, s.rm, spec)

    def evaluate(model: PreTrainedModel, step: int) -> dict[str, float]:
        return {"eval/loss": evaluate_loss(model, eval_ex, held_out_loss, pad)} if eval_ex else {}

    ckpt = Checkpointer(run, every=oc.checkpoint_every, total_steps=steps, resume=cfg.resume, accelerator=s.acc,
                        files=("metrics.jsonl", "audit.jsonl", "audit.json"))  # fmt: skip
    policy = train_offline(s.policy, LMBatches(train_ex, pad, oc.batch_size, cfg.seed), train_loss, optim, run,
                           Cadence(steps, eval_every=eval_every, checkpoint=ckpt), audit=audit, evaluate=evaluate,
                           accelerator=s.acc)  # fmt: skip
    out = run.dir / "model"
    if audit is not None:
        out = save_model(policy, s.tok, out)
        data = dataset_summary(s.task, s.samples, weights if data_weights is None else data_weights)
        run.write_json("summary.json", {"start": audit.rows[0], "end": audit.rows[-1], "data": data,
                                        "seconds": run.elapsed})  # fmt: skip
        shown = [k for k in ("gold", "proxy", s.task.info.headline) if k and f"{k}/all" in data]
        run.info("data (all -> weighted): " + ", ".join(f"{k} {data[f'{k}/all']:+.3f} -> {data[f'{k}/weighted']:+.3f}"
                                                        for k in shown) + f"; saved {run.final / 'model'} in {run.elapsed:.0f}s")  # fmt: skip
    s.acc.wait_for_everyone()
    return run.commit() / "model"


def _plain_loss(weights: torch.Tensor) -> Callable[[list[int], list[Example]], LossFn]:
    return lambda idx, _ex: weighted_loss(weights[idx])


def run_filtered_mle(cfg: PipelineConfig, quiet: bool = False) -> Path:
    """Filtered MLE: SFT on the top ``offline.filtered_mle.fraction`` of the samples by proxy."""
    s = _start(cfg, "filtered-mle", 21, quiet)
    fc = cfg.offline.filtered_mle
    rewards = torch.tensor([x.proxy for x in s.samples])
    groups = torch.tensor([x.group for x in s.samples]) if fc.scope == "prompt" else None
    weights = top_quantile_mask(rewards, fc.fraction, groups).float()
    s.run.info(f"keeping {int(weights.sum())} of {len(weights)} samples (top {fc.fraction:.0%}, {fc.scope})")
    return _train_and_finish(s, fc, [x.prompt for x in s.samples], weights, _plain_loss(weights))


def run_rwr(cfg: PipelineConfig, quiet: bool = False) -> Path:
    """Reward-weighted regression: SFT on every sample with weight exp(proxy / T) (mean 1, clipped)."""
    s = _start(cfg, "rwr", 22, quiet)
    rc = cfg.offline.rwr
    weights = rwr_weights(torch.tensor([x.proxy for x in s.samples]), rc.temperature, rc.max_weight)
    s.run.info(f"RWR weights: max {float(weights.max()):.2f}, effective sample size "
               f"{float(weights.sum() ** 2 / (weights**2).sum()):.0f} of {len(weights)}")  # fmt: skip
    return _train_and_finish(s, rc, [x.prompt for x in s.samples], weights, _plain_loss(weights))


def run_reward_conditioned(cfg: PipelineConfig, quiet: bool = False) -> Path:
    """Reward-conditioned SFT: ``<r_k> prompt`` for the sample's proxy quantile k; generate with the top token.

    The audit prompts the policy with the top token and measures KL against the SFT reference on the
    plain prompt: the distance from what the user would get without conditioning.
    """
    s = _start(cfg, "reward-conditioned", 23, quiet)
    rc = cfg.offline.reward_conditioned
    k = rc.num_tokens
    bins, edges = reward_quantile_bins(torch.tensor([x.proxy for x in s.samples]), k)
    tokens = [reward_token(b) for b in range(k)]
    add_control_tokens(s.tok, s.policy, tokens, seed=cfg.seed)
    s.run.info(
        f"reward tokens {tokens[0]}..{tokens[-1]} at proxy edges {[round(float(e), 3) for e in edges]}"
    )
    prompts = [condition_prompt(x.prompt, tokens[int(b)]) for x, b in zip(s.samples, bins)]
    weights = torch.ones(len(s.samples))
    top = tokens[-1]
    return _train_and_finish(s, rc, prompts, weights, _plain_loss(weights),  # type: ignore[arg-type]
                             prompt_transform=lambda p: str(condition_prompt(p, top)),
                             data_weights=(bins == k - 1).float())  # fmt: skip


def run_alol(cfg: PipelineConfig, quiet: bool = False) -> Path:
    """A-LoL: advantage (proxy - V_ref) times the clipped importance weight, negative advantages dropped."""
    s = _start(cfg, "alol", 24, quiet)
    ac = cfg.offline.alol
    adv = torch.tensor([x.advantage for x in s.samples])
    weights = adv.clamp(min=0)
    s.run.info(
        f"A-LoL ({ac.variant}, clip {ac.clip}): {int((adv > 0).sum())} of {len(adv)} samples have A > 0"
    )
    pad = int(s.tok.pad_token_id)  # type: ignore[arg-type]

    def make_loss(idx: list[int], examples: list[Example]) -> LossFn:
        ref_logps = token_logprobs(s.ref, examples, pad) if ac.variant != "ref_free" else []
        return alol_objective(adv[idx], ref_logps, ac.clip, ac.variant)

    # eval/loss: the A⁺-weighted NLL of held-out samples, without the importance weight (which grows as
    # the policy learns a sample, so the surrogate itself need not fall)
    return _train_and_finish(
        s, ac, [x.prompt for x in s.samples], weights, make_loss, eval_loss=_plain_loss(weights)
    )


# ----------------------------------------------------------------------- pretraining with feedback
def run_phf(cfg: PipelineConfig, quiet: bool = False) -> Path:
    """Conditional training (Korbak et al. 2023): pretrain on corpus documents tagged by the arm's proxy.

    Each step draws the pretraining stage's documents (same corpus sampler and seeds), scores them with
    the proxy and prefixes the prompt with ``<good>`` (score at or above the threshold fixed on
    ``calibration_docs`` documents) or ``<bad>``. Evaluation samples on held-out prompts under
    ``<good>``, ``<bad>`` and no tag, and compares with the MLE-pretrained base model when it exists.
    """
    task = setup_stage(cfg, 25)
    pc, oc = cfg.offline.phf, cfg.offline
    reward_path = stage_input(cfg, oc.reward_path, "reward", "model", "reward model")
    acc = make_accelerator()
    run = stage_run(acc, cfg.stage_dir("phf"), "phf", cfg, cfg.report_to, quiet)
    rm = RewardModel.load(reward_path)
    if pc.init_path:
        tok, model = load_policy(pc.init_path)
    else:
        tok = tokenizer_for_task(task, model_max_length=cfg.pretrain.model.max_position_embeddings)
        model = build_causal_lm(cfg.pretrain.model, tok, seed=cfg.seed)
    add_control_tokens(tok, model, [GOOD, BAD], seed=cfg.seed)
    if not has_capability(task, "corpus"):
        raise RewardlabError(f"phf: task {task.info.name} has no pretraining corpus to tag")
    corpus = task.corpus(cfg.pretrain.corpus)  # type: ignore[attr-defined]
    threshold = phf_threshold(task, rm, corpus, pc.calibration_docs, pc.good_fraction,
                              PHF_CALIBRATION_SEED + cfg.seed)  # fmt: skip
    run.info(f"{num_parameters(model) / 1e6:.2f}M parameters from {pc.init_path or 'scratch'}; documents with "
             f"proxy >= {threshold:+.3f} are tagged {GOOD} (top {pc.good_fraction:.0%})")  # fmt: skip
    good_shares: list[float] = []  # of the batches this run drew (after --resume: the resumed steps)

    def next_batch(step: int) -> dict[str, torch.Tensor]:
        rng = random.Random(cfg.seed * 1_000_003 + step)  # the pretraining stage's documents
        batch, share = phf_batch(task, tok, rm, corpus, batch_size=pc.batch_size,
                                 threshold=threshold, rng=rng)  # fmt: skip
        good_shares.append(share)
        return batch

    held_out = eval_problems(task, pc.eval_prompts)
    conditions: dict[str, str | None] = {"good": GOOD, "bad": BAD, "none": None}

    def evaluate(step: int) -> dict[str, float]:
        m = evaluate_conditions(model, tok, task, held_out, rm, conditions, max_new_tokens=oc.max_new_tokens,
                                seed=step)  # fmt: skip
        return {f"eval/{k}": v for k, v in m.items()}

    ckpt = Checkpointer(
        run, every=pc.checkpoint_every, total_steps=pc.steps, resume=cfg.resume, accelerator=acc
    )
    model = train_lm(model, next_batch, pc.optim, run, Cadence(pc.steps, eval_every=pc.eval_every, evaluate=evaluate,
                     checkpoint=ckpt), accelerator=acc)  # fmt: skip
    out = run.dir / "model"
    if not acc.is_main_process:
        acc.wait_for_everyone()
        return run.final / "model"
    final = evaluate_conditions(model, tok, task, held_out, rm, conditions, max_new_tokens=oc.max_new_tokens,
                                seed=0)  # fmt: skip
    base_path = cfg.stage_dir("pretrain") / "model"
    if base_path.is_dir():
        base_tok, base = load_policy(base_path)
        final.update(evaluate_conditions(base, base_tok, task, held_out, rm, {"mle_base": None},
                                         max_new_tokens=oc.max_new_tokens, seed=0))  # fmt: skip
    save_model(model, tok, out)
    run.write_json("summary.json", {"final": final, "threshold": threshold, "good_fraction_seen":
                                    sum(good_shares) / max(1, len(good_shares)), "seconds": run.elapsed})  # fmt: skip
    names = [c for c in ("good", "none", "bad", "mle_base") if f"{c}/proxy/mean" in final]
    run.info("proxy / gold by condition: " + ", ".join(
        f"{c} {final[f'{c}/proxy/mean']:+.3f} / {final[f'{c}/gold/mean']:+.3f}" for c in names) + f"; saved {run.final / 'model'}")  # fmt: skip
    out = run.commit() / "model"
    acc.wait_for_everyone()
    return out
