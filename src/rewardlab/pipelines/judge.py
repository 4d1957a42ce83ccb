"""Recipe: train an AI judge on K labelled comparisons (the tiny-model path of RLAIF), and load judges.

No instruction-tuned model can be downloaded here, so the judge is the SFT model fine-tuned on K
comparisons labelled by a rater (``label.judge.train.rater``: the unbiased preset stands for careful
people, time-pressed for hurried ones), rendered in the judge format in both orders::

    <constitution's comparison prompt with a sampled principle, the question, A, B>  ->  " A" | " B"

with the SFT loss on the option token (:func:`rewardlab.optimize.lm.lm_loss`, completion-only). The
judge then labels the arm's many pairs (``label.source: judge``): few human labels -> an AI labeler ->
many labels. With a real local instruct model, set ``label.judge.model_path`` and nothing is trained.

Writes ``<run_dir>/<arm>/judge/``: ``model`` (the judge), ``train.jsonl`` (the K comparisons),
``metrics.jsonl`` and ``summary.json`` (agreement with gold by difficulty, position bias, order flips, on
held-out pairs).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import AddedToken

from rewardlab.audit.policy_eval import generate_responses
from rewardlab.config import OptimConfig, PipelineConfig
from rewardlab.feedback.base import LabelFile, Rater
from rewardlab.feedback.constitution import Constitution, load_constitution
from rewardlab.feedback.factory import make_source
from rewardlab.feedback.judge import Judge, JudgeRater, JudgeSourceConfig, LMJudge, RewardModelJudge
from rewardlab.feedback.records import Comparison, save_comparisons
from rewardlab.feedback.simulated import SimulatedRater, rater_error_rate
from rewardlab.optimize.lm import collate_lm, lm_loss, train_lm
from rewardlab.pipelines.common import setup_stage, stage_input
from rewardlab.policies.models import load_causal_lm, load_tokenizer, save_model
from rewardlab.policies.tokenizer import encode_examples, prompt_text
from rewardlab.runs import Run
from rewardlab.tasks.base import Task
from rewardlab.training import BatchOrder, Cadence, shuffled_batches

JUDGE_PROMPT_SEED = 55_555  # the K labelled comparisons' prompts (not the label stage's)
JUDGE_EVAL_SEED = 66_666  # the held-out pairs the judge is measured on


# ------------------------------------------------------------------------------------------ pieces
def sample_pairs(cfg: PipelineConfig, task: Task, n: int, seed: int) -> tuple[list[Any], list[list[str]]]:
    """``n`` prompts with two sampled completions each, from the label stage's policies and weights."""
    lc = cfg.label
    paths = lc.policy_paths or [
        str(stage_input(cfg, None, "sft", "model", "SFT model")),
        str(stage_input(cfg, None, "pretrain", "model", "pretrained model")),
    ]
    rng = random.Random(seed)
    problems = task.sample_items(n, seed=seed)
    origin = rng.choices(range(len(paths)), weights=lc.policy_weights, k=n)
    completions: list[list[str]] = [[] for _ in problems]
    gen = torch.Generator().manual_seed(seed)
    for pi, path in enumerate(paths):
        idx = [i for i, s in enumerate(origin) if s == pi]
        if not idx:
            continue
        tok, model = load_tokenizer(path), load_causal_lm(path).eval()
        out = generate_responses(model, tok, [task.prompt(problems[i]) for i in idx for _ in range(2)],
                                 max_new_tokens=lc.max_new_tokens, temperature=lc.temperature,
                                 batch_size=lc.batch_size, generator=gen)  # fmt: skip
        for j, i in enumerate(idx):
            completions[i] = out[2 * j : 2 * j + 2]
    return problems, completions


def label_distinct(rater: Rater, problems: Sequence[Any], completions: Sequence[Sequence[str]],
                   limit: int) -> list[Comparison]:  # fmt: skip
    """The rater's labels on the pairs whose completions differ, at most ``limit``."""
    keep = [(p, cs) for p, cs in zip(problems, completions, strict=True) if cs[0] != cs[1]][:limit]
    return rater.label_pairs([p for p, _ in keep], [(cs[0], cs[1]) for _, cs in keep])


