"""Recipe: SL-CAI (Bai et al. 2022, "Constitutional AI"): critique -> revision rounds, then SFT on the revisions.

    responses of the response policy (pretrained model by default) on training and held-out prompts
    for each round r = 1..rounds:
        critique_r = critic(critique prompt(principle, prompt, response_{r-1}))     (critique: model)
        response_r = reviser(revision prompt(principle, prompt, response_{r-1}, critique_r))
        audit response_r on the held-out prompts: gold, accuracy, parse rate, sycophancy
    SFT of the response policy on (prompt, final revision) over the training prompts, audited the same way

The critic and reviser is ``slcai.model_path`` (a local instruct model). No such model exists here, so the
tiny-model path trains one from the arm's own labels (``<arm>/label/train.jsonl``, the first
``slcai.labels``): revising the rejected response gives the chosen one, revising the chosen one keeps it.
Whatever biases those labels carry, the revisions inherit. With no critique texts to learn from, the tiny
path revises directly (``critique: none``, the prompt's ``{critique}`` left empty).

Writes ``<run_dir>/<arm>/slcai/``: ``rounds.jsonl`` (one audit row per round, round 0 = the initial
responses, then ``sft``), ``revisions.jsonl`` (the SFT data), ``reviser/`` (the trained reviser),
``model`` and ``summary.json``. Each revision's ``meta`` keeps every round's response (``rounds``: the initial
one, then each revision) and critique (``critiques``: empty with ``critique: none``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rewardlab.audit.policy_eval import evaluate_policy, generate_responses, score_responses, summarize
from rewardlab.config import PipelineConfig
from rewardlab.feedback.constitution import Constitution, load_constitution
from rewardlab.feedback.records import Comparison, load_comparisons
from rewardlab.pipelines.common import eval_problems, setup_stage, stage_input
from rewardlab.pipelines.judge import FormatTraining, extend_for_prompts, train_format_lm
from rewardlab.policies.models import load_causal_lm, load_tokenizer, save_model
from rewardlab.runs import Run
from rewardlab.tasks.base import Task
from rewardlab.utils import RewardlabError, write_jsonl

SLCAI_PROMPT_SEED = 88_888


def revision_examples(constitution: Constitution, comparisons: Sequence[Comparison],
                      rng: random.Random) -> tuple[list[str], list[str]]:  # fmt: skip
    """The reviser's data from labelled pairs: rejected -> chosen, and chosen -> chosen (ties skipped)."""
    prompts, targets = [], []
    for c in comparisons:
        if c.tie or not isinstance(c.prompt, str):
            continue
        for before in (str(c.rejected), str(c.chosen)):
            prompts.append(constitution.revision_prompt(constitution.pick(rng), c.prompt, before))
            targets.append(str(c.chosen))
    if not prompts:
        raise RewardlabError("slcai: no labelled (non-tie, plain-text) comparisons to train the reviser on")
    return prompts, targets


def revise(model: Any, tokenizer: Any, constitution: Constitution, prompts: Sequence[str],
           responses: Sequence[str], critique: str, max_new_tokens: int, rng: random.Random,
           batch_size: int = 128) -> tuple[list[str], list[str]]:  # fmt: skip
    """One critique -> revision round (greedy); returns (critiques, revisions). A revision that comes out
    empty keeps the response it revised."""
    principles = [constitution.pick(rng) for _ in prompts]
    critiques = [""] * len(prompts)
    if critique == "model":
        critiques = generate_responses(model, tokenizer, [constitution.critique_prompt(pr, p, r)
                                       for pr, p, r in zip(principles, prompts, responses, strict=True)],
                                       max_new_tokens=max_new_tokens, greedy=True, batch_size=batch_size)  # fmt: skip
    contexts = [constitution.revision_prompt(pr, p, r, c)
                for pr, p, r, c in zip(principles, prompts, responses, critiques, strict=True)]  # fmt: skip
    out = generate_responses(model, tokenizer, contexts, max_new_tokens=max_new_tokens, greedy=True,
                             batch_size=batch_size)  # fmt: skip
    return critiques, [o if o.strip() else r for o, r in zip(out, responses, strict=True)]


def audit_responses(task: Task, problems: Sequence[Any], responses: Sequence[str]) -> dict[str, float]:
    """Gold, accuracy, parse rate and the task's behaviours (sycophancy) of fixed responses."""
    return summarize(task, problems, score_responses(task, problems, responses))


