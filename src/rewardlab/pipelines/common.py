"""Helpers the stage recipes share: seeding a stage, the fixed held-out prompts, stage paths."""

from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rewardlab.config import PipelineConfig
from rewardlab.runs import Run
from rewardlab.tasks.arithmetic import ArithmeticTask, Problem
from rewardlab.utils import RewardlabError, seed_everything, set_threads

EVAL_SEED = 1_000_000_007  # the held-out prompts are the same for every stage, run and seed


def setup_stage(cfg: PipelineConfig, stage_offset: int = 0) -> ArithmeticTask:
    set_threads(cfg.threads)
    seed_everything(cfg.seed * 1000 + stage_offset)
    return ArithmeticTask(cfg.task)


def eval_problems(task: ArithmeticTask, n: int) -> list[Problem]:
    return task.sample_problems(n, seed=EVAL_SEED)


def stage_input(cfg: PipelineConfig, explicit: str | None, stage: str, name: str, what: str) -> Path:
    """An input path: the explicit one, else ``<run_dir>/<stage>/<name>``; a clear error if missing."""
    p = Path(explicit) if explicit else cfg.stage_dir(stage) / name
    if not p.exists():
        hint = "" if explicit else f" (run `rewardlab {stage}` first or set it explicitly)"
        raise RewardlabError(f"{what} {p} not found{hint}")
    return p


def finish_lm_stage(run: Run, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, task: ArithmeticTask,
                    held_out: list[Problem], max_new_tokens: int, **extra: object) -> tuple[Path, dict]:  # fmt: skip
    """Final sampled and greedy evaluation, summary.json, samples.jsonl and the atomic checkpoint."""
    from rewardlab.audit.policy_eval import evaluate_policy
    from rewardlab.optimize.lm import save_model
    from rewardlab.utils import write_jsonl

    final, samples = evaluate_policy(model, tokenizer, task, held_out, max_new_tokens=max_new_tokens, seed=0)
    greedy, _ = evaluate_policy(model, tokenizer, task, held_out, max_new_tokens=max_new_tokens, greedy=True)
    run.write_json("summary.json", {"sampled": final, "greedy": greedy, **extra, "seconds": run.elapsed})
    write_jsonl(run.dir / "samples.jsonl", [s.to_dict() for s in samples])
    out = save_model(model, tokenizer, run.dir / "model")
    run.info(
        f"parse rate {final['behavior/parse_rate']:.3f}, gold accuracy {final['gold/accuracy']:.3f} "
        f"(1-digit {final.get('gold/accuracy_d1', float('nan')):.3f}; greedy {greedy['gold/accuracy']:.3f}), "
        f"sycophancy {final['behavior/sycophancy_rate']:.3f}; saved {out} in {run.elapsed:.0f}s"
    )
    return out, final
