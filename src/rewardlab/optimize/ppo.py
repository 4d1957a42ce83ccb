"""PPO for language models, with RLOO and GRPO as advantage options of the same trainer.

One code path makes rollouts (:func:`make_rollout`) and one updates the policy (:func:`ppo_update`):

* rollout: sample k completions per prompt with the fast sampler; score them with the proxy; build
  per-token rewards ``r_t = -beta * KL_t`` with the proxy score added at the last response token
  (Ziegler et al. 2019; Stiennon et al. 2020; Ouyang et al. 2022); penalize responses without EOS;
* advantages: ``gae`` (a critic, GAE(gamma, lambda), whitened over valid tokens), ``rloo``
  (leave-one-out baseline on the sequence return ``score - beta * sum_t KL_t``) or ``grpo``
  (group-normalized sequence return);
* update: several epochs of minibatches with the clipped policy objective and, for ``gae``, the
  clipped value loss (Schulman et al. 2017), gradient clipping; entropy logged.

Metric names follow TRL's PPOTrainer where the quantity is the same.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from accelerate import Accelerator
from torch import nn
from transformers import AutoModel, PreTrainedModel

from rewardlab.audit.tracker import position_ids_from_mask
from rewardlab.config import PPOConfig
from rewardlab.distributed import all_reduce_sum, batch_share
from rewardlab.kernels.precision import training_compute, training_linears
from rewardlab.kernels.readout import causal_lm_parts, hidden_at, unsupported
from rewardlab.losses import (
    entropy_from_logits,
    gae,
    grpo_advantages,
    kl_estimators,
    masked_mean,
    masked_sum,
    masked_whiten,
    ppo_policy_loss,
    ppo_value_loss,
    rloo_advantages,
    selective_log_softmax,
)
from rewardlab.policies.packing import PACKABLE_MODEL_TYPES, pack_prompt_groups, prompt_groups
from rewardlab.policies.sampling import (
    SampleBatch,
    _accepts_logits_to_keep,
    encode_prompts,
    float32_weights,
    sample,
)
from rewardlab.policies.tokenizer import decode_completion
from rewardlab.rewards.proxy import Proxy
from rewardlab.utils import RewardlabError, check_finite


class ValueModel(nn.Module):
    """A critic: a transformer trunk with a scalar head per position (separate from the policy)."""

    def __init__(self, backbone: PreTrainedModel, head_init: torch.Tensor | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.config.hidden_size, 1, bias=True)
        nn.init.zeros_(self.head.bias)
        if head_init is not None:
            with torch.no_grad():
                self.head.weight.copy_(head_init.reshape(1, -1))
        else:
            nn.init.normal_(self.head.weight, std=1.0 / (backbone.config.hidden_size + 1) ** 0.5)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> ValueModel:
        """Trunk from any checkpoint (causal LM or sequence classifier); head from its ``score`` if present."""
        backbone = AutoModel.from_pretrained(str(path), dtype=torch.float32)
        head = None
        st = Path(path) / "model.safetensors"
        if st.is_file():  # only the score head's tensor is read (not a second copy of the whole checkpoint)
            from safetensors import safe_open

            with safe_open(str(st), framework="pt") as f:
                names = set(f.keys())
                head = f.get_tensor("score.weight") if "score.weight" in names else None
        return cls(backbone, head)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                          position_ids=position_ids_from_mask(attention_mask)).last_hidden_state  # fmt: skip
        return self.head(h).squeeze(-1).float()  # float32 values under mixed precision too


class SharedValueHead(nn.Module):
    """A critic sharing the policy's trunk: a scalar head on the policy's last hidden state."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.head = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return (
            self.head(hidden.to(self.head.weight.dtype)).squeeze(-1).float()
        )  # bf16 trunk or autocast: float32


def is_shared_head(critic: nn.Module | None) -> bool:
    """Whether ``critic`` (or the module a DDP wrapper holds) is a :class:`SharedValueHead` on the policy's trunk."""
    return isinstance(getattr(critic, "module", critic), SharedValueHead)


@dataclass
class PolicyOutput:
    logprobs: torch.Tensor  # [B, T]
    entropy: torch.Tensor | None  # [B, T], detached (a logged statistic), when asked for
    values: torch.Tensor | None  # [B, T]


