"""The DPO family's training machinery: pairs, shared-prompt packing, sequence log-probs, the
reference cache, the loss of a variant, the training loop and the implicit reward as a reward model.

Speed (CPU first, works on any device):

* **Shared-prompt packing** (:mod:`rewardlab.policies.packing`). A pair becomes ONE row
  ``prompt + chosen + rejected`` with a 4D attention mask: chosen tokens see the prompt and earlier
  chosen tokens, rejected tokens see the prompt and earlier rejected tokens (never the chosen), and
  the rejected positions restart at ``len(prompt)``. The prompt is encoded once per pair instead
  of twice, and the log-probs equal those of two separate sequences (a test checks it).
  ``packing: none`` is TRL's layout (2 rows).
* **Completion positions only.** The LM head runs only on the hidden states whose next token is a
  completion token (for Llama/Qwen/Mistral-type models; others compute full logits).
* **Length bucketing** (:func:`rewardlab.optimize.lm.bucket_batches`) keeps padding small.
* **Reference log-probs precomputed** once per (reference weights, data, layout) and cached on
  disk (:func:`cached_reference_logps`), so a step runs one forward and one backward of the policy.

Metrics use TRL's ``DPOTrainer`` names: ``loss``, ``rewards/chosen``, ``rewards/rejected``,
``rewards/margins``, ``rewards/accuracies``, ``logps/chosen``, ``logps/rejected``, ``grad_norm``,
``learning_rate`` (plus ``nll_loss`` with an NLL term).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from rewardlab.config import DPOConfig
from rewardlab.distributed import batch_share, reduce_sums
from rewardlab.feedback.records import Comparison
from rewardlab.kernels.cpu_linear import onednn_linears
from rewardlab.kernels.precision import training_linears
from rewardlab.losses import (
    PreferenceLoss,
    chosen_nll_loss,
    dpo_sigmoid_loss,
    hinge_dpo_loss,
    ipo_loss,
    modpo_loss,
    robust_dpo_loss,
    simpo_loss,
)
from rewardlab.policies.packing import pack_shared_prefix
from rewardlab.policies.tokenizer import Limits, encode_examples
from rewardlab.rewards.train import comparison_accuracies
from rewardlab.runs import Run, advance
from rewardlab.training import BatchOrder, Cadence, Trainee, bucket_batches
from rewardlab.utils import RewardlabError, length_sorted_batches

#: Bump when the packing or the log-prob computation changes, so stale caches are not reused.
CACHE_VERSION = 1
#: Model types whose logits are ``lm_head(last_hidden_state)`` exactly (no scaling or soft-capping),
#: so the head can be applied to the completion positions only.
_PLAIN_HEAD_MODEL_TYPES = frozenset({"llama", "qwen2", "qwen3", "mistral"})


# ----------------------------------------------------------------------------------------- pairs
@dataclass(frozen=True)
class PairExample:
    """One tokenized preference pair: the prompt once, each completion ending in EOS."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]

    @property
    def packed_length(self) -> int:
        return len(self.prompt) + len(self.chosen) + len(self.rejected)


def tokenize_comparisons(
    tokenizer: PreTrainedTokenizerBase, comps: Sequence[Comparison], limits: Limits | None = None
) -> list[PairExample]:
    """Prompt (chat-formatted when the tokenizer has a template) and the two completions, tokenized once and
    cut to ``limits`` (default: the model's positions, keeping the prompt's end)."""
    if not comps:
        raise RewardlabError("dpo: no comparisons to tokenize")
    prompts = [c.prompt for c in comps]
    ch = encode_examples(tokenizer, prompts, [c.chosen for c in comps], limits)
    rj = encode_examples(tokenizer, prompts, [c.rejected for c in comps], limits)
    # each side's prompt is a suffix of the same prompt (cut to fit its completion): share the shorter one
    return [
        PairExample(pc if len(pc) <= len(pr) else pr, c, r) for (pc, c), (pr, r) in zip(ch, rj, strict=True)
    ]


