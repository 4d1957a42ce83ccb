"""The audit during optimization: proxy vs gold vs KL on a fixed held-out prompt set.

At a fixed cadence an optimizer calls :func:`audit_policy`. It samples one response per held-out
prompt from the current policy (as it is deployed: temperature sampling), scores each with the proxy
and the hidden gold, measures KL(policy || reference) with the three estimators k1, k2, k3 (summed over
response tokens, averaged over prompts), and records the task's behaviours (sycophancy on arithmetic, length) and the parts of
gold the task declares (accuracy, length, sycophancy, confidence on arithmetic) so a loss of gold can be
attributed. A task without gold gets the same rows without the gold columns.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rewardlab.audit.policy_eval import ScoredSample, describe_metrics, gold_parts, score_responses, summarize
from rewardlab.config import AuditEvalsConfig
from rewardlab.evals.run import ScheduledEvals
from rewardlab.losses import kl_estimators, masked_sum, selective_log_softmax
from rewardlab.policies.sampling import SampleBatch, encode_prompts, float32_weights, sample
from rewardlab.policies.tokenizer import decode_completion
from rewardlab.rewards.proxy import Proxy
from rewardlab.tasks.base import Task
from rewardlab.utils import length_sorted_batches, write_jsonl


def position_ids_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Positions that start at 0 on the first real token of each left-padded row."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def response_logprobs(
    model: torch.nn.Module,
    batch: SampleBatch,
    temperature: float = 1.0,
    with_entropy: bool = False,
    rows: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs [B,T] of the response tokens under ``model`` (logits / temperature), 0 on padding; entropy
    optional (0 on the padding columns a chunk trims).

    Computed over length-sorted chunks of ``rows`` rows, each without its padding columns
    (:meth:`SampleBatch.select`): the same values up to float rounding, with less compute on padding
    (an audit batch of 384 samples is a third padding in one block; 0.43 s vs 0.23 s here, one thread).
    """
    logp = torch.zeros(batch.response_ids.shape, device=batch.response_ids.device)
    ent = torch.zeros_like(logp) if with_entropy else None
    lengths = (batch.prompt_mask.sum(dim=1) + batch.response_mask.sum(dim=1)).tolist()
    for chunk in length_sorted_batches(lengths, rows):
        idx = torch.tensor(chunk, device=logp.device)
        part = batch.select(idx, trim=True)
        lp, en = _response_logprobs(model, part, temperature, with_entropy)
        logp[idx, : lp.shape[1]] = lp
        if ent is not None and en is not None:
            ent[idx, : en.shape[1]] = en
    return logp, ent