def policy_forward(
    policy: nn.Module,
    critic: nn.Module | None,
    batch: SampleBatch,
    temperature: float,
    shared_prompt: bool = False,
    entropy: bool = False,
) -> PolicyOutput:
    """Response-token log-probs under ``policy``, their entropy if asked (``entropy``: computed without a graph,
    since no objective here takes its gradient) and, if a critic is given, values.

    The value for token t is read at the position *before* it (the state the token was chosen in). With
    ``shared_prompt`` (``ppo.shared_prompt``) rows that repeat a prompt run as one row, the prompt encoded once
    and each response after it behind a block mask (:func:`~rewardlab.policies.packing.pack_prompt_groups`):
    the same outputs up to float rounding, for packable model types (else, or when no prompt repeats, one row
    per sample).
    """
    inner = getattr(policy, "module", policy)  # DDP wraps the model
    packed = None
    if shared_prompt and getattr(getattr(inner, "config", None), "model_type", None) in PACKABLE_MODEL_TYPES:
        dtype = training_compute() or next(inner.parameters()).dtype  # the additive mask in the compute dtype
        # pad id 0: padding is never attended to nor read
        packed = pack_prompt_groups(
            batch.prompt_ids, batch.prompt_mask, batch.response_ids, batch.response_mask, 0, dtype
        )
    shared = is_shared_head(critic)
    t = batch.response_ids.shape[1]
    with training_linears(policy, critic):  # oneDNN (backward later, too) or mixed-precision autocast
        # a plain causal LM: its last layer, LM head and value head only where a response token is chosen
        parts = causal_lm_parts(policy) if policy is inner else None
        if parts is not None:
            if packed is None:
                final = _response_hidden(parts[0], batch)
            else:
                read, at = packed.reads()
                final = hidden_at(parts[0], read, input_ids=packed.input_ids, attention_mask=packed.attention_mask,
                                  position_ids=packed.position_ids)[packed.rows[:, None], at]  # fmt: skip
            logits, hidden = parts[1](final), final if shared else None
        elif packed is None:
            ids, mask = batch.input_ids, batch.attention_mask
            # The LM head only where a response token is predicted (the last t + 1 positions, minus the last).
            keep = {"logits_to_keep": t + 1} if _accepts_logits_to_keep(type(inner)) else {}
            out = policy(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                         output_hidden_states=shared, **keep)  # fmt: skip
            p = batch.prompt_ids.shape[1]
            logits = out.logits[:, -(t + 1) : -1]
            hidden = out.hidden_states[-1][:, p - 1 : -1] if shared else None
        else:
            width = packed.input_ids.shape[1]
            keep = (
                {"logits_to_keep": width - packed.first_col} if _accepts_logits_to_keep(type(inner)) else {}
            )
            out = policy(input_ids=packed.input_ids, attention_mask=packed.attention_mask,
                         position_ids=packed.position_ids, output_hidden_states=shared, **keep)  # fmt: skip
            rows = packed.rows[:, None]
            logits = out.logits[rows, packed.cols - (width - out.logits.shape[1])]  # [B, T, V]
            hidden = out.hidden_states[-1][rows, packed.cols] if shared else None
        logits = logits.float() if temperature == 1.0 else logits.float() / temperature
        logp = selective_log_softmax(logits, batch.response_ids)
        ent = None
        if entropy:
            with torch.no_grad():
                ent = entropy_from_logits(logits)
        values = None
        if shared:
            values = critic(hidden)  # type: ignore[misc]
        elif critic is not None:
            values = critic_values(critic, batch)
    return PolicyOutput(logp, ent, values)


def _response_hidden(decoder: nn.Module, batch: SampleBatch) -> torch.Tensor:
    """``decoder``'s final hidden states [B, T, D] where each response token is chosen (the position before it),
    its last layer run there only (:func:`~rewardlab.kernels.readout.hidden_at`)."""
    ids, mask = batch.input_ids, batch.attention_mask
    p, t = batch.prompt_ids.shape[1], batch.response_ids.shape[1]
    read = torch.arange(p - 1, p - 1 + t, device=ids.device).expand(ids.shape[0], t)
    return hidden_at(
        decoder, read, input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)
    )