@dataclass
class PairBatch:
    """Model inputs for B pairs and where their completion tokens are scored.

    ``rows``/``cols`` index the output positions whose next token is a completion token, ``targets``
    those tokens, and ``owner`` the sequence each belongs to (pair i's chosen is i, its rejected B + i).
    """

    input_ids: Tensor
    attention_mask: Tensor  # [R, W] (packing none) or an additive [R, 1, W, W] float mask
    position_ids: Tensor
    rows: Tensor
    cols: Tensor
    targets: Tensor
    owner: Tensor
    chosen_lengths: Tensor
    rejected_lengths: Tensor

    @property
    def n_pairs(self) -> int:
        return int(self.chosen_lengths.shape[0])

    def to(self, device: torch.device | str) -> PairBatch:
        return PairBatch(**{k: v.to(device) for k, v in self.__dict__.items()})


def collate_pairs(
    examples: Sequence[PairExample],
    pad_id: int,
    packing: str = "shared_prompt",
    dtype: torch.dtype = torch.float32,
) -> PairBatch:
    """Right-padded inputs for ``examples``; ``shared_prompt``: one row per pair, ``none``: two."""
    if not examples:
        raise ValueError("collate_pairs: empty batch")
    b = len(examples)
    rows: list[int] = []
    cols: list[int] = []
    targets: list[int] = []
    owner: list[int] = []

    def score(row: int, sources: range | list[int], tokens: list[int], who: int) -> None:
        rows.extend([row] * len(tokens))
        cols.extend(sources)
        targets.extend(tokens)
        owner.extend([who] * len(tokens))

    if packing == "shared_prompt":
        packed = pack_shared_prefix([(e.prompt, e.chosen, e.rejected) for e in examples], pad_id, dtype)
        ids, pos, mask = packed.input_ids, packed.position_ids, packed.attention_mask
        for i, e in enumerate(examples):
            p, c, r = len(e.prompt), len(e.chosen), len(e.rejected)
            score(i, range(p - 1, p + c - 1), e.chosen, i)
            score(i, [p - 1, *range(p + c, p + c + r - 1)], e.rejected, b + i)
    elif packing == "none":
        seqs = [e.prompt + e.chosen for e in examples] + [e.prompt + e.rejected for e in examples]
        width = max(len(s) for s in seqs)
        ids = torch.full((2 * b, width), pad_id, dtype=torch.long)
        mask = torch.zeros((2 * b, width), dtype=torch.long)
        for j, s in enumerate(seqs):
            ids[j, : len(s)] = torch.tensor(s)
            mask[j, : len(s)] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        for i, e in enumerate(examples):
            p = len(e.prompt)
            score(i, range(p - 1, p + len(e.chosen) - 1), e.chosen, i)
            score(b + i, range(p - 1, p + len(e.rejected) - 1), e.rejected, b + i)
    else:
        raise ValueError(f"packing must be 'shared_prompt' or 'none', got {packing!r}")
    return PairBatch(
        input_ids=ids,
        attention_mask=mask,
        position_ids=pos,
        rows=torch.tensor(rows),
        cols=torch.tensor(cols),
        targets=torch.tensor(targets),
        owner=torch.tensor(owner),
        chosen_lengths=torch.tensor([len(e.chosen) for e in examples], dtype=torch.float32),
        rejected_lengths=torch.tensor([len(e.rejected) for e in examples], dtype=torch.float32),
    )


def _completion_logits(model: nn.Module, batch: PairBatch) -> Tensor:
    """Logits [N, V] at the scored positions; the LM head only runs there when the model allows it."""
    kwargs: dict[str, Any] = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
                              "position_ids": batch.position_ids, "use_cache": False}  # fmt: skip
    get_head = getattr(model, "get_output_embeddings", None)  # absent on DDP wrappers: full forward
    config = getattr(model, "config", None)
    decoder = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if (
        callable(get_head)
        and getattr(config, "model_type", None) in _PLAIN_HEAD_MODEL_TYPES
        and decoder is not None
    ):
        head = get_head()
        hidden = decoder(**kwargs).last_hidden_state
        return head(hidden[batch.rows, batch.cols])
    return model(**kwargs).logits[batch.rows, batch.cols]