def run_slcai(cfg: PipelineConfig, quiet: bool = False) -> Path:
    """``rewardlab slcai``: revisions by rounds under the constitution, SFT on them; each round audited."""
    task = setup_stage(cfg, 6)
    sc = cfg.slcai
    constitution = load_constitution(sc.constitution)
    run = Run(cfg.stage_dir("slcai"), "slcai", cfg, cfg.report_to, quiet, staged=True)
    rng = random.Random(cfg.seed * 19 + 6)
    # 1. the critic and reviser: a given local model, or one trained on the arm's labelled comparisons
    if sc.model_path:
        tok, reviser = load_tokenizer(sc.model_path), load_causal_lm(sc.model_path).eval()
    else:
        labels = load_comparisons(stage_input(cfg, None, "label", "train.jsonl", "the arm's labels"))[
            : sc.labels
        ]
        prompts, targets = revision_examples(constitution, labels, rng)
        init = stage_input(cfg, None, "sft", "model", "the reviser's starting model")
        tok, reviser = load_tokenizer(init), load_causal_lm(init)
        extend_for_prompts(reviser, tok, constitution.words(), sc.max_length)
        run.info(f"reviser: {init} trained on {len(prompts)} revision examples from {len(labels)} labels")
        train_format_lm(
            cfg, run, reviser, tok, prompts, targets, FormatTraining(sc.reviser_steps, sc.batch_size, sc.lr)
        )
        save_model(reviser.eval(), tok, run.dir / "reviser")
    # 2. the initial responses, on training prompts (the SFT data) and held-out prompts (the audit)
    policy_path = stage_input(cfg, None, sc.response_policy, "model", f"{sc.response_policy} model")
    policy_tok, policy = load_tokenizer(policy_path), load_causal_lm(policy_path).eval()
    train_items = task.sample_items(sc.prompts, seed=SLCAI_PROMPT_SEED + cfg.seed)
    held_out = eval_problems(task, sc.eval_prompts)
    items = [*train_items, *held_out]
    texts = [task.prompt(p) for p in items]
    gen = torch.Generator().manual_seed(cfg.seed * 23 + 6)
    responses = generate_responses(policy, policy_tok, texts, max_new_tokens=sc.max_new_tokens, generator=gen)
    n = len(train_items)
    rows = [{"round": 0, **audit_responses(task, held_out, responses[n:])}]
    run.log_metrics({f"slcai/{k}": v for k, v in rows[0].items()}, 0)
    # 3. critique -> revision rounds, each audited on the held-out prompts
    history, critiques = [responses], []
    with torch.no_grad():
        for r in range(1, sc.rounds + 1):
            round_critiques, responses = revise(
                reviser, tok, constitution, texts, responses, sc.critique, sc.max_new_tokens, rng
            )
            history.append(responses)
            critiques.append(round_critiques)
            rows.append({"round": r, **audit_responses(task, held_out, responses[n:])})
            run.log_metrics({f"slcai/{k}": v for k, v in rows[-1].items()}, r)
            run.info(f"round {r}: gold {rows[-1].get('gold/mean', float('nan')):+.3f}, sycophancy "
                     f"{rows[-1].get('behavior/sycophancy_rate', float('nan')):.3f}")  # fmt: skip
    write_jsonl(run.dir / "revisions.jsonl", [{"prompt": texts[i], "completion": responses[i],
                                               "meta": {"rounds": [h[i] for h in history],
                                                        "critiques": [c[i] for c in critiques]}} for i in range(n)])  # fmt: skip
    # 4. SFT of the response policy on the final revisions of the training prompts
    policy.train()
    train_format_lm(
        cfg,
        run,
        policy,
        policy_tok,
        texts[:n],
        responses[:n],
        FormatTraining(sc.sft_steps, sc.batch_size, sc.lr),
    )
    final, _ = evaluate_policy(
        policy.eval(), policy_tok, task, held_out, max_new_tokens=sc.max_new_tokens, seed=0
    )
    rows.append({"round": "sft", **final})
    write_jsonl(run.dir / "rounds.jsonl", rows)
    save_model(policy, policy_tok, run.dir / "model")
    run.write_json("summary.json", {"rounds": rows, "critique": sc.critique, "response_policy": sc.response_policy,
                                    "seconds": run.elapsed})  # fmt: skip
    run.info(f"SFT on revisions: gold {final.get('gold/mean', float('nan')):+.3f}, sycophancy "
             f"{final.get('behavior/sycophancy_rate', float('nan')):.3f}")  # fmt: skip
    return run.commit() / "model"