def critic_values(critic: nn.Module, batch: SampleBatch) -> torch.Tensor:
    """A separate critic's values [B, T] of the response tokens, each read at the position before it. A
    :class:`ValueModel` on a decoder :func:`~rewardlab.kernels.readout.hidden_at` replays (not under a DDP
    wrapper) runs its last layer and head at those positions only."""
    with training_linears(critic):
        if isinstance(critic, ValueModel) and unsupported(critic.backbone) is None:
            return critic.head(_response_hidden(critic.backbone, batch)).squeeze(-1).float()
        return critic(batch.input_ids, batch.attention_mask)[:, batch.prompt_ids.shape[1] - 1 : -1]


def old_logprobs_from_sampler(policy: nn.Module) -> bool:
    """Whether the rollout's old log-probs may be the sampler's: float32 weights (:func:`float32_weights`)
    and float32 training forwards (no ``precision: bf16-mixed``), so that the first update's ratio is 1 up
    to float rounding. Under mixed precision the training forward rounds to bf16 and its own forward is run."""
    return training_compute() is None and float32_weights(getattr(policy, "module", policy))


@dataclass
class Rollout:
    batch: SampleBatch
    mask: torch.Tensor  # [B, T] float, valid response tokens
    logprobs: torch.Tensor  # old policy
    ref_logprobs: torch.Tensor
    values: torch.Tensor | None
    scores: torch.Tensor  # [B] proxy after the missing-EOS rule
    raw_scores: torch.Tensor  # [B] proxy as the reward model gave it
    kl: dict[str, torch.Tensor]  # per-token k1/k2/k3 [B, T]
    rewards: torch.Tensor  # [B, T]
    advantages: torch.Tensor  # [B, T]
    returns: torch.Tensor | None
    responses: list[str]


def apply_missing_eos(scores: torch.Tensor, finished: torch.Tensor, cfg: PPOConfig) -> torch.Tensor:
    """TRL's "EOS trick": subtract a penalty (or, lm-human-preferences style, replace the score) without EOS."""
    if cfg.missing_eos == "penalty":
        return torch.where(finished, scores, scores - cfg.missing_eos_penalty)
    if cfg.missing_eos == "replace":
        return torch.where(finished, scores, torch.full_like(scores, cfg.missing_eos_score))
    return scores


@dataclass
class RolloutSamples:
    """What sampling and scoring give per row, before rewards and advantages (one shard of a rollout)."""

    batch: SampleBatch
    logprobs: torch.Tensor  # [B, T] old policy, 0 at padding
    ref_logprobs: torch.Tensor  # [B, T]
    values: torch.Tensor | None  # [B, T]
    raw_scores: torch.Tensor  # [B] proxy as the reward model gave it
    responses: list[str]
    dense: torch.Tensor | None = None  # [B, T] token rewards (ppo.dense_rewards), summing to raw_scores


class Actors(NamedTuple):
    """The models of a rollout (torchtune's PPO recipe names them the same way): the policy being trained, its
    frozen reference (``None``: no KL, as TRL's GRPO with ``beta=0``), the critic (``None`` for RLOO/GRPO),
    the proxy that scores completions, and the tokenizer."""

    policy: nn.Module
    ref: nn.Module | None
    critic: nn.Module | None
    reward_model: Proxy
    tokenizer: Any