def pair_logps(model: nn.Module, batch: PairBatch) -> tuple[Tensor, Tensor]:
    """Summed completion log-probs ``log π(y_w|x)``, ``log π(y_l|x)`` [B] of a batch of pairs."""
    logits = _completion_logits(model, batch).float()
    logp = logits.log_softmax(-1).gather(-1, batch.targets[:, None]).squeeze(-1)
    b = batch.n_pairs
    sums = torch.zeros(2 * b, dtype=logp.dtype, device=logp.device).index_add(0, batch.owner, logp)
    return sums[:b], sums[b:]


@torch.no_grad()
def compute_logps(
    model: nn.Module, examples: Sequence[PairExample], pad_id: int, *, packing: str = "shared_prompt",
    batch_size: int = 16, device: torch.device | str = "cpu",
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Chosen and rejected log-probs [N] of every example (in order), batched by length.

    Small batches are as fast on CPU and keep the peak memory low (2,000 pairs, 1M params:
    batch 256 took 13.8 s and peaked at 933 MiB RSS, batch 16 10.3 s and 471 MiB; 11M params:
    batch 64 131 s / 789 MiB, batch 16 123 s / 539 MiB).
    """
    was_training = model.training
    model.eval()
    chosen = torch.zeros(len(examples))
    rejected = torch.zeros(len(examples))
    with torch.autocast(torch.device(device).type, enabled=False), onednn_linears(model):  # float32 always
        for idx in length_sorted_batches([e.packed_length for e in examples], batch_size):
            batch = collate_pairs([examples[i] for i in idx], pad_id, packing).to(device)
            c, r = pair_logps(model, batch)
            chosen[idx], rejected[idx] = c.cpu(), r.cpu()
    model.train(was_training)
    return chosen, rejected


# ------------------------------------------------------------------------------ reference cache
def model_fingerprint(model: nn.Module) -> str:
    """sha256 of a model's parameters and buffers (names, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def data_fingerprint(examples: Sequence[PairExample]) -> str:
    """sha256 of the tokenized pairs, in order."""
    h = hashlib.sha256()
    for e in examples:
        h.update(json.dumps([e.prompt, e.chosen, e.rejected]).encode())
    return h.hexdigest()


def reference_cache_key(model: nn.Module, examples: Sequence[PairExample], packing: str) -> str:
    """The cache key of reference log-probs: reference weights, data, layout and the cache version."""
    raw = f"v{CACHE_VERSION}|{packing}|{model_fingerprint(model)}|{data_fingerprint(examples)}"
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


def cached_reference_logps(
    ref: nn.Module, examples: Sequence[PairExample], pad_id: int, cache_dir: Path | str | None, *,
    packing: str = "shared_prompt", device: torch.device | str = "cpu", batch_size: int = 16, write: bool = True,
) -> tuple[Tensor, Tensor, str, bool]:  # fmt: skip
    """Reference log-probs of ``examples``: read from ``cache_dir/ref_logps-<key>.pt`` or computed and written.

    Returns ``(chosen [N], rejected [N], key, hit)``. The key hashes the reference weights, the
    tokenized data and the layout, so a changed model or dataset never reuses a stale file. The
    file is written atomically (temp file, then rename). ``cache_dir=None`` computes without caching;
    ``write=False`` reads the cache but never writes it (the non-main processes of a data-parallel run).
    """
    key = reference_cache_key(ref, examples, packing)
    path = Path(cache_dir) / f"ref_logps-{key}.pt" if cache_dir is not None else None
    if path is not None and path.is_file():
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob.get("key") == key and blob["chosen"].shape[0] == len(examples):
            return blob["chosen"], blob["rejected"], key, True
    chosen, rejected = compute_logps(
        ref, examples, pad_id, packing=packing, batch_size=batch_size, device=device
    )
    if path is not None and write:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
        torch.save({"key": key, "chosen": chosen, "rejected": rejected}, tmp)
        os.replace(tmp, path)
    return chosen, rejected, key, False


# ------------------------------------------------------------------------------------- the loss
@dataclass
class PreferenceData:
    """Training (or evaluation) pairs with their reference log-probs and, for MODPO, the second reward."""

    examples: list[PairExample]
    ref_chosen: Tensor | None = None
    ref_rejected: Tensor | None = None
    second_chosen: Tensor | None = None
    second_rejected: Tensor | None = None

    def __len__(self) -> int:
        return len(self.examples)


def preference_loss(
    cfg: DPOConfig, policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor | None,
    ref_rejected: Tensor | None, chosen_lengths: Tensor, rejected_lengths: Tensor, *,
    modpo_weight: float | None = None, second_chosen: Tensor | None = None, second_rejected: Tensor | None = None,
) -> PreferenceLoss:  # fmt: skip
    """The per-pair loss of the configured variant (``cfg.loss``; MODPO when ``modpo_weight`` is given)."""
    if cfg.loss == "simpo" and modpo_weight is None:
        return simpo_loss(policy_chosen, policy_rejected, chosen_lengths, rejected_lengths, beta=cfg.beta,
                          gamma=cfg.simpo_gamma, label_smoothing=cfg.label_smoothing)  # fmt: skip
    if ref_chosen is None or ref_rejected is None:
        raise RewardlabError(f"dpo: loss {cfg.loss!r} needs reference log-probs")
    args = (policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    if modpo_weight is not None:
        if second_chosen is None or second_rejected is None:
            raise RewardlabError("modpo: the second reward of each side is missing")
        return modpo_loss(*args, second_chosen, second_rejected, beta=cfg.beta, weight=modpo_weight)
    if cfg.loss == "sigmoid":
        return dpo_sigmoid_loss(*args, beta=cfg.beta, label_smoothing=cfg.label_smoothing)
    if cfg.loss == "ipo":
        lengths = (chosen_lengths, rejected_lengths) if cfg.ipo_length_normalize else (None, None)
        return ipo_loss(*args, beta=cfg.beta, chosen_lengths=lengths[0], rejected_lengths=lengths[1])
    if cfg.loss == "robust":
        return robust_dpo_loss(*args, beta=cfg.beta, label_smoothing=cfg.label_smoothing)
    if cfg.loss == "hinge":
        return hinge_dpo_loss(*args, beta=cfg.beta)
    raise RewardlabError(f"dpo.loss: unknown variant {cfg.loss!r}")


def needs_reference(cfg: DPOConfig, modpo_weight: float | None = None) -> bool:
    return cfg.loss != "simpo" or modpo_weight is not None


def _take(t: Tensor | None, idx: list[int], device: torch.device) -> Tensor | None:
    return None if t is None else t[idx].to(device)


# ------------------------------------------------------------------------------------- training
def pair_order(data: PreferenceData, batch_size: int, seed: int) -> BatchOrder:
    """The resumable order of the training batches: length-bucketed epochs drawn from ``random.Random(seed)``."""
    lengths = [e.packed_length for e in data.examples]
    return BatchOrder(lambda rng: bucket_batches(lengths, batch_size, rng)[::-1], random.Random(seed))


@dataclass
class PairStream:
    """Where a DPO loop's batches come from: the pairs, their resumable order, the pad id to collate with."""

    data: PreferenceData
    order: BatchOrder
    pad_id: int


def train_dpo(trainee: Trainee, batches: PairStream, cfg: DPOConfig, run: Run, cadence: Cadence, *,
              reference: nn.Module | None = None, modpo_weight: float | None = None,
              stats: dict[str, Any] | None = None) -> dict[str, float]:  # fmt: skip
    """Optimizer steps ``cadence.start + 1 .. cadence.steps`` of the configured DPO variant; returns
    throughput stats (``stats`` continues them after a resume).

    Reference log-probs come from ``batches.data`` (precomputed) or, when it has none and the loss needs
    them, from a forward of ``reference`` per step. Every step logs TRL's metric names at the cadence's
    global step (plus ``cadence.log_extra``); a NaN/inf loss aborts naming the step.

    Data parallel (``torchrun``): every process draws the same global batch and trains on its share
    (:func:`~rewardlab.distributed.batch_share`) with the loss written as the global mean, so DDP's
    gradient average is the single-process gradient; metrics are all-reduced.
    """
    data, acc, policy = batches.data, trainee.acc, trainee.model
    if len(data) == 0:
        raise RewardlabError("dpo: no training pairs")
    live = needs_reference(cfg, modpo_weight) and data.ref_chosen is None
    if live and reference is None:
        raise RewardlabError("dpo: no reference log-probs and no reference model")
    pairs = float((stats or {}).get("pairs", 0.0))
    train_seconds = float((stats or {}).get("train_seconds", 0.0))
    policy.train()
    with training_linears(policy, reference), run.progress(cadence.steps, f"{run.stage} steps") as prog:
        if cadence.start:
            advance(prog, n=cadence.start)
        for step in cadence.range():
            t0 = time.perf_counter()
            # 1. this process's share of the next global batch
            global_idx = batches.order.next()
            share = batch_share(acc, len(global_idx))
            idx = global_idx[share.rows]
            batch = collate_pairs([data.examples[j] for j in idx], batches.pad_id, cfg.packing).to(acc.device)
            # 2. policy and reference log-probs of both completions
            pc, pr = pair_logps(policy, batch)
            if live:
                with torch.no_grad():
                    rc, rr = pair_logps(reference, batch)  # type: ignore[arg-type]
            else:
                rc, rr = _take(data.ref_chosen, idx, acc.device), _take(data.ref_rejected, idx, acc.device)
            # 3. the loss (and the optional NLL term) as this process's part of the global mean
            out = preference_loss(cfg, pc, pr, rc, rr, batch.chosen_lengths, batch.rejected_lengths,
                                  modpo_weight=modpo_weight, second_chosen=_take(data.second_chosen, idx, acc.device),
                                  second_rejected=_take(data.second_rejected, idx, acc.device))  # fmt: skip
            nll = chosen_nll_loss(pc, batch.chosen_lengths) if cfg.sft_weight > 0 else None
            loss = out.losses.sum() * share.scale
            if nll is not None:
                loss = loss + cfg.sft_weight * nll.sum() * share.scale
            # 4. the update
            global_step = cadence.global_step(step)
            gnorm = trainee.update(loss, cfg.optim.max_grad_norm, global_step, run.stage)
            train_seconds += time.perf_counter() - t0
            pairs += len(global_idx)
            # 5. TRL's metrics over the global batch, then evaluation and checkpoint when due
            m = step_metrics(out, pc, pr, nll, cfg.sft_weight, len(global_idx), acc, share.real)
            m.update({"grad_norm": gnorm, "learning_rate": trainee.sched.get_last_lr()[0],
                      "train/pairs_per_second": pairs / max(train_seconds, 1e-9),
                      "epoch": pairs / len(data), "time/elapsed": run.elapsed, **cadence.log_extra})  # fmt: skip
            run.log_metrics(m, global_step)
            cadence.after_step(step, policy, pairs=pairs, train_seconds=train_seconds)
            advance(prog, f"loss {m['loss']:.3f} margin {m['rewards/margins']:+.2f}")
    return {
        "pairs": pairs,
        "train_seconds": train_seconds,
        "pairs_per_second": pairs / max(train_seconds, 1e-9),
    }


def step_metrics(out: PreferenceLoss, pc: Tensor, pr: Tensor, nll: Tensor | None, sft_weight: float, n: int,
                 acc: Accelerator | None = None, real: bool = True) -> dict[str, float]:  # fmt: skip
    """TRL ``DPOTrainer`` metrics of one global batch of ``n`` pairs (means over its pairs).

    Computed from this process's sums, all-reduced over processes (:func:`~rewardlab.distributed.reduce_sums`).
    """
    c, r = out.chosen_rewards, out.rejected_rewards
    parts = {
        "pair_loss": out.losses.detach().sum(),
        "nll_loss": nll.detach().sum() if nll is not None else torch.zeros(()),
        "rewards/chosen": c.sum(),
        "rewards/rejected": r.sum(),
        "rewards/margins": (c - r).sum(),
        "rewards/accuracies": (c > r).float().sum(),
        "logps/chosen": pc.detach().sum(),
        "logps/rejected": pr.detach().sum(),
    }
    sums = reduce_sums(acc, [float(v) for v in parts.values()], real)
    mean = {k: v / n for k, v in zip(parts, sums, strict=True)}
    m = {"loss": mean.pop("pair_loss") + sft_weight * mean["nll_loss"]}
    nll_mean = mean.pop("nll_loss")
    m.update(mean)
    if nll is not None:
        m["nll_loss"] = nll_mean
    return m


# ----------------------------------------------------------------------- the implicit reward as an RM
@torch.no_grad()
def implicit_rewards(
    policy: nn.Module, data: PreferenceData, cfg: DPOConfig, pad_id: int, *,
    modpo_weight: float | None = None, device: torch.device | str = "cpu",
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """The implicit reward of both sides of every pair: β·log(π/π_ref) (SimPO: β·mean log π; MODPO: r₁)."""
    pc, pr = compute_logps(policy, data.examples, pad_id, packing=cfg.packing, device=device)
    lc = torch.tensor([float(len(e.chosen)) for e in data.examples])
    lr = torch.tensor([float(len(e.rejected)) for e in data.examples])
    out = preference_loss(cfg, pc, pr, data.ref_chosen, data.ref_rejected, lc, lr, modpo_weight=modpo_weight,
                          second_chosen=data.second_chosen, second_rejected=data.second_rejected)  # fmt: skip
    return out.chosen_rewards, out.rejected_rewards


def implicit_reward_metrics(
    policy: nn.Module, data: PreferenceData, comps: Sequence[Comparison], cfg: DPOConfig, pad_id: int, *,
    modpo_weight: float | None = None, device: torch.device | str = "cpu",
) -> dict[str, float]:  # fmt: skip
    """The implicit reward evaluated like a reward model on held-out pairs.

    ``implicit/accuracy_rater`` (vs the rater's labels, ties excluded), ``implicit/accuracy_gold``
    (vs the hidden gold, on pairs whose golds differ), per difficulty (``_d<k>``), and the mean margin.
    Rewards are compared at 1e-5 resolution; a tie counts as not ranked right (0 at step 0).
    """
    s_c, s_r = implicit_rewards(policy, data, cfg, pad_id, modpo_weight=modpo_weight, device=device)
    # Differences below 1e-5 are float noise (policy and reference forwards), not preferences: at step 0,
    # where π = π_ref, every pair is a tie and (strictly) not ranked right, as TRL's rewards/accuracies.
    s_c, s_r = torch.round(s_c, decimals=5), torch.round(s_r, decimals=5)
    out = {k.replace("eval/", "implicit/", 1): v for k, v in comparison_accuracies(s_c, s_r, comps).items()}
    out["implicit/margin"] = float((s_c - s_r).mean())
    return out


def write_summary(run: Run, **parts: Any) -> Path:
    """``summary.json`` of a DPO-family run (audit start/end, implicit-reward eval, throughput, cache)."""
    return run.write_json("summary.json", {**parts, "seconds": run.elapsed})