def judge_examples(constitution: Constitution, comparisons: Sequence[Comparison],
                   rng: random.Random) -> tuple[list[str], list[str]]:  # fmt: skip
    """Each comparison in the judge format, both orders: (prompt with chosen first -> option A), (rejected
    first -> option B); a principle is drawn per example as the judge will see them."""
    prompts, answers = [], []
    opt_a, opt_b = constitution.options
    for c in comparisons:
        prompt = c.prompt if isinstance(c.prompt, str) else str(c.prompt)
        for first, second, answer in ((c.chosen, c.rejected, opt_a), (c.rejected, c.chosen, opt_b)):
            prompts.append(
                constitution.comparison_prompt(constitution.pick(rng), prompt, str(first), str(second))
            )
            answers.append(answer)
    return prompts, answers


def extend_for_prompts(model: Any, tokenizer: Any, words: Sequence[str], max_length: int) -> list[str]:
    """Make a closed-vocabulary LM able to read a constitution: each word its tokenizer maps to the unknown
    token becomes a new token (new embedding rows), and a rotary model's positions grow to ``max_length``.
    A real tokenizer has no unknown words, so nothing changes there. Returns the words added."""
    unk = tokenizer.unk_token
    new = list(dict.fromkeys(w.lower() for w in words if unk is not None and unk in tokenizer.tokenize(w)))
    if new:
        tokenizer.add_tokens([AddedToken(w, single_word=True, normalized=True) for w in new])
        model.resize_token_embeddings(len(tokenizer))
    conf = model.config
    rotary = (
        getattr(conf, "rope_theta", None) is not None or getattr(conf, "rope_parameters", None) is not None
    )
    if rotary and 0 < getattr(conf, "max_position_embeddings", max_length) < max_length:
        conf.max_position_embeddings = max_length
        tokenizer.model_max_length = max_length
    return new


@dataclass(frozen=True)
class FormatTraining:
    """How :func:`train_format_lm` trains: steps, batch size, peak learning rate (cosine, 10% warmup up to 20
    steps), and an evaluation every ``eval_every`` steps (0: at the end only)."""

    steps: int
    batch_size: int
    lr: float
    eval_every: int = 0