@torch.no_grad()
def sample_and_score(
    actors: Actors, prompts: list[str], cfg: PPOConfig, generator: torch.Generator
) -> RolloutSamples:
    """Sample one completion per prompt (prompts already repeated k times), with log-probs, values and scores.

    Forwards are skipped when their result is known: with ``ref=None`` (no reference, as TRL's
    GRPO with ``beta=0``) the reference log-probs are the policy's (every KL term is 0). The old
    log-probs are the sampler's (the same distribution, from its own decoding forwards) when a
    training forward would give them up to float rounding: float32 weights and float32 training
    compute (:func:`old_logprobs_from_sampler`); a separate critic then runs alone for the values,
    and a value head on the policy's trunk reads the final hidden states the sampler recorded
    (:attr:`~rewardlab.policies.sampling.SampleBatch.hidden`), so the policy runs no forward at all.
    With a single gradient step per rollout (:func:`single_update`) and no critic they are the
    sampler's whatever the precision, and :func:`ppo_update` takes the ratio's denominator from its
    first forward, as TRL does.
    """
    policy, ref, critic, reward_model, tokenizer = actors
    device = next(policy.parameters()).device
    ids, pmask = encode_prompts(tokenizer, prompts, cfg.max_new_tokens)
    shared = is_shared_head(critic)  # its values read the policy's final hidden states
    exact = old_logprobs_from_sampler(policy)
    batch = sample(policy, ids.to(device), pmask.to(device), max_new_tokens=cfg.max_new_tokens,
                   eos_token_id=int(tokenizer.eos_token_id), pad_token_id=int(tokenizer.pad_token_id),
                   temperature=cfg.temperature, generator=generator,
                   hidden_states=shared and exact)  # fmt: skip
    mask = batch.response_mask.float()
    if shared:  # the sampler's hidden states (None on the generate path) stand in for the forward's
        from_sampler = exact and batch.hidden is not None
    else:
        from_sampler = exact or (critic is None and single_update(cfg))
    pol = None if from_sampler else policy_forward(policy, critic, batch, cfg.temperature, cfg.shared_prompt)
    logp = (pol.logprobs if pol is not None else batch.logprobs.to(mask.device)) * mask
    ref_logp = (
        logp
        if ref is None
        else policy_forward(ref, None, batch, cfg.temperature, cfg.shared_prompt).logprobs * mask
    )
    responses = [decode_completion(tokenizer, r.tolist()) for r in batch.response_ids.cpu()]
    rm_scores = reward_model.score(prompts, responses)
    alpha = cfg.score_alpha if cfg.score_alpha is not None else float(getattr(reward_model, "alpha", 1.0))
    raw = rm_scores.mean if cfg.score == "mean" else ensemble_score(rm_scores.members, cfg.score, alpha)
    raw = raw.to(device)
    values = pol.values if pol is not None else None
    if pol is None and shared:  # the value head on the hidden states the sampler recorded
        values = critic(batch.hidden)  # type: ignore[misc]
        batch = dataclasses.replace(batch, hidden=None)  # [B, T, D]: not kept in the rollout
    elif pol is None and critic is not None:  # the sampler gave the log-probs: a separate critic runs alone
        values = critic_values(critic, batch)
    values = values * mask if values is not None else None
    dense = dense_proxy_rewards(reward_model, prompts, responses, batch.response_lengths, mask.shape[1], cfg)
    dense = None if dense is None else dense.to(device)
    return RolloutSamples(batch, logp, ref_logp, values, raw, responses, dense)


def dense_proxy_rewards(reward_model: Proxy, prompts: list[str], responses: list[str], lengths: torch.Tensor,
                        width: int, cfg: PPOConfig) -> torch.Tensor | None:  # fmt: skip
    """With ``ppo.dense_rewards``, the proxy's per-token rewards [B, width] on the response tokens (a segment-level
    reward model's ``dense``; a reward past the response's last token lands on it); else ``None``."""
    if not cfg.dense_rewards:
        return None
    if cfg.advantage != "gae":
        raise RewardlabError(f"ppo.dense_rewards needs advantage=gae ({cfg.advantage} sees the sum only)")
    if not callable(getattr(reward_model, "dense", None)):
        raise RewardlabError("ppo.dense_rewards needs token rewards (a reward.kind=segment model)")
    out = torch.zeros(len(responses), width)
    for i, d in enumerate(reward_model.dense(prompts, responses)):  # type: ignore[attr-defined]
        pos = torch.arange(len(d)).clamp(max=max(int(lengths[i]) - 1, 0))
        out[i].index_add_(0, pos, d.float())
    return out


def ensemble_score(members: torch.Tensor, kind: str, alpha: float = 1.0) -> torch.Tensor:
    """The proxy PPO maximizes, from an ensemble's member scores ``members`` [k, N]:

    * ``mean``: ``mean_i r_i``;
    * ``conservative``: ``mean_i r_i - alpha * std_i r_i`` (unbiased std; 0 for one member), the
      uncertainty-penalized objective of Coste et al. 2024, "Reward Model Ensembles Help Mitigate
      Overoptimization" (their UWO with ``lambda = alpha``);
    * ``worst``: ``min_i r_i``, their worst-case optimization (WCO).
    """
    m = members.float()
    if kind == "worst":
        return m.min(dim=0).values
    mean = m.mean(dim=0)
    if kind == "mean":
        return mean
    if kind == "conservative":
        std = m.std(dim=0, unbiased=True) if m.shape[0] > 1 else torch.zeros_like(mean)
        return mean - alpha * std
    raise ValueError(f"ppo.score: unknown ensemble score {kind!r} (mean, conservative, worst)")


