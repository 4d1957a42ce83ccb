"""Offline RLHF: one dataset sampled and scored once, then a weighted-likelihood trainer.

Filtered MLE, reward-weighted regression, reward-conditioned training (Hu et al. 2023, "Aligning
Language Models with Offline Learning from Human Feedback") and A-LoL (Baheti et al. 2024) never
sample during training. They share:

* :func:`build_offline_dataset` - (prompt, completion) pairs scored by the **proxy** (never by gold),
  with a Monte-Carlo estimate of the reference policy's value ``V_ref(x)`` for each prompt;
  :func:`save_offline_dataset` / :func:`load_offline_dataset` cache it in the run folder under a key
  of the models' and settings' hashes (:func:`fingerprint`);
* control tokens (:func:`add_control_tokens`): new special tokens (``<r0>``..``<rK-1>``, ``<good>``,
  ``<bad>``) appended to the vocabulary (existing ids unchanged) that the policy reads in its prompt
  (:func:`condition_prompt`) but can never emit (:func:`block_tokens`), as in Korbak et al. 2023;
* :func:`train_offline` - the loop: length-bucketed completion-only batches (``collate_lm``), a
  per-method loss of the per-token log-probs (:func:`weighted_loss`, :func:`alol_objective`, built on
  the pure functions of :mod:`rewardlab.losses`), the audit at step 0 and every ``eval_every`` steps,
  training-state checkpoints for ``--resume``, and data parallelism like the other trainers;
* pretraining with human feedback (Korbak et al. 2023): :func:`phf_threshold`, :func:`phf_batch`
  (corpus documents tagged ``<good>``/``<bad>`` by a score) and :func:`evaluate_conditions`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rewardlab.audit.policy_eval import generate_responses, score_responses, summarize
from rewardlab.audit.tracker import AuditLog
from rewardlab.config import OptimConfig
from rewardlab.distributed import batch_share, make_accelerator, reduce_sums
from rewardlab.losses import ALoLVariant, alol_loss, selective_log_softmax, weighted_nll
from rewardlab.optimize.lm import IGNORE, Example, collate_lm
from rewardlab.policies.models import load_causal_lm, load_tokenizer
from rewardlab.policies.tokenizer import Prompt, encode_examples
from rewardlab.runs import Run, advance
from rewardlab.tasks.base import Task, TextSampler
from rewardlab.training import BatchOrder, Cadence, Trainee, bucket_batches, make_optimizer
from rewardlab.utils import RewardlabError, atomic_write_text, read_jsonl, write_jsonl

ScoreFn = Callable[[Sequence[str], Sequence[str]], Sequence[float]]
#: ``loss_fn(logp [B,T], mask [B,T], indices of the batch's examples) -> (loss, stats)``
LossFn = Callable[[Tensor, Tensor, Sequence[int]], tuple[Tensor, dict[str, Tensor]]]
#: The model config field that lists a policy's control tokens (re-blocked on load).
CONTROL_TOKENS_FIELD = "rewardlab_control_tokens"


# ------------------------------------------------------------------------------------------ dataset
@dataclass(frozen=True)
class OfflineSample:
    """One scored sample of the offline dataset.

    ``proxy`` is the reward model's score of (prompt, completion); ``value`` is ``V_ref(x)``, the mean
    proxy score of independent reference samples for the same prompt; ``group`` numbers the prompt
    (samples of one prompt share it); ``source`` is ``"policy"`` (sampled) or ``"labels"`` (a
    completion of the arm's labelled pairs).
    """

    prompt: str
    completion: str
    proxy: float
    value: float
    group: int
    source: str

    @property
    def advantage(self) -> float:
        """A-LoL's advantage ``A = R(x, y) - V_ref(x)``."""
        return self.proxy - self.value

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sample_completions(
    policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    k: int,
    *,
    temperature: float,
    max_new_tokens: int,
    generator: torch.Generator,
    batch_size: int = 1024,
) -> list[str]:
    """``k`` sampled completions per prompt, prompt-major (``out[i*k + j]`` answers ``prompts[i]``)."""
    repeated = [p for p in prompts for _ in range(k)]
    return generate_responses(policy, tokenizer, repeated, max_new_tokens=max_new_tokens,
                              temperature=temperature, batch_size=batch_size, generator=generator)  # fmt: skip


def reference_values(
    reference: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    score_fn: ScoreFn,
    prompts: Sequence[str],
    k: int,
    *,
    temperature: float,
    max_new_tokens: int,
    generator: torch.Generator,
) -> list[float]:
    r"""Monte-Carlo value of the reference policy: ``V_ref(x) = (1/k) Σ_j R(x, y_j)``, ``y_j ~ π_ref(·|x)``.

    A-LoL's baseline is the reference's expected reward for the prompt. The paper fits a value head
    on the frozen reference by regression on its samples' rewards; with a fixed reference and a cheap
    sampler, the sample mean of ``k`` fresh reference samples estimates the same quantity without
    function approximation, and, drawn independently of the training completion, it leaves the
    advantage unbiased.
    """
    completions = sample_completions(reference, tokenizer, prompts, k, temperature=temperature,
                                     max_new_tokens=max_new_tokens, generator=generator)  # fmt: skip
    scores = torch.tensor([float(s) for s in score_fn([p for p in prompts for _ in range(k)], completions)])
    return scores.view(len(prompts), k).mean(dim=1).tolist()


def build_offline_dataset(
    pairs: Sequence[tuple[str, str, str]],
    score_fn: ScoreFn,
    value_fn: Callable[[Sequence[str]], Sequence[float]],
) -> list[OfflineSample]:
    """Score ``(prompt, completion, source)`` pairs with the proxy and attach ``V_ref`` of each prompt.

    Prompts are grouped by text, in order of first appearance; ``value_fn`` is called once with the
    distinct prompts (e.g. :func:`reference_values`).
    """
    if not pairs:
        raise RewardlabError("offline dataset: no (prompt, completion) pairs to score")
    groups: dict[str, int] = {}
    for p, _, _ in pairs:
        groups.setdefault(p, len(groups))
    prompts = list(groups)
    values = [float(v) for v in value_fn(prompts)]
    if len(values) != len(prompts):
        raise RewardlabError(
            f"offline dataset: value_fn gave {len(values)} values for {len(prompts)} prompts"
        )
    scores = [float(s) for s in score_fn([p for p, _, _ in pairs], [c for _, c, _ in pairs])]
    return [OfflineSample(p, c, s, values[groups[p]], groups[p], src)
            for (p, c, src), s in zip(pairs, scores, strict=True)]  # fmt: skip


def fingerprint(*parts: Path | str | float | int | None) -> str:
    """A sha256 over settings and over the bytes of every file under each given folder/file path.

    The cache key of a dataset: a change of the policy, the reward model or a setting changes it.
    """
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            files = sorted(p for p in part.rglob("*") if p.is_file()) if part.is_dir() else [part]
            for f in files:
                h.update(str(f.relative_to(part) if part.is_dir() else f.name).encode())
                with f.open("rb") as fh:
                    for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                        h.update(chunk)
        else:
            h.update(json.dumps(part).encode())
        h.update(b"\x00")
    return h.hexdigest()


def save_offline_dataset(
    folder: Path, samples: Sequence[OfflineSample], key: str, info: dict[str, Any]
) -> None:
    """``data.jsonl`` then ``meta.json`` (with the key), each written atomically; meta last = complete."""
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / "data.jsonl", [s.to_dict() for s in samples])
    atomic_write_text(
        folder / "meta.json", json.dumps({"key": key, "samples": len(samples), **info}, indent=2)
    )