def train_format_lm(cfg: PipelineConfig, run: Run, model: Any, tokenizer: Any, prompts: Sequence[str],
                    completions: Sequence[str], how: FormatTraining,
                    evaluate: Callable[[int], dict[str, float]] | None = None) -> Any:  # fmt: skip
    """The SFT loss (completion-only, :func:`rewardlab.optimize.lm.lm_loss`) on (prompt, completion) examples."""
    steps, batch_size, lr, eval_every = how.steps, how.batch_size, how.lr, how.eval_every
    examples = encode_examples(tokenizer, list(prompts), list(completions))
    pad = int(tokenizer.pad_token_id)
    order = BatchOrder(lambda rng: shuffled_batches(len(examples), batch_size, rng), random.Random(cfg.seed))

    def next_batch(step: int) -> dict:
        return collate_lm([examples[j] for j in order.next()], pad, completion_only=True)

    optim = OptimConfig(lr=lr, warmup_steps=min(20, steps // 10), schedule="cosine")
    cadence = Cadence(steps, eval_every=eval_every or steps, evaluate=evaluate)
    return train_lm(model, next_batch, optim, run, cadence, data_state=order)


def judge_from_model(model: Any, tokenizer: Any, constitution: Constitution, batch_size: int = 64) -> LMJudge:
    """An :class:`LMJudge` over a loaded causal LM (option log-probs via :class:`LMScorer`, chat-formatted)."""
    from rewardlab.evals.scoring import LMScorer

    return LMJudge(
        LMScorer(model, tokenizer, batch_size), lambda text: prompt_text(tokenizer, text), constitution
    )


def load_judge(jc: JudgeSourceConfig, path: str | Path) -> Judge:
    """The ``lm`` or ``reward_model`` judge stored at ``path``."""
    if jc.kind == "reward_model":
        from rewardlab.rewards.model import RewardModel

        return RewardModelJudge(RewardModel.load(path), jc.temperature)
    model = load_causal_lm(path).eval()
    return judge_from_model(model, load_tokenizer(path), load_constitution(jc.constitution), jc.batch_size)


def measure_judge(judge: Judge, task: Task, constitution: Constitution, problems: Sequence[Any],
                  completions: Sequence[Sequence[str]], seed: int) -> dict[str, float]:  # fmt: skip
    """The judge on held-out pairs: agreement with gold (by difficulty), position bias, order flips."""
    rater = JudgeRater(judge, task, constitution, seed, "judge")
    comps = label_distinct(rater, problems, completions, len(problems))
    return rater.label_stats(comps)


# ------------------------------------------------------------------------------------------ recipe
def run_judge(cfg: PipelineConfig, quiet: bool = False) -> Path:
    """``rewardlab judge``: fine-tune the arm's judge LM on K labelled comparisons; returns the model folder."""
    task = setup_stage(cfg, 5)
    jc = cfg.label.judge
    tc = jc.train
    constitution = load_constitution(jc.constitution)
    run = Run(cfg.stage_dir("judge"), "judge", cfg, cfg.report_to, quiet, staged=True)
    # 1. K comparisons labelled by the configured rater (the human budget), on prompts of their own
    problems, completions = sample_pairs(cfg, task, int(tc.labels * 1.3) + 16, JUDGE_PROMPT_SEED + cfg.seed)
    rater = SimulatedRater(task, tc.rater, seed=cfg.seed * 101 + 5, name=f"{tc.rater.preset}")
    comps = label_distinct(rater, problems, completions, tc.labels)
    save_comparisons(run.dir / "train.jsonl", comps)
    err = rater_error_rate(comps)
    run.info(
        f"{len(comps)} comparisons labelled by the {tc.rater.preset} rater (error vs gold {err['error_rate']:.3f})"
    )
    # 2. the judge format, both orders; the judge LM learns to read the constitution's words
    prompts, answers = judge_examples(constitution, comps, random.Random(cfg.seed * 13 + 5))
    init = stage_input(cfg, tc.init_path, "sft", "model", "judge's starting model")
    tokenizer, model = load_tokenizer(init), load_causal_lm(init)
    added = extend_for_prompts(model, tokenizer, constitution.words(), tc.max_length)
    run.info(
        f"judge from {init}; {len(added)} constitution words added to its vocabulary; {len(prompts)} examples"
    )
    # 3. held-out pairs for the measurements (never trained on)
    eval_problems, eval_completions = sample_pairs(cfg, task, tc.eval_pairs, JUDGE_EVAL_SEED + cfg.seed)

    def evaluate(step: int) -> dict[str, float]:
        judge = judge_from_model(model, tokenizer, constitution, jc.batch_size)
        with torch.no_grad():
            return measure_judge(judge, task, constitution, eval_problems, eval_completions, cfg.seed)

    # 4. train with the SFT loss on the option token
    how = FormatTraining(tc.steps, tc.batch_size, tc.lr, tc.eval_every)
    train_format_lm(cfg, run, model, tokenizer, prompts, answers, how, evaluate)
    # 5. the model, then (last) the summary
    final = evaluate(tc.steps)
    save_model(model.eval(), tokenizer, run.dir / "model")
    with torch.no_grad():
        loss = lm_loss(model, collate_lm(encode_examples(tokenizer, prompts[:256], answers[:256]),
                                         int(tokenizer.pad_token_id), True))[0].item()  # fmt: skip
    summary = {"labels": len(comps), "rater": tc.rater.preset, "rater_error_rate": err["error_rate"],
               "added_words": len(added), "train_loss_first_256": loss, **final, "seconds": run.elapsed}  # fmt: skip
    run.write_json("summary.json", summary)
    run.info(f"judge: error vs gold {final.get('judge/error_averaged', float('nan')):.3f} averaged, "
             f"{final.get('judge/error_first_order', float('nan')):.3f} one order; position bias "
             f"{final.get('judge/position_bias', float('nan')):+.3f}")  # fmt: skip
    return run.commit() / "model"


def judge_source(cfg: PipelineConfig, task: Task, seed: int, quiet: bool = False) -> Rater | LabelFile:
    """The label stage's ``judge`` source: the configured judge, trained first (``rewardlab judge``) when it
    is an LM judge without ``model_path`` and the arm has none yet."""
    jc = cfg.label.judge
    model = None
    if jc.kind != "rule":
        path = jc.model_path
        if path is None and jc.kind == "lm":
            done = cfg.stage_dir("judge") / "summary.json"
            path = str(cfg.stage_dir("judge") / "model") if done.exists() else str(run_judge(cfg, quiet))
        if path is None:
            from rewardlab.utils import RewardlabError

            raise RewardlabError("label.judge.model_path: required for a reward_model judge")
        model = load_judge(jc, path)
    return make_source("judge", task=task, seed=seed, name=cfg.arm_name, judge=jc, judge_model=model)