def scheduled_kl_coef(cfg: PPOConfig, step: int) -> float:
    """beta at PPO step ``step`` (1..``cfg.steps``) under ``cfg.kl_schedule``, from ``kl_coef`` at step 1 to
    ``kl_coef_end`` at the last: ``constant`` keeps ``kl_coef``; with ``t = (step - 1) / (steps - 1)``,
    ``linear`` is ``b0 + (b1 - b0) t`` and ``cosine`` is ``b1 + (b0 - b1) (1 + cos(pi t)) / 2``. A rising beta
    lets early optimization move freely and holds the policy nearer the reference once the proxy is
    exploited (a KL schedule as a mitigation of over-optimization; Gao et al. 2022 study fixed beta)."""
    b0 = cfg.kl_coef
    if cfg.kl_schedule == "constant" or cfg.kl_coef_end is None:
        return b0
    b1 = cfg.kl_coef_end
    t = min(1.0, max(0.0, (step - 1) / max(1, cfg.steps - 1)))
    if cfg.kl_schedule == "linear":
        return b0 + (b1 - b0) * t
    return b1 + (b0 - b1) * (1 + math.cos(math.pi * t)) / 2


def single_update(cfg: PPOConfig) -> bool:
    """One gradient step per rollout: the policy that sampled is the one whose ratio is taken (ratio = 1)."""
    return cfg.ppo_epochs == 1 and cfg.minibatches == 1


def concat_samples(parts: list[RolloutSamples], pad_token_id: int) -> RolloutSamples:
    """One batch from rollout shards, in order: prompts re-padded on the left, responses on the right.

    Padding adds masked positions only (ids = pad, masks and log-probs 0), so every quantity computed
    from the result over valid tokens is that of the shards.
    """
    if len(parts) == 1:
        return parts[0]
    width_p = max(s.batch.prompt_ids.shape[1] for s in parts)
    width_t = max(s.batch.response_ids.shape[1] for s in parts)

    def cat(get, width: int, value: float, left: bool = False) -> torch.Tensor:  # type: ignore[no-untyped-def]
        out = []
        for s in parts:
            x = get(s)
            pad = (width - x.shape[1], 0) if left else (0, width - x.shape[1])
            out.append(torch.nn.functional.pad(x, pad, value=value))
        return torch.cat(out)

    b = SampleBatch(
        prompt_ids=cat(lambda s: s.batch.prompt_ids, width_p, pad_token_id, left=True),
        prompt_mask=cat(lambda s: s.batch.prompt_mask, width_p, 0, left=True),
        response_ids=cat(lambda s: s.batch.response_ids, width_t, pad_token_id),
        response_mask=cat(lambda s: s.batch.response_mask, width_t, 0),
        logprobs=cat(lambda s: s.batch.logprobs, width_t, 0.0),
        finished=torch.cat([s.batch.finished for s in parts]),
    )
    values = None
    if all(s.values is not None for s in parts):
        values = cat(lambda s: s.values, width_t, 0.0)
    return RolloutSamples(
        b, cat(lambda s: s.logprobs, width_t, 0.0), cat(lambda s: s.ref_logprobs, width_t, 0.0), values,
        torch.cat([s.raw_scores for s in parts]), [r for s in parts for r in s.responses],
        cat(lambda s: s.dense, width_t, 0.0) if all(s.dense is not None for s in parts) else None,
    )  # fmt: skip


def rollout_from_samples(s: RolloutSamples, cfg: PPOConfig, kl_coef: float) -> Rollout:
    """Per-token rewards (proxy score at the last token, ``-beta * KL`` everywhere) and advantages."""
    batch, logp, ref_logp = s.batch, s.logprobs, s.ref_logprobs
    device = logp.device
    mask = batch.response_mask.float()
    scores = apply_missing_eos(s.raw_scores, batch.finished.to(device), cfg)
    kl = {k: v * mask for k, v in kl_estimators(logp, ref_logp).items()}
    non_score = -kl_coef * kl[cfg.kl_estimator]
    last = (batch.response_lengths.to(device) - 1).clamp(min=0)
    rewards = non_score.clone()
    if s.dense is not None:  # the proxy's token rewards; the missing-EOS rule's change on the last token
        rewards += s.dense * mask
        scores_at_last = scores - s.raw_scores
    else:
        scores_at_last = scores
    rewards[torch.arange(len(batch), device=device), last] += scores_at_last
    values, returns = None, None
    if cfg.advantage == "gae":
        values = s.values
        adv, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)  # type: ignore[arg-type]
        if cfg.whiten_advantages:
            adv = masked_whiten(adv, mask)
    else:
        seq_return = scores + masked_sum(non_score, mask, dim=1)
        k = cfg.samples_per_prompt
        seq_adv = (rloo_advantages(seq_return, k) if cfg.advantage == "rloo"
                   else grpo_advantages(seq_return, k, eps=cfg.grpo_eps, scale=cfg.grpo_scale))  # fmt: skip
        adv = seq_adv[:, None] * mask
    return Rollout(batch, mask, logp, ref_logp, values, scores, s.raw_scores, kl, rewards, adv * mask, returns,
                   s.responses)  # fmt: skip