def _response_logprobs(
    model: torch.nn.Module, batch: SampleBatch, temperature: float, with_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`response_logprobs` of one block."""
    ids, mask = batch.input_ids, batch.attention_mask
    out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask))
    p = batch.prompt_ids.shape[1]
    logits = out.logits[:, p - 1 : -1].float() / temperature
    logp = selective_log_softmax(logits, batch.response_ids)
    ent = None
    if with_entropy:
        from rewardlab.losses import entropy_from_logits

        ent = entropy_from_logits(logits)
    return logp * batch.response_mask, ent


@dataclass
class AuditSpec:
    """What the audit measures on: the task's held-out items, how the policy is sampled there (as deployed:
    temperature sampling, ``max_new_tokens``), the KL estimator on the x-axis, how many samples are kept.

    ``prompt_transform`` (e.g. prefixing a reward token, for reward-conditioned policies) changes only
    what the *policy* is prompted with: the reference's log-probs are taken on the plain prompt, so the
    KL is ``KL(π(·|transform(x)) || π_ref(·|x))``, and the proxy and gold score the plain prompt.
    """

    task: Task
    problems: Sequence[Any]
    max_new_tokens: int
    seed: int
    kl_estimator: str = "k1"
    temperature: float = 1.0
    samples_to_save: int = 128
    prompt_transform: Callable[[str], str] | None = None
    batch_size: int = 512
    #: Behaviour evaluations run at some audit rows (``eval/<set>`` columns); ``None``: off.
    evals: ScheduledEvals | None = None


@torch.no_grad()
def audit_policy(policy: PreTrainedModel, ref: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 reward_model: Proxy, spec: AuditSpec, seed: int) -> tuple[dict[str, Any], list[ScoredSample]]:  # fmt: skip
    """One audit row (proxy, gold, KL k1/k2/k3, behavior, gold parts) and the scored samples, sampled with
    ``seed`` on ``spec``'s items."""
    task, problems, batch_size, temperature = spec.task, spec.problems, spec.batch_size, spec.temperature
    max_new_tokens, prompt_transform, kl_estimator = (
        spec.max_new_tokens,
        spec.prompt_transform,
        spec.kl_estimator,
    )
    was_training = policy.training
    policy.eval()
    gen = torch.Generator().manual_seed(seed)
    device = next(policy.parameters()).device
    responses: list[str] = []
    kl_sums: dict[str, list[float]] = {"k1": [], "k2": [], "k3": []}
    for i in range(0, len(problems), batch_size):
        texts = [task.prompt(p) for p in problems[i : i + batch_size]]
        policy_texts = [prompt_transform(t) for t in texts] if prompt_transform else texts
        ids, mask = encode_prompts(tokenizer, policy_texts, max_new_tokens)
        b = sample(policy, ids.to(device), mask.to(device), max_new_tokens=max_new_tokens,
                   eos_token_id=int(tokenizer.eos_token_id), pad_token_id=int(tokenizer.pad_token_id),  # type: ignore[arg-type]
                   temperature=temperature, generator=gen)  # fmt: skip
        # the sampler's log-probs of its own tokens: a float32 policy's forward would give them up to rounding
        logp = b.logprobs if float32_weights(policy) else response_logprobs(policy, b, temperature)[0]
        ref_b = b
        if prompt_transform is not None:
            ref_ids, ref_mask = encode_prompts(tokenizer, texts, max_new_tokens)
            ref_b = dataclasses.replace(b, prompt_ids=ref_ids.to(device), prompt_mask=ref_mask.to(device))
        ref_logp, _ = response_logprobs(ref, ref_b, temperature)
        for name, kl in kl_estimators(logp, ref_logp).items():
            kl_sums[name].extend(masked_sum(kl, b.response_mask, dim=1).tolist())
        responses.extend(decode_completion(tokenizer, r.tolist()) for r in b.response_ids.cpu())
    samples = score_responses(task, problems, responses, reward_model)
    row: dict[str, Any] = summarize(task, problems, samples)
    row.update(gold_parts(samples, task.info.gold_parts))
    for name, vals in kl_sums.items():
        row[f"kl/{name}"] = float(np.mean(vals))
    row["kl/estimator"] = kl_estimator
    row["kl/sqrt"] = math.sqrt(max(0.0, row[f"kl/{kl_estimator}"]))
    if was_training:
        policy.train()
    return row, samples


def scheduled_evals(config: AuditEvalsConfig) -> ScheduledEvals | None:
    """The behaviour evaluations of a config's ``audit_evals`` section (``None`` when it names no sets)."""
    c = config
    return ScheduledEvals.from_config(c.sets, c.limit, c.every, c.data_dir, c.batch_size, c.max_new_tokens)


def save_samples(path: Path, samples: Sequence[ScoredSample], limit: int | None = None) -> None:
    write_jsonl(path, [s.to_dict() for s in (samples[:limit] if limit else samples)])


class AuditLog:
    """The audit of one optimizer run: ``audit.jsonl`` (one row per audit), ``samples/step_<N>.jsonl``.

    Every step-based optimizer (PPO, RLOO, GRPO, DPO, offline methods) writes through this, so the report
    reads them all the same way. ``extra`` fields (e.g. ``kl_coef``, ``round``) are added to the row.
    """

    def __init__(self, run: Any, reference: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, proxy: Proxy,
                 spec: AuditSpec) -> None:  # fmt: skip
        self.run, self.ref, self.tok, self.rm, self.spec = run, reference, tokenizer, proxy, spec
        self.task = spec.task
        self.rows: list[dict[str, Any]] = []
        (run.dir / "samples").mkdir(exist_ok=True)
        (run.dir / "audit.jsonl").write_text("")

    def __call__(self, policy: PreTrainedModel, step: int, **extra: Any) -> dict[str, Any]:
        row, samples = audit_policy(
            policy, self.ref, self.tok, self.rm, self.spec, seed=self.spec.seed * 7 + step
        )
        row = {"step": step, **extra, **row}
        evals = self.spec.evals
        if evals is not None and evals.due(len(self.rows)):
            row.update(evals(policy, self.tok))
        self.rows.append(row)
        self.run.write_json("audit.json", self.rows)
        with (self.run.dir / "audit.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        save_samples(self.run.dir / "samples" / f"step_{step}.jsonl", samples, self.spec.samples_to_save)
        if hasattr(self.run, "check_health"):  # a parse rate falling to 0 is a collapse, said loudly
            self.run.check_health(row, step)
        self.run.info(f"audit step {step}: proxy {row['proxy/mean']:+.3f} KL {row['kl/' + self.spec.kl_estimator]:.2f}; "
                      f"{describe_metrics(self.task, row)}")  # fmt: skip
        return row
