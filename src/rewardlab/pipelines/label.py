"""Recipe: the arm's preference labels, from its feedback source (``label.source``).

A rater source (``simulated``; later ``judge`` and ``human``) is shown completions sampled from
policies; a file source (``file``) is read and split. Either way the stage writes
``train.jsonl``/``eval.jsonl`` in TRL's preference format, and the rater's error rate against gold
when the task has gold.

By default half the pairs come from the SFT model and half from the pretrained model: the SFT model
agrees with the user almost only when the user is right, so pairs from it alone would teach even an
unbiased reward model that "agreement means correct"; the pretrained model's agreement is independent
of correctness (issue 10, pitfalls). Identical pairs carry no information and are dropped.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import torch

from rewardlab.audit.policy_eval import generate_responses
from rewardlab.config import PipelineConfig
from rewardlab.feedback.base import LabelFile
from rewardlab.feedback.factory import require_rater
from rewardlab.feedback.records import Comparison, Ranking, save_comparisons, save_rankings
from rewardlab.feedback.simulated import rater_error_rate
from rewardlab.pipelines.common import label_source, setup_stage, stage_input
from rewardlab.policies.models import load_causal_lm, load_tokenizer
from rewardlab.runs import Run
from rewardlab.tasks.base import Task
from rewardlab.utils import RewardlabError

TRAIN_PROMPT_SEED = 77_777


def run_label(cfg: PipelineConfig, quiet: bool = False) -> Path:
    task = setup_stage(cfg, 3)
    lc = cfg.label
    # 1. the arm's feedback source: a file is read and split; a rater is shown sampled pairs
    if lc.source == "judge":  # an AI judge: trained first when the arm has none (docs/rlaif.md)
        from rewardlab.pipelines.judge import judge_source

        source = judge_source(cfg, task, seed=cfg.seed * 101 + 3, quiet=quiet)
    else:
        source = label_source(cfg, task, seed=cfg.seed * 101 + 3)
    if isinstance(source, LabelFile):
        return _label_from_file(cfg, task, source, quiet)
    rater = require_rater(source, "rewardlab label")
    paths = lc.policy_paths or [
        str(stage_input(cfg, None, "sft", "model", "SFT model")),
        str(stage_input(cfg, None, "pretrain", "model", "pretrained model")),
    ]
    run = Run(cfg.stage_dir("label"), "label", cfg, cfg.report_to, quiet, staged=True)
    rng = random.Random(cfg.seed * 31 + 3)
    problems = task.sample_items(lc.num_prompts, seed=TRAIN_PROMPT_SEED + cfg.seed)
    # 2. sample k completions per prompt from the configured policies
    origin = rng.choices(range(len(paths)), weights=lc.policy_weights, k=len(problems))
    completions: list[list[str]] = [[] for _ in problems]
    gen = torch.Generator().manual_seed(cfg.seed * 17 + 3)
    for pi, path in enumerate(paths):
        idx = [i for i, s in enumerate(origin) if s == pi]
        if not idx:
            continue
        tok, model = load_tokenizer(path), load_causal_lm(path).eval()
        prompts = [task.prompt(problems[i]) for i in idx for _ in range(lc.k)]
        run.info(f"sampling {len(prompts)} completions from {path}")
        out = generate_responses(model, tok, prompts, max_new_tokens=lc.max_new_tokens, temperature=lc.temperature,
                                 batch_size=lc.batch_size, generator=gen)  # fmt: skip
        for j, i in enumerate(idx):
            completions[i] = out[j * lc.k : (j + 1) * lc.k]

    # 3. the rater compares (k = 2) or ranks (k > 2); identical completions carry no information
    if callable(prefetch := getattr(rater, "prefetch", None)):  # a judge labels in batches
        prefetch(problems, completions)
    comps: list[tuple[int, Comparison]] = []
    ranks: list[tuple[int, Ranking]] = []
    dropped = 0
    for i, (p, cs) in enumerate(zip(problems, completions, strict=True)):
        if lc.drop_identical and len(set(cs)) < len(cs):
            if len(set(cs)) < 2:
                dropped += 1
                continue
            cs = list(dict.fromkeys(cs))
        if len(cs) == 2:
            c = rater.compare(p, cs[0], cs[1])
            if c is not None:
                comps.append((i, _with_source(c, paths[origin[i]])))
        else:
            r = rater.rank(p, cs)
            ranks.append((i, r))
            for a, b in r.pairs():
                comps.append((i, _pair_from_ranking(r, a, b, task.meta(p), paths[origin[i]])))
    # 4. split by prompt, write TRL-format files, and the rater's error rate against gold
    n_eval_prompts = int(len(problems) * lc.eval_fraction)
    train = [c for i, c in comps if i >= n_eval_prompts]
    evals = [c for i, c in comps if i < n_eval_prompts]
    save_comparisons(run.dir / "train.jsonl", train)
    save_comparisons(run.dir / "eval.jsonl", evals)
    if ranks:
        save_rankings(run.dir / "rankings_train.jsonl", [r for i, r in ranks if i >= n_eval_prompts])
    err = rater_error_rate([c for _, c in comps])
    stats = {
        "label/pairs_train": len(train),
        "label/pairs_eval": len(evals),
        "label/identical_dropped": dropped,
        "label/identical_rate": dropped / max(1, len(problems)),
        "label/verified_rate": sum(c.meta.get("verified", False) for _, c in comps) / max(1, len(comps)),
        **{f"rater/{k}": v for k, v in _flatten(err).items()},
    }
    if callable(judge_stats := getattr(rater, "label_stats", None)):  # position bias, order flips
        stats.update(judge_stats([c for _, c in comps]))
    run.log_metrics(stats, 0)
    run.write_json("summary.json", {**stats, "sources": dict(Counter(paths[s] for s in origin))})
    run.info(f"{len(train)} train / {len(evals)} eval pairs ({dropped} identical dropped); rater error vs gold "
             f"{stats.get('rater/error_rate', float('nan')):.3f}")  # fmt: skip
    return run.commit()


def _flatten(d: dict, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "_"))
        elif isinstance(v, int | float):
            out[key] = float(v)
    return out


def _with_source(c: Comparison, source: str) -> Comparison:
    return Comparison(prompt=c.prompt, chosen=c.chosen, rejected=c.rejected, rater=c.rater, margin=c.margin,
                      gold_chosen=c.gold_chosen, gold_rejected=c.gold_rejected,
                      meta={**c.meta, "policy": Path(source).parent.name})  # fmt: skip


def _pair_from_ranking(r: Ranking, a: int, b: int, meta: dict, source: str) -> Comparison:
    golds = r.golds or [None] * r.k
    return Comparison(prompt=r.prompt, chosen=r.completions[a], rejected=r.completions[b], rater=r.rater,
                      gold_chosen=golds[a], gold_rejected=golds[b],
                      meta={**r.meta, **meta, "policy": Path(source).parent.name})  # fmt: skip


def _label_from_file(cfg: PipelineConfig, task: Task, source: LabelFile, quiet: bool) -> Path:
    """``label.source: file``: read the comparisons and split them. When the task knows which of its prompts
    it holds out (``split_of``: a dataset task on the same file), the eval pairs are exactly those, so the
    audit's prompts are never trained on; otherwise a seeded shuffle splits off ``eval_fraction``."""
    lc = cfg.label
    run = Run(cfg.stage_dir("label"), "label", cfg, cfg.report_to, quiet, staged=True)
    comps = source.comparisons()
    origin = str(getattr(source, "origin", lc.file.path))  # a file's path, or the labeling app's db#queue
    held_out = getattr(source, "held_out", None)
    held = held_out() if callable(held_out) else None
    split_of = getattr(task, "split_of", None)
    sides = [split_of(c.prompt) for c in comps] if callable(split_of) and not held else []
    if held:  # label.file.split: train -> the file's fixed validation split is the eval set
        evals, train = held, comps
    elif "eval" in sides:
        evals = [c for c, side in zip(comps, sides, strict=True) if side == "eval"]
        train = [c for c, side in zip(comps, sides, strict=True) if side != "eval"]
    else:
        order = list(range(len(comps)))
        random.Random(cfg.seed * 31 + 3).shuffle(order)
        n_eval = max(1, int(len(comps) * lc.eval_fraction))
        evals, train = [comps[i] for i in order[:n_eval]], [comps[i] for i in order[n_eval:]]
    if not train:
        raise RewardlabError(
            f"label.{lc.source}: {len(comps)} records from {origin} leave none for training after the eval split"
        )
    save_comparisons(run.dir / "train.jsonl", train)
    save_comparisons(run.dir / "eval.jsonl", evals)
    stats: dict[str, float] = {"label/pairs_train": len(train), "label/pairs_eval": len(evals)}
    if any(c.gold_chosen is not None for c in comps):
        stats.update({f"rater/{k}": v for k, v in _flatten(rater_error_rate(comps)).items()})
    read = getattr(source, "stats", None)
    extra: dict = {}
    if read is not None:
        stats["label/bad_records"] = read.bad
        extra["read"] = read.as_dict()
        for k, n in read.dropped.items():
            run.info(f"{n} pair(s) dropped: {k.replace('_', ' ')}")
        if read.bad:
            run.warn(f"{read.bad} malformed record(s) skipped (--skip-bad-records); first: "
                     + "; ".join(read.bad_reasons))  # fmt: skip
    run.log_metrics(stats, 0)
    run.write_json("summary.json", {**stats, "sources": {origin: len(comps)}, **extra})
    split = f", split {lc.file.split} (eval: validation)" if held else ""
    run.info(f"{len(train)} train / {len(evals)} eval pairs from {origin}{split}")
    return run.commit()