def make_rollout(actors: Actors, prompts: list[str], cfg: PPOConfig, kl_coef: float,
                 generator: torch.Generator) -> Rollout:  # fmt: skip
    """Sample, score and compute rewards and advantages for ``prompts`` (each already repeated k times)."""
    samples = sample_and_score(actors, prompts, cfg, generator)
    return rollout_from_samples(samples, cfg, kl_coef)


def ppo_update(
    policy: nn.Module,
    critic: nn.Module | None,
    optimizer: torch.optim.Optimizer,
    ro: Rollout,
    cfg: PPOConfig,
    generator: torch.Generator,
    step: int,
    accelerator: Accelerator | None = None,
) -> dict[str, float]:
    """Several epochs of clipped-objective minibatch updates on one rollout; returns averaged stats.

    With several processes (``accelerator``), every process holds the whole rollout and draws the
    same minibatch permutation from ``generator``; each runs forward and backward on its contiguous
    share of every minibatch, its loss scaled by ``world * (its valid tokens) / (minibatch tokens)``
    so that DDP's gradient average equals the gradient of the minibatch's token mean. The logged
    statistics are token-weighted sums over processes, i.e. the minibatch means.
    """
    world = accelerator.num_processes if accelerator is not None else 1
    backward = accelerator.backward if accelerator is not None else torch.Tensor.backward
    clip_grad = accelerator.clip_grad_norm_ if accelerator is not None else torch.nn.utils.clip_grad_norm_
    n = ro.mask.shape[0]
    mb_size = max(1, n // cfg.minibatches)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    stats: dict[str, list[float]] = {k: [] for k in ("pg_loss", "vf_loss", "clipfrac", "approxkl", "vf_clipfrac",
                                                     "ratio", "entropy", "grad_norm")}  # fmt: skip
    ratios: list[torch.Tensor] = []
    groups = prompt_groups(ro.batch.prompt_ids, ro.batch.prompt_mask) if cfg.shared_prompt else None
    value_targets = ro.values is not None and ro.returns is not None
    # A separate critic runs its forward and backward after the policy's backward, so that one model's
    # activations are held at a time (the two losses share no parameter: the same gradients).
    separate = critic is not None and not is_shared_head(critic)
    for _epoch in range(cfg.ppo_epochs):
        if groups is None:
            perm = torch.randperm(n, generator=generator)
        else:  # whole groups in each minibatch, so that its forward encodes each prompt once
            perm = torch.cat([groups[g] for g in torch.randperm(len(groups), generator=generator).tolist()])
        for i in range(0, n, mb_size):
            idx = perm[i : i + mb_size].to(ro.mask.device)
            weight = 1.0
            if world > 1:  # this process's share of the minibatch (a stand-in row weighted 0 if it has none)
                share = batch_share(accelerator, len(idx))
                tokens_mb = float(ro.mask[idx].sum())
                idx = idx[share.rows]
                weight = float(ro.mask[idx].sum()) / tokens_mb if share.real else 0.0
            mb = ro.batch.select(idx)
            m = ro.mask[idx]
            optimizer.zero_grad(set_to_none=True)
            out = policy_forward(policy, None if separate else critic, mb, cfg.temperature, cfg.shared_prompt,
                                 entropy=True)  # fmt: skip
            # One step per rollout: the current policy is the one that sampled, so its own log-probs
            # (detached) are the old ones and the ratio is exactly 1 (see sample_and_score).
            old = out.logprobs.detach() if single_update(cfg) else ro.logprobs[idx]
            pg_loss, pg = ppo_policy_loss(out.logprobs, old, ro.advantages[idx], m, cfg.cliprange)
            loss = pg_loss
            vf_loss, vf = None, None
            if out.values is not None and value_targets:  # a value head on the policy's trunk
                vf_loss, vf = ppo_value_loss(
                    out.values, ro.values[idx], ro.returns[idx], m, cfg.cliprange_value
                )
                loss = loss + cfg.vf_coef * vf_loss
            check_finite(loss, "PPO loss", step, "ppo")
            backward(loss * (world * weight) if world > 1 else loss)
            if separate and value_targets:
                values = critic_values(critic, mb)  # type: ignore[arg-type]
                vf_loss, vf = ppo_value_loss(values, ro.values[idx], ro.returns[idx], m, cfg.cliprange_value)
                check_finite(vf_loss, "PPO value loss", step, "ppo")
                loss = cfg.vf_coef * vf_loss
                backward(loss * (world * weight) if world > 1 else loss)
            gn = clip_grad(params, cfg.optim.max_grad_norm)
            optimizer.step()
            mb_stats = {"pg_loss": pg_loss.item(), "clipfrac": float(pg["clipfrac"]),
                        "approxkl": float(pg["approxkl"]), "ratio": float(pg["ratio"]),
                        "entropy": float(masked_mean(out.entropy, m))}  # fmt: skip
            if vf_loss is not None and vf is not None:
                mb_stats.update(vf_loss=vf_loss.item(), vf_clipfrac=float(vf["clipfrac"]))
            if world > 1:
                sums = all_reduce_sum(accelerator, [v * weight for v in mb_stats.values()])  # type: ignore[arg-type]
                mb_stats = dict(zip(mb_stats, sums, strict=True))
            for k in ("vf_loss", "vf_clipfrac", "pg_loss", "clipfrac", "approxkl", "ratio", "entropy"):
                if k in mb_stats:
                    stats[k].append(mb_stats[k])
            stats["grad_norm"].append(float(gn))
            if weight > 0:
                ratios.append(torch.exp(out.logprobs.detach() - old)[m.bool()])
    optimizer.zero_grad(set_to_none=True)  # the gradients' memory is free while the next rollout samples
    allr = torch.cat(ratios) if ratios else torch.zeros(1)
    if world > 1:
        from accelerate.utils import gather_object

        allr = torch.cat(gather_object([allr.cpu()]))

    def avg(k: str) -> float:
        return sum(stats[k]) / len(stats[k]) if stats[k] else float("nan")

    out_stats = {
        "policy/approxkl_avg": avg("approxkl"),
        "policy/clipfrac_avg": avg("clipfrac"),
        "policy/entropy_avg": avg("entropy"),
        "loss/policy_avg": avg("pg_loss"),
        "val/ratio": float(allr.mean()),
        "val/ratio_var": float(allr.var()) if allr.numel() > 1 else 0.0,
        "train/grad_norm": avg("grad_norm"),
    }
    if stats["vf_loss"]:
        out_stats["loss/value_avg"] = avg("vf_loss")
        out_stats["val/clipfrac_avg"] = avg("vf_clipfrac")
    return out_stats


def rollout_metrics(ro: Rollout, cfg: PPOConfig, kl_coef: float) -> dict[str, float]:
    """Per-step rollout metrics with TRL's names plus all three KL estimators."""
    seq_kl = {k: masked_sum(v, ro.mask, dim=1) for k, v in ro.kl.items()}
    non_score = -kl_coef * seq_kl[cfg.kl_estimator]
    eos = ro.batch.finished.float()
    return {
        "objective/kl": float(seq_kl[cfg.kl_estimator].mean()),
        "objective/entropy": float((-ro.logprobs).sum(1).mean()),
        "objective/non_score_reward": float(non_score.mean()),
        "objective/rlhf_reward": float((ro.scores + non_score).mean()),
        "objective/scores": float(ro.scores.mean()),
        "objective/raw_scores": float(ro.raw_scores.mean()),
        "kl/k1": float(seq_kl["k1"].mean()),
        "kl/k2": float(seq_kl["k2"].mean()),
        "kl/k3": float(seq_kl["k3"].mean()),
        "kl_coef": kl_coef,
        "val/num_eos_tokens": float(eos.sum()),
        "val/truncated_rate": float(1 - eos.mean()),
        "val/response_length": float(ro.mask.sum(1).mean()),
    }
