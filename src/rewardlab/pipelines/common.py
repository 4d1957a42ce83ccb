"""Helpers the stage recipes share: seeding a stage, the fixed held-out prompts, stage paths."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rewardlab.config import PipelineConfig
from rewardlab.feedback.base import LabelFile, Rater
from rewardlab.feedback.factory import make_source
from rewardlab.kernels.precision import set_training_compute
from rewardlab.policies.lora import LoRAConfig, PolicyModel, load_policy
from rewardlab.policies.models import load_causal_lm, resolve_dtype, resolve_precision
from rewardlab.policies.sampling import sampler_path
from rewardlab.runs import Run
from rewardlab.tasks.base import Task
from rewardlab.utils import RewardlabError, atomic_write_text, seed_everything, set_threads

EVAL_SEED = 1_000_000_007  # the held-out prompts are the same for every stage, run and seed


def setup_stage(cfg: PipelineConfig, stage_offset: int = 0) -> Task:
    """Threads, seeds and training precision for a stage, and its task; ``<run_dir>/task.json`` tells the report
    about the task."""
    set_threads(cfg.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # where Accelerate will put the stage
    set_training_compute(resolve_precision(cfg.precision, device)[0])
    seed_everything(cfg.seed * 1000 + stage_offset)
    task = cfg.build_task()
    if os.environ.get("RANK", "0") == "0":
        Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(cfg.run_dir) / "task.json", json.dumps(task.info.to_dict(), indent=2) + "\n")
    return task


def eval_problems(task: Task, n: int) -> list:
    """The held-out items every stage audits on (the task's eval split, a fixed seed)."""
    return task.sample_items(n, seed=EVAL_SEED, split="eval")


def stage_input(cfg: PipelineConfig, explicit: str | None, stage: str, name: str, what: str) -> Path:
    """An input path: the explicit one, else ``<run_dir>/<stage>/<name>``; a clear error if missing."""
    p = Path(explicit) if explicit else cfg.stage_dir(stage) / name
    if not p.exists():
        hint = "" if explicit else f" (run `rewardlab {stage}` first or set it explicitly)"
        raise RewardlabError(f"{what} {p} not found{hint}")
    return p


def load_stage_policy(cfg: PipelineConfig, run: Run, path: Path, lora: LoRAConfig | None,
                      device: torch.device | str) -> PolicyModel:  # fmt: skip
    """The policy a stage trains, from any local causal-LM folder: in ``cfg.dtype`` (resolved for ``device``),
    with LoRA adapters when ``lora``; the log says which dtype and why, what trains, and how it is sampled."""
    dtype, why = resolve_dtype(cfg.dtype, device)
    policy = load_policy(path, dtype, lora)
    run.info(why)
    run.info(policy.describe())
    run.info(sampler_path(policy.model)[1])
    return policy


def load_stage_model(
    cfg: PipelineConfig, run: Run, path: Path, device: torch.device | str
) -> PreTrainedModel:
    """A causal LM a stage only samples from (best-of-n), in ``cfg.dtype``; dtype and sampler path logged."""
    dtype, why = resolve_dtype(cfg.dtype, device)
    model = load_causal_lm(path, dtype)
    run.info(why)
    run.info(sampler_path(model)[1])
    return model


def finish_lm_stage(run: Run, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, task: Task,
                    held_out: list, max_new_tokens: int, *, policy: PolicyModel | None = None,
                    **extra: object) -> tuple[Path, dict]:  # fmt: skip
    """Final sampled and greedy evaluation, samples.jsonl, the model, then (last) summary.json.

    With ``policy`` (the stage's :class:`PolicyModel`, whose ``model`` is ``model``) it saves the policy its
    way: on the LoRA path the adapter and the merged model."""
    from rewardlab.audit.policy_eval import describe_metrics, evaluate_policy
    from rewardlab.policies.models import save_model
    from rewardlab.utils import write_jsonl

    final, samples = evaluate_policy(model, tokenizer, task, held_out, max_new_tokens=max_new_tokens, seed=0)
    greedy, _ = evaluate_policy(model, tokenizer, task, held_out, max_new_tokens=max_new_tokens, greedy=True)
    run.check_health(
        {f"final/{k}": v for k, v in final.items()}, -1
    )  # a parse rate fallen to 0 is a collapse
    write_jsonl(run.dir / "samples.jsonl", [s.to_dict() for s in samples])
    out = (
        policy.save(tokenizer, run.dir / "model")
        if policy is not None
        else save_model(model, tokenizer, run.dir / "model")
    )
    run.write_json("summary.json", {"sampled": final, "greedy": greedy, **extra, "seconds": run.elapsed})
    run.info(f"{describe_metrics(task, final)}; saved {run.final / 'model'} in {run.elapsed:.0f}s")
    return out, final


def label_source(cfg: PipelineConfig, task: Task, seed: int) -> Rater | LabelFile:
    """The arm's feedback source (``label.source``), named after the arm."""
    return make_source(cfg.label.source, task=task, seed=seed, name=cfg.arm_name, rater=cfg.label.rater,
                       file=cfg.label.file, human=cfg.label.human)  # fmt: skip