def load_offline_dataset(folder: Path, key: str | None = None) -> list[OfflineSample] | None:
    """The cached dataset, or ``None`` when there is none or its key differs from ``key``."""
    meta_path, data_path = folder / "meta.json", folder / "data.jsonl"
    if not (meta_path.is_file() and data_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise RewardlabError(f"{meta_path}: malformed JSON ({e.msg})") from None
    if key is not None and meta.get("key") != key:
        return None
    out = []
    for i, row in enumerate(read_jsonl(data_path), 1):
        try:
            out.append(OfflineSample(str(row["prompt"]), str(row["completion"]), float(row["proxy"]),
                                     float(row["value"]), int(row["group"]), str(row["source"])))  # fmt: skip
        except (KeyError, TypeError, ValueError) as e:
            raise RewardlabError(f"{data_path}:{i}: bad offline sample ({e!r})") from None
    if len(out) != meta.get("samples"):
        return None
    return out


def split_by_group(samples: Sequence[OfflineSample], eval_fraction: float) -> tuple[list[int], list[int]]:
    """Indices of (train, eval) samples; the first ``eval_fraction`` of the prompts (groups) are eval."""
    n_groups = 1 + max(s.group for s in samples)
    n_eval = max(1, int(n_groups * eval_fraction)) if n_groups > 1 else 0
    train = [i for i, s in enumerate(samples) if s.group >= n_eval]
    evals = [i for i, s in enumerate(samples) if s.group < n_eval]
    return train, evals


# ----------------------------------------------------------------------------------- control tokens
def add_control_tokens(
    tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel, tokens: Sequence[str], seed: int = 0
) -> list[int]:
    """Append ``tokens`` as special tokens, grow the embeddings, block them as outputs; return their ids.

    Existing token ids are unchanged (checked). The new input-embedding rows are drawn from a normal
    with the per-dimension mean and std of the existing rows (seeded), so the new tokens start
    distinct and on the scale of the others. The tokens are recorded in the model config
    (``rewardlab_control_tokens``) so :func:`load_policy` re-blocks them after ``from_pretrained``.
    """
    before = dict(tokenizer.get_vocab())
    missing = [t for t in tokens if t not in before]
    tokenizer.add_tokens(list(missing), special_tokens=True)
    after = tokenizer.get_vocab()
    if any(after[t] != i for t, i in before.items()):
        raise RewardlabError("adding control tokens changed existing token ids")
    ids = [int(after[t]) for t in tokens]
    emb = model.get_input_embeddings().weight
    old = emb.shape[0]
    if len(tokenizer) > old:
        with torch.no_grad():
            mean, std = emb.mean(dim=0), emb.std(dim=0)
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            new = model.get_input_embeddings().weight
            noise = torch.randn(new.shape[0] - old, new.shape[1], generator=g).to(new.device, new.dtype)
            new[old:] = mean + std * noise
            out = model.get_output_embeddings()
            if out is not None and out.weight is not new:  # untied head: the new rows are never used
                out.weight[old:] = 0.0
    known = list(getattr(model.config, CONTROL_TOKENS_FIELD, None) or [])
    setattr(model.config, CONTROL_TOKENS_FIELD, list(dict.fromkeys([*known, *tokens])))
    block_tokens(model, [int(after[t]) for t in getattr(model.config, CONTROL_TOKENS_FIELD)])
    return ids


def block_tokens(model: PreTrainedModel, ids: Sequence[int]) -> None:
    """Make ``ids`` impossible outputs: their logits are set to ``-inf`` by a hook on the output layer.

    Conditional training's control tokens are read, never written (Korbak et al. 2023 block them at
    inference). The hook acts in every forward (sampling, log-probs, training: a completion never
    contains a control token, so its loss is unchanged); ``generation_config.suppress_tokens`` does
    the same for ``model.generate``. Calling it again replaces the previous hook.
    """
    head = model.get_output_embeddings()
    if head is None:
        raise RewardlabError(f"{type(model).__name__} has no output embedding layer to block tokens on")
    old = getattr(head, "_rewardlab_block_hook", None)
    if old is not None:
        old.remove()
    index = torch.tensor(sorted(set(int(i) for i in ids)), dtype=torch.long)

    def hook(_module: torch.nn.Module, _inputs: Any, logits: Tensor) -> Tensor:
        return logits.index_fill(-1, index.to(logits.device), float("-inf"))

    head._rewardlab_block_hook = head.register_forward_hook(hook)  # type: ignore[assignment]
    model.generation_config.suppress_tokens = index.tolist()


def load_policy(path: Path | str) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    """Tokenizer and causal LM from ``path``, with its control tokens (if any) blocked again."""
    tok, model = load_tokenizer(path), load_causal_lm(path)
    tokens = getattr(model.config, CONTROL_TOKENS_FIELD, None)
    if tokens:
        vocab = tok.get_vocab()
        missing = [t for t in tokens if t not in vocab]
        if missing:
            raise RewardlabError(f"{path}: control tokens {missing} are not in the saved tokenizer")
        block_tokens(model, [vocab[t] for t in tokens])
    return tok, model


def condition_prompt(prompt: Prompt, token: str) -> Prompt:
    """The prompt with a control token in front of the (first) user message: ``"<r3> what is ..."``."""
    if isinstance(prompt, str):
        return f"{token} {prompt}"
    messages = [dict(m) for m in prompt]
    for m in messages:
        if m.get("role") == "user":
            m["content"] = f"{token} {m['content']}"
            return messages
    raise RewardlabError("condition_prompt: the conversation has no user message")


def reward_token(k: int) -> str:
    """The prompt token of reward-quantile bin ``k`` (``<r0>`` is the lowest)."""
    return f"<r{k}>"


# ------------------------------------------------------------------------------------------ training
def completion_logprobs(model: torch.nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Per-token log-probs ``[B, L-1]`` of the labelled (completion) tokens of a ``collate_lm`` batch.

    Returns ``(logp, mask)``; ``logp`` is 0 where ``mask`` is False (prompt and padding).
    """
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    mask = labels != IGNORE
    logp = selective_log_softmax(logits.float(), labels.clamp(min=0))
    return torch.where(mask, logp, torch.zeros_like(logp)), mask


@torch.no_grad()
def token_logprobs(
    model: torch.nn.Module, examples: Sequence[Example], pad_id: int, batch_size: int = 256
) -> list[Tensor]:
    """Per-token log-probs of each example's completion (a 1-D tensor per example), e.g. under π_ref."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: list[Tensor] = []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        batch = {k: v.to(device) for k, v in collate_lm(chunk, pad_id, completion_only=True).items()}
        logp, mask = completion_logprobs(model, batch)
        out.extend(row[m].cpu() for row, m in zip(logp, mask))
    model.train(was_training)
    return out


def weighted_loss(weights: Tensor) -> LossFn:
    """Loss of filtered MLE (0/1 weights), RWR (exp-reward weights) and reward-conditioned SFT (all 1)."""

    def loss_fn(logp: Tensor, mask: Tensor, idx: Sequence[int]) -> tuple[Tensor, dict[str, Tensor]]:
        w = weights[list(idx)].to(logp.device)
        return weighted_nll(logp, mask, w), {"train/weight": w.mean()}

    return loss_fn


def alol_objective(
    advantages: Tensor, ref_logps: Sequence[Tensor], clip: float, variant: ALoLVariant
) -> LossFn:
    """A-LoL's loss (:func:`rewardlab.losses.alol_loss`) with the examples' precomputed reference log-probs."""

    def loss_fn(logp: Tensor, mask: Tensor, idx: Sequence[int]) -> tuple[Tensor, dict[str, Tensor]]:
        ref = torch.zeros_like(logp)
        if variant != "ref_free":
            ref = ref.masked_scatter(mask, torch.cat([ref_logps[i] for i in idx]).to(logp.device, logp.dtype))
        return alol_loss(logp, ref, mask, advantages[list(idx)].to(logp.device), clip, variant)

    return loss_fn


@torch.no_grad()
def evaluate_loss(
    model: torch.nn.Module, examples: Sequence[Example], loss_fn: LossFn, pad_id: int, batch_size: int = 256
) -> float:
    """``loss_fn`` over ``examples`` in batches, averaged with the batches' completion-token counts."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    for i in range(0, len(examples), batch_size):
        batch = {k: v.to(device) for k, v in collate_lm(examples[i : i + batch_size], pad_id, True).items()}
        logp, mask = completion_logprobs(model, batch)
        loss, _ = loss_fn(logp, mask, range(i, i + logp.shape[0]))
        n = int(mask.sum())
        total += float(loss) * n
        tokens += n
    model.train(was_training)
    return total / max(tokens, 1)


@dataclass
class LMBatches:
    """Length-bucketed batches of (prompt, completion) examples, epochs reshuffled from ``random.Random(seed)``."""

    examples: Sequence[Example]
    pad_id: int
    batch_size: int
    seed: int


def train_offline(policy: PreTrainedModel, batches: LMBatches, loss_fn: LossFn, optim: OptimConfig, run: Run,
                  cadence: Cadence, *, audit: AuditLog | None = None,
                  evaluate: Callable[[PreTrainedModel, int], dict[str, float]] | None = None,
                  accelerator: Accelerator | None = None) -> PreTrainedModel:  # fmt: skip
    """``cadence.steps`` optimizer steps of ``loss_fn`` on ``batches``.

    At step 0, every ``cadence.eval_every`` steps and at the end, on the main process, ``evaluate(model,
    step)`` (e.g. the held-out loss) is logged and ``audit(model, step, **those metrics)`` writes an audit
    row. A NaN/inf loss aborts with the step. With several processes each trains on its share of the
    same global batch (:func:`~rewardlab.distributed.batch_share`), its loss scaled to the global token
    mean; the logged loss and log-prob are global, the method's stats are the mean over processes of
    their shards' values. With ``cadence.checkpoint``, weights, optimizer, schedule, data order, RNGs,
    the token and epoch counts and the audit rows are saved and resumed.
    """
    examples = batches.examples
    if not examples:
        raise RewardlabError(f"{run.stage}: no training examples (all weights were 0?)")
    # 1. optimizer, data order, and the training state to resume from
    acc = accelerator or make_accelerator()
    world = acc.num_processes
    opt, sched = make_optimizer(policy, optim, cadence.steps)
    model, opt = acc.prepare(policy, opt)
    trainee = Trainee(model, opt, sched, acc)
    lengths = [len(p) + len(c) for p, c in examples]
    epoch = [0]

    def make_epoch(rng: random.Random) -> list[list[int]]:
        epoch[0] += 1
        return bucket_batches(lengths, batches.batch_size, rng)

    order = BatchOrder(make_epoch, random.Random(batches.seed))
    tokens, start, ckpt = 0, 0, cadence.checkpoint
    if ckpt is not None:
        ckpt.total_steps = cadence.steps
        ckpt.track(model=model, optimizer=opt, scheduler=sched, data=order)
        start = ckpt.restore()
        if start:
            tokens, epoch[0] = int(ckpt.extra["tokens"]), int(ckpt.extra["epoch"])
            if audit is not None:
                audit.rows = list(ckpt.extra["audit_rows"])

    def run_eval(step: int) -> None:
        if acc.is_main_process:
            unwrapped = acc.unwrap_model(model)
            metrics = evaluate(unwrapped, step) if evaluate is not None else {}
            if metrics:
                run.log_metrics(metrics, step)
            if audit is not None:
                audit(unwrapped, step, **metrics)
        model.train()

    cadence = dataclasses.replace(cadence, start=start, evaluate=run_eval,
                                  checkpoint_extra=lambda: {"audit_rows": audit.rows if audit else []})  # fmt: skip
    if start == 0:
        run_eval(0)
    model.train()
    with run.progress(cadence.steps, f"{run.stage} steps") as prog:
        if start:
            advance(prog, n=start)
        for step in cadence.range():
            # 2. this process's share of the next global batch, and the method's loss on it
            idx = order.next()
            share = batch_share(acc, len(idx))
            local = idx[share.rows] if world > 1 else idx
            batch = {
                k: v.to(acc.device)
                for k, v in collate_lm([examples[j] for j in local], batches.pad_id, True).items()
            }
            logp, mask = completion_logprobs(model, batch)
            loss, stats = loss_fn(logp, mask, local)
            n_local, n_global = int(mask.sum()), sum(len(examples[j][1]) for j in idx)
            real = share.real
            loss_sum, logp_sum = (
                float(loss.detach()) * n_local * real,
                float(logp.detach()[mask].sum()) * real,
            )
            if world > 1:  # this process's part of the global token mean; DDP averages the gradients
                loss = loss * (n_local * world / max(n_global, 1) if real else 0.0)
                loss_sum, logp_sum, *stat_sums = reduce_sums(
                    acc, [loss_sum, logp_sum, *map(float, stats.values())]
                )
                stats = {k: torch.tensor(v / world) for k, v in zip(stats, stat_sums)}
            # 3. the update, the metrics, evaluation and checkpoint when due
            gnorm = trainee.update(loss, optim.max_grad_norm, step, run.stage)
            tokens += n_global
            metrics: dict[str, Any] = {
                "train/loss": loss_sum / max(n_global, 1),
                "train/logp": logp_sum / max(n_global, 1),
                "train/grad_norm": gnorm,
                "train/lr": sched.get_last_lr()[0],
                "train/epoch": epoch[0],
                "train/tokens": tokens,
                **{k: float(v) for k, v in stats.items()},
                "time/elapsed": run.elapsed,
            }
            run.log_metrics(metrics, step)
            cadence.after_step(step, model, tokens=tokens, epoch=epoch[0])
            advance(prog, f"loss {metrics['train/loss']:.3f}")
    model.eval()
    return acc.unwrap_model(model)


def quantile_summary(values: Sequence[float]) -> dict[str, float]:
    """Mean, std and quartiles of ``values`` (for the dataset summary)."""
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    if t.numel() == 0:
        return {"n": 0}
    q = torch.quantile(t, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64)).tolist()
    std = float(t.std()) if t.numel() > 1 else 0.0
    return {"n": int(t.numel()), "mean": float(t.mean()), "std": std if math.isfinite(std) else 0.0,
            "min": q[0], "q25": q[1], "median": q[2], "q75": q[3], "max": q[4]}  # fmt: skip


# --------------------------------------------------------------------------- pretraining with feedback
GOOD, BAD = "<good>", "<bad>"


def phf_threshold(
    task: Task,
    score_fn: ScoreFn,
    corpus: TextSampler,
    n_docs: int,
    good_fraction: float,
    seed: int,
) -> float:
    """The score above which a corpus document is tagged ``<good>``: the ``1 - good_fraction`` quantile
    of ``n_docs`` calibration documents (fixed before training, like the fixed thresholds of Korbak et al.)."""
    rng = random.Random(seed)
    problems = [task.sample_item(rng) for _ in range(n_docs)]
    docs = [corpus(p, rng) for p in problems]
    scores = torch.tensor(
        [float(s) for s in score_fn([task.prompt(p) for p in problems], docs)], dtype=torch.float64
    )
    return float(torch.quantile(scores, 1.0 - good_fraction))


def phf_batch(
    task: Task,
    tokenizer: PreTrainedTokenizerBase,
    score_fn: ScoreFn,
    corpus: TextSampler,
    *,
    batch_size: int,
    threshold: float,
    rng: random.Random,
) -> tuple[dict[str, Tensor], float]:
    """One conditional-training batch: fresh corpus documents, each tagged by its score, and the share tagged good.

    A document is ``<user> <tag> {prompt} <assistant> {response} <eos>``; the loss is on every token
    (pretraining) except the tag itself, which is read, never predicted (the control tokens are
    blocked as outputs).
    """
    problems = [task.sample_item(rng) for _ in range(batch_size)]
    docs = [corpus(p, rng) for p in problems]
    scores = [float(s) for s in score_fn([task.prompt(p) for p in problems], docs)]
    tags = [GOOD if s >= threshold else BAD for s in scores]
    examples = encode_examples(
        tokenizer, [condition_prompt(task.prompt(p), t) for p, t in zip(problems, tags)], docs
    )
    batch = collate_lm(examples, int(tokenizer.pad_token_id), completion_only=False)  # type: ignore[arg-type]
    control = torch.tensor(tokenizer.convert_tokens_to_ids([GOOD, BAD]))
    batch["labels"] = batch["labels"].masked_fill(torch.isin(batch["labels"], control), IGNORE)
    return batch, sum(t == GOOD for t in tags) / len(tags)


def evaluate_conditions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    problems: Sequence[Any],
    score_fn: ScoreFn | None,
    conditions: dict[str, str | None],
    *,
    max_new_tokens: int,
    seed: int,
) -> dict[str, float]:
    """Sample on ``problems`` under each condition (a control token, or ``None`` for the plain prompt).

    Returns ``{"<condition>/<metric>": value}`` with the proxy (``score_fn``, on the plain prompt),
    gold, accuracy, sycophancy and length of the samples.
    """
    out: dict[str, float] = {}
    for name, token in conditions.items():
        prompts = [condition_prompt(task.prompt(p), token) if token else task.prompt(p) for p in problems]
        responses = generate_responses(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                       generator=torch.Generator().manual_seed(seed))  # fmt: skip
        samples = score_responses(task, problems, responses, score_fn)
        out.update({f"{name}/{k}": v for k, v in summarize(task, problems, samples).items()})
    return out
