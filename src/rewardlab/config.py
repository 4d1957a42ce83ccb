"""Typed, validated configs for every stage, loaded from YAML with ``--set key=value`` overrides.

One YAML file describes a whole experiment (``configs/default.yaml``); each stage command reads its
own section and the shared ``seed``, ``task`` and ``run_dir``. Unknown keys, wrong types and bad
values are errors that name the file and the dotted field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rewardlab.feedback.base import SourceName
from rewardlab.feedback.constitution import SLCAIConfig
from rewardlab.feedback.file import FileSourceConfig
from rewardlab.feedback.human.config import HumanSourceConfig
from rewardlab.feedback.judge import JudgeSourceConfig
from rewardlab.feedback.simulated import RaterConfig
from rewardlab.methods import METHODS, OPTIMIZERS
from rewardlab.policies.lora import LoRAConfig
from rewardlab.policies.models import DType, ModelConfig, Precision
from rewardlab.policies.tokenizer import Truncation
from rewardlab.tasks.base import Task, validate_section
from rewardlab.tasks.registry import TASKS, TaskSpec, build_task, with_default_kind
from rewardlab.utils import RewardlabError, read_text_file


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _partial_sections_keep_their_defaults(cls, data: Any) -> Any:
        """A sub-section given in part (``--set sft.optim.lr=0.01``, or ``optim: {lr: 0.01}``) keeps the
        section's own defaults for the rest (SFT's ``warmup_steps: 20``), not the sub-section class's."""
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for name, f in cls.model_fields.items():
            given = out.get(name)
            if isinstance(f.default, BaseModel) and isinstance(given, dict):
                out[name] = {**f.default.model_dump(mode="json", exclude_unset=True), **given}
        return out


# Field factories: the settings every trainer shares are defined once (a stage gives its own default).
def steps_field(default: int, what: str = "optimizer steps") -> Any:
    return Field(default, gt=0, description=what)


def eval_every_field(default: int) -> Any:
    return Field(default, gt=0, description="evaluate / audit every N steps (and after the last)")


def checkpoint_every_field(default: int) -> Any:
    return Field(
        default, ge=0, description="save training state every N steps (and at the end) for --resume; 0: never"
    )


def max_new_tokens_field(default: int = 20) -> Any:
    return Field(default, gt=0, description="longest sampled response, in tokens")


def temperature_field(default: float = 1.0) -> Any:
    return Field(default, gt=0, description="sampling temperature")


class OptimConfig(_Strict):
    """Optimizer and schedule shared by the trainers (AdamW, linear warmup, cosine or constant decay)."""

    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    schedule: Literal["cosine", "constant", "linear"] = "cosine"
    max_grad_norm: float = Field(1.0, gt=0)
    betas: tuple[float, float] = (0.9, 0.95)


class PretrainConfig(_Strict):
    """Pretrain the base model from scratch on the mixed-quality corpus (loss on every token)."""

    model: ModelConfig = ModelConfig()
    corpus: dict[str, Any] = Field(
        default_factory=dict,
        description="the task's pretraining-corpus sampler settings (task-specific keys)",
    )
    steps: int = steps_field(1000)
    batch_size: int = Field(128, gt=0)
    length_chunks: int = Field(
        2,
        ge=1,
        description="compute each batch as this many length-sorted micro-batches: the same "
        "token-mean loss with less padding (2 was fastest here, 4 and 6 slower; several processes use 1)",
    )
    optim: OptimConfig = OptimConfig(lr=3e-3, weight_decay=0.01, warmup_steps=50)
    eval_every: int = eval_every_field(250)
    eval_prompts: int = Field(512, gt=0, description="held-out prompts to measure parse rate and gold")
    checkpoint_every: int = checkpoint_every_field(250)


class DataLimits(_Strict):
    """How long an example from user data may be (prompt + completion, in tokens) and how a longer one is cut."""

    max_length: int | None = Field(
        None, gt=0, description="tokens per example, prompt + completion (default: the model's positions)"
    )
    truncation: Truncation = Field(
        "keep_end",
        description="a longer example: keep_end drops the prompt's oldest tokens, keep_start its newest (then the "
        "completion's end); error refuses it. Cut examples are counted in the log and summary.json",
    )


class SFTConfig(DataLimits):
    """Supervised fine-tuning on expert demonstrations with completion-only loss."""

    model_path: str | None = Field(None, description="base model folder; default: <run_dir>/pretrain/model")
    demos: dict[str, Any] = Field(
        default_factory=dict, description="the task's demonstration sampler settings (task-specific keys)"
    )
    data_path: str | None = Field(None, description="JSONL of {prompt, completion}; default: sampled demos")
    num_demos: int = Field(20000, gt=0)
    steps: int = steps_field(400)
    batch_size: int = Field(64, gt=0)
    packing: Literal["bucket", "none"] = Field("bucket", description="group examples of similar length")
    optim: OptimConfig = OptimConfig(lr=1e-3, warmup_steps=20)
    eval_fraction: float = Field(0.05, gt=0, lt=1)
    eval_every: int = eval_every_field(100)
    eval_prompts: int = Field(512, gt=0)
    checkpoint_every: int = checkpoint_every_field(100)
    lora: LoRAConfig | None = Field(
        None,
        description="train LoRA adapters (peft) instead of every weight; {} for the defaults (docs/models.md)",
    )


class LabelConfig(_Strict):
    """Where an arm's preference labels come from: sampled pairs judged by a rater, or a file.

    ``source: simulated`` samples pairs from policies and has the simulated rater (``rater``) compare
    them; ``source: file`` reads comparisons from ``file.path``; ``source: human`` reads the answers people
    gave in the labeling app (``human.db``, ``human.queue``); ``source: judge`` has an AI judge (``judge``: an LM
    under a constitution, a reward model or a rule) compare the sampled pairs. The arm is named ``<name>-s<seed>``.
    """

    source: SourceName = Field(
        "simulated",
        description="simulated | file | human (the labeling app's database) | judge (AI feedback)",
    )
    name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="the arm's name; default: the rater preset (simulated) or the source",
    )
    role: Literal["treatment", "control"] = Field(
        "treatment", description="control arms are the baselines the report compares the others with"
    )
    file: FileSourceConfig = FileSourceConfig()
    human: HumanSourceConfig = HumanSourceConfig()
    judge: JudgeSourceConfig = Field(
        default_factory=JudgeSourceConfig, description="label.source: judge: the AI judge (docs/rlaif.md)"
    )
    rater: RaterConfig = RaterConfig()
    num_prompts: int = Field(12000, gt=0)
    policy_paths: list[str] | None = Field(
        None, description="policies to sample from; default: [<run_dir>/sft/model, <run_dir>/pretrain/model]"
    )
    policy_weights: list[float] = Field([0.5, 0.5], description="share of pairs drawn from each policy")
    temperature: float = temperature_field()
    max_new_tokens: int = max_new_tokens_field()
    k: int = Field(2, ge=2, description="completions per prompt; k > 2 also writes K-wise rankings")
    drop_identical: bool = True
    eval_fraction: float = Field(0.1, gt=0, lt=1)
    batch_size: int = Field(256, gt=0)


class RewardConfig(DataLimits):
    """Train the proxy: a scalar head on an LM backbone."""

    init_path: str | None = Field(None, description="backbone to start from; default: <run_dir>/sft/model")
    data_path: str | None = Field(None, description="comparisons JSONL; default: <run_dir>/label/train.jsonl")
    eval_path: str | None = Field(None, description="default: <run_dir>/label/eval.jsonl")
    loss: Literal["bradley_terry", "plackett_luce"] = "bradley_terry"
    use_margin: bool = Field(False, description="use the records' `margin` field in the BT loss")
    center_rewards_coefficient: float = Field(0.0, ge=0)
    ensemble_size: int = Field(1, ge=1)
    ensemble_alpha: float = Field(1.0, ge=0, description="conservative score = mean - alpha * std")
    epochs: int = Field(2, gt=0)
    batch_size: int = Field(64, gt=0)
    packing: Literal["bucket", "none"] = Field(
        "bucket", description="batch comparisons of similar length (less padding); none: uniform shuffle"
    )
    shared_prompt: bool = Field(
        False,
        description="train on one row per comparison, its two sequences sharing their common prefix (the prompt "
        "is encoded once, as DPO's packing); same scores up to float rounding; causal Llama/Qwen/Mistral members "
        "only (others keep two rows, logged)",
    )
    optim: OptimConfig = OptimConfig(lr=5e-4, warmup_steps=20)
    normalize_prompts: int = Field(1024, gt=0, description="SFT samples to normalize rewards on")
    verifier: bool | None = Field(
        None,
        description="add a learned weight on a frozen LM's log-prob of the final answer; default: on when the "
        "task offers a verifier (arithmetic), off otherwise",
    )
    normalize_on: Literal["policy", "data"] = Field(
        "policy",
        description="normalize rewards on samples of the SFT policy on task prompts, or on the training "
        "comparisons' completions",
    )
    verifier_path: str | None = Field(None, description="the verifier LM; default: <run_dir>/sft/model")
    normalize_policy_path: str | None = Field(
        None, description="policy sampled for normalization; default SFT"
    )
    pooling: Literal["auto", "mean", "cls", "last"] = Field(
        "auto",
        description="what the head reads: mean (masked mean of an encoder's last hidden states), cls (the BERT "
        "pooler on [CLS]) or last (a causal LM's last token); auto: last for a causal LM, an encoder's "
        "sentence-transformers pooling (mean for all-MiniLM-L6-v2), else cls",
    )
    train_layers: int | None = Field(
        None,
        ge=0,
        description="encoder backbones: train only the top N transformer layers and the head (embeddings and lower "
        "layers frozen); 0: the head alone, on pooled features computed once; default: all",
    )
    cache_frozen: bool = Field(
        False,
        description="with train_layers N >= 1 on a BERT-style encoder: run each training sequence once through the "
        "frozen embeddings and lower layers and train the top N layers from those cached hidden states",
    )
    cache_dir: str | None = Field(
        None,
        description="cache_frozen: keep the cached states in this folder (chunked, resumable); default: memory",
    )
    cache_dtype: Literal["float16", "float32"] = Field(
        "float16", description="cache_frozen: the dtype the cached hidden states are stored in"
    )
    disable_dropout: bool = Field(
        False,
        description="train with the backbone's dropout off (TRL's RewardTrainer default, disable_dropout=True); "
        "false keeps the model's own dropout",
    )
    kind: Literal["scalar", "segment", "domain"] = Field(
        "scalar",
        description="scalar: one reward per response; segment: a reward per entropy-cut segment, trained through "
        "their mean (docs/reward-variants.md); domain: a linear model over the task's domain_features",
    )
    segment_entropy_threshold: float = Field(
        1.0,
        ge=0,
        description="kind=segment: a token starts a segment when the SFT policy's entropy before it is higher",
    )
    goal_weight: float = Field(
        0.0,
        ge=0,
        description="weight of the goal-conditioned contrastive loss added to BT (Nath et al. 2024); 0: off",
    )
    goal_temperature: float = Field(0.1, gt=0, description="temperature of the goal-conditioned InfoNCE")
    domain_l2: float = Field(0.01, ge=0, description="kind=domain: L2 penalty on the feature weights")
    eval_every: int = eval_every_field(200)
    checkpoint_every: int = checkpoint_every_field(100)


class PPOConfig(_Strict):
    """Policy optimization against the proxy with a KL penalty to the reference (SFT) policy.

    ``advantage: gae`` is PPO with a value model (Ouyang et al. 2022); ``rloo`` and ``grpo`` use the same
    rollouts and update with a sequence-level baseline instead of a critic (Ahmadian et al. 2024;
    Shao et al. 2024).
    """

    policy_path: str | None = Field(None, description="policy and reference; default: <run_dir>/sft/model")
    reward_path: str | None = Field(None, description="proxy; default: <run_dir>/<arm>/reward/model")
    advantage: Literal["gae", "rloo", "grpo"] = "gae"
    steps: int = Field(80, gt=0, description="rollout + update iterations")
    prompts_per_step: int = Field(32, gt=0)
    samples_per_prompt: int = Field(4, ge=1, description="k completions per prompt (>= 2 for rloo/grpo)")
    ppo_epochs: int = Field(2, gt=0)
    minibatches: int = Field(2, gt=0, description="minibatches per rollout batch")
    optim: OptimConfig = OptimConfig(lr=5e-5, schedule="constant", warmup_steps=0)
    kl_coef: float = Field(0.05, ge=0, description="initial beta of the per-token KL penalty")
    kl_estimator: Literal["k1", "k2", "k3"] = Field(
        "k1", description="estimator in the reward (all are logged)"
    )
    kl_controller: Literal["fixed", "adaptive"] = "fixed"
    kl_target: float = Field(6.0, gt=0, description="adaptive controller target KL (Ziegler et al. 2019)")
    kl_horizon: float = Field(10000, gt=0)
    gamma: float = Field(1.0, ge=0, le=1)
    lam: float = Field(0.95, ge=0, le=1)
    cliprange: float = Field(0.2, gt=0)
    cliprange_value: float = Field(0.2, gt=0)
    vf_coef: float = Field(0.1, ge=0)
    whiten_advantages: bool = True
    dense_rewards: bool = Field(
        False,
        description="a segment-level reward model's per-token rewards instead of one score at the last token "
        "(advantage: gae; docs/reward-variants.md)",
    )
    grpo_eps: float = Field(1e-4, gt=0, description="GRPO: A = (r - mean) / (std + eps)")
    grpo_scale: Literal["group", "batch", "none"] = "group"
    value_model: Literal["separate", "shared"] = Field(
        "separate", description="critic: own trunk or policy's"
    )
    value_init: Literal["reward", "policy"] = Field("reward", description="separate critic initialised from")
    shared_prompt: bool = Field(
        False,
        description="training and reference forwards run one row per prompt: the prompt encoded once, each of its "
        "samples after it behind a block mask (as DPO's packing), PPO's minibatches whole groups; same log-probs up "
        "to float rounding; pays for long prompts and bigger models (docs/concepts.md); Llama/Qwen/Mistral policies "
        "(others keep one row per sample)",
    )
    missing_eos: Literal["penalty", "replace", "none"] = Field("penalty", description="responses without EOS")
    missing_eos_penalty: float = Field(1.0, description="subtracted from the score (penalty)")
    missing_eos_score: float = Field(-3.0, description="the score given (replace)")
    score: Literal["mean", "conservative", "worst"] = Field(
        "mean", description="ensemble proxy: mean, mean - alpha*std, or worst (the members' minimum)"
    )
    score_alpha: float | None = Field(
        None, ge=0, description="k of score: conservative (mean - k*std); default: the RM's ensemble_alpha"
    )
    kl_schedule: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="beta over the steps (fixed controller): kl_coef -> kl_coef_end"
    )
    kl_coef_end: float | None = Field(None, ge=0, description="beta at the last step of a kl_schedule")
    temperature: float = temperature_field()
    max_new_tokens: int = max_new_tokens_field()
    eval_every: int = eval_every_field(10)
    checkpoint_every: int = checkpoint_every_field(20)
    rollout_shards: int | None = Field(
        None,
        ge=1,
        description="rollouts are sampled in this many shards, each with its own generator, spread over "
        "the processes; the samples depend on it, not on the process count (default: the number of processes)",
    )
    eval_prompts: int = Field(1024, gt=0)
    samples_to_save: int = Field(128, ge=0)
    lora: LoRAConfig | None = Field(
        None,
        description="train LoRA adapters (peft) instead of every weight, the reference being the adapter-disabled "
        "policy; {} for the defaults (docs/models.md)",
    )

    @model_validator(mode="after")
    def _check_kl_schedule(self) -> PPOConfig:
        if self.kl_schedule != "constant":
            if self.kl_coef_end is None:
                raise ValueError(f"ppo.kl_coef_end is required with ppo.kl_schedule={self.kl_schedule}")
            if self.kl_controller != "fixed":
                raise ValueError("ppo.kl_schedule needs ppo.kl_controller=fixed (adaptive sets beta itself)")
        return self


class BoNConfig(_Strict):
    """Best-of-n against the proxy from the SFT policy; KL = log n - (n-1)/n (analytic)."""

    policy_path: str | None = Field(None, description="default: <run_dir>/sft/model")
    reward_path: str | None = Field(None, description="default: <run_dir>/<arm>/reward/model")
    max_n: int = Field(
        64, ge=1, description="completions sampled per prompt; n sweeps powers of two up to max_n"
    )
    ns: list[int] | None = Field(
        None,
        description="the n to measure instead, each a divisor of max_n (every n is estimated from max_n / n "
        "disjoint groups): e.g. max_n 96 with 1 2 3 4 6 8 12 16 24 32 48 96 samples the peak region densely",
    )
    prompts: int = Field(512, gt=0)
    temperature: float = temperature_field()
    max_new_tokens: int = max_new_tokens_field()
    samples_to_save: int = Field(128, ge=0)

    @model_validator(mode="after")
    def _check_ns(self) -> BoNConfig:
        if self.ns is None:
            if self.max_n & (self.max_n - 1):
                raise ValueError("bon.max_n must be a power of two (or list the n to measure in bon.ns)")
        elif not self.ns or any(n < 1 or self.max_n % n for n in self.ns):
            raise ValueError(f"bon.ns must list divisors of bon.max_n={self.max_n}, got {self.ns}")
        return self

    def n_values(self) -> list[int]:
        """The n measured, ascending: ``ns``, or 1, 2, 4 .. ``max_n``."""
        if self.ns is not None:
            return sorted(set(self.ns))
        return [2**k for k in range(self.max_n.bit_length())]


class DPOConfig(DataLimits):
    """Direct preference optimization of the SFT policy on the arm's rater labels: one trainer, a loss per
    variant (``rewardlab.losses``): ``sigmoid`` (DPO; with ``label_smoothing`` > 0 conservative DPO),
    ``ipo``, ``robust`` (rDPO), ``hinge`` (SLiC) and ``simpo`` (reference-free), plus an optional NLL term.
    """

    policy_path: str | None = Field(None, description="policy to train; default: <run_dir>/sft/model")
    reference_path: str | None = Field(None, description="frozen reference; default: the policy's start")
    reward_path: str | None = Field(
        None, description="RM the audit scores with; default: <run_dir>/<arm>/reward/model"
    )
    data_path: str | None = Field(
        None, description="comparisons JSONL; default: <run_dir>/<arm>/label/train.jsonl"
    )
    eval_path: str | None = Field(
        None, description="held-out comparisons; default: <run_dir>/<arm>/label/eval.jsonl"
    )
    loss: Literal["sigmoid", "ipo", "robust", "hinge", "simpo"] = "sigmoid"
    beta: float = Field(0.1, gt=0, description="KL strength (IPO: tau; SimPO: reward scale, ~2)")
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5, description="cDPO epsilon (sigmoid), assumed flip rate (robust), smoothing (simpo)"
    )
    ipo_length_normalize: bool = Field(
        True, description="IPO on per-token log-ratios (TRL); false: the paper's"
    )
    simpo_gamma: float = Field(1.0, ge=0, description="SimPO target reward margin gamma")
    sft_weight: float = Field(
        0.0, ge=0, description="weight of the chosen per-token NLL (RPO alpha); 0 = off"
    )
    beta_sweep: list[float] = Field(
        default_factory=list,
        description="`rewardlab dpo` trains each beta into <name>-b<beta> (empty: one run)",
    )
    name: str = Field("dpo", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="stage folder name")
    steps: int = Field(
        300, gt=0, description="optimizer steps (the data is cycled in length-bucketed epochs)"
    )
    batch_size: int = Field(64, gt=0, description="pairs per step")
    optim: OptimConfig = OptimConfig(lr=1e-4, schedule="linear", warmup_steps=10)
    reference: Literal["precomputed", "live"] = Field(
        "precomputed",
        description="reference log-probs cached once per (reference, data), or a forward per step",
    )
    packing: Literal["shared_prompt", "none"] = Field(
        "shared_prompt", description="one row per pair, prompt encoded once (4D mask); none: 2 rows per pair"
    )
    drop_ties: bool = Field(True, description="train on pairs the rater did not call a tie only")
    cache_dir: str | None = Field(
        None, description="reference log-prob cache; default: <run_dir>/<arm>/cache"
    )
    eval_every: int = Field(50, gt=0, description="audit and implicit-reward evaluation cadence (steps)")
    eval_prompts: int = Field(1024, gt=0)
    eval_pairs: int = Field(
        2048, gt=0, description="held-out comparisons the implicit reward is scored on (at most)"
    )
    temperature: float = temperature_field()
    max_new_tokens: int = max_new_tokens_field()
    samples_to_save: int = Field(128, ge=0)
    checkpoint_every: int = Field(
        50,
        ge=0,
        description="save training state every N steps (and at the end) for --resume; 0: never; "
        "iterated DPO saves at the end of each round",
    )
    lora: LoRAConfig | None = Field(
        None,
        description="train LoRA adapters (peft) instead of every weight, the reference being the adapter-disabled "
        "policy; {} for the defaults (docs/models.md)",
    )

    @model_validator(mode="after")
    def _check_sweep(self) -> DPOConfig:
        if any(b <= 0 for b in self.beta_sweep):
            raise ValueError("dpo.beta_sweep values must be > 0")
        return self


class IterativeDPOConfig(_Strict):
    """Iterated (online) DPO: k rounds of sampling pairs from the current policy on fresh prompts,
    labelling them with the arm's simulated rater and DPO (loss, beta, batch size, optimizer from ``dpo``)."""

    rounds: int = Field(3, gt=0)
    prompts_per_round: int = Field(2048, gt=0, description="fresh prompts per round, one pair each")
    steps_per_round: int = Field(40, gt=0)
    reference: Literal["initial", "previous"] = Field(
        "initial", description="DPO reference: the starting policy, or the previous round's policy"
    )
    temperature: float = Field(1.0, gt=0, description="sampling temperature of the pairs")
    max_new_tokens: int = max_new_tokens_field()
    name: str = Field("dpo-iter", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="stage folder name")


class MODPOConfig(_Strict):
    """MODPO (Zhou et al. 2023): DPO on the rater labels with a second, fixed reward, for several weightings."""

    weights: list[float] = Field(
        default_factory=lambda: [1.0, 0.8, 0.6, 0.4, 0.2],
        description="w on the rater preference; 1 - w on the second reward (w = 1 is DPO)",
    )
    second_reward: Literal["brevity", "reward_model"] = Field(
        "brevity",
        description="brevity: -brevity_scale * words; reward_model: a trained RM's normalized score",
    )
    brevity_scale: float = Field(0.2, gt=0, description="reward per word removed")
    second_reward_path: str | None = Field(None, description="RM folder for second_reward=reward_model")
    steps: int | None = Field(None, gt=0, description="steps per weighting; default dpo.steps")
    name: str = Field("modpo", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="stage folder name")

    @model_validator(mode="after")
    def _check_weights(self) -> MODPOConfig:
        if not self.weights or any(not 0 < w <= 1 for w in self.weights):
            raise ValueError("modpo.weights must be a non-empty list of values in (0, 1]")
        if self.second_reward == "reward_model" and not self.second_reward_path:
            raise ValueError("modpo.second_reward_path is required when second_reward is reward_model")
        return self


class OfflineMethodConfig(_Strict):
    """Per-method overrides of the shared offline training settings (unset: ``offline.<key>``)."""

    steps: int | None = Field(None, gt=0, description="overrides offline.steps")
    optim: OptimConfig | None = Field(None, description="overrides offline.optim")
    eval_every: int | None = Field(None, gt=0, description="overrides offline.eval_every")


class FilteredMLEConfig(OfflineMethodConfig):
    """Filtered MLE (Hu et al. 2023): SFT on the offline samples the proxy ranks in its top ``fraction``."""

    fraction: float = Field(0.25, gt=0, le=1, description="share of the samples kept (the proxy's top)")
    scope: Literal["global", "prompt"] = Field(
        "global", description="quantile over the whole dataset, or within each prompt's samples (best-of-k)"
    )


class RWRConfig(OfflineMethodConfig):
    """Reward-weighted regression: SFT on every sample weighted by exp(proxy / temperature)."""

    temperature: float = Field(0.5, gt=0, description="T in exp(proxy / T); the proxy has std 1 on SFT")
    max_weight: float = Field(20.0, gt=0, description="clip of the weights (normalised to mean 1 first)")


class RewardConditionedConfig(OfflineMethodConfig):
    """Decision-transformer-style training: a reward-quantile token in the prompt; generate with the top one.

    The reward tokens are new, and the policy learns to read them only after a few hundred steps (on the
    default task: no effect of the token before ~300 steps at lr 1e-3), hence its own longer, faster run.
    """

    num_tokens: int = Field(4, ge=2, le=16, description="quantile bins, a prompt token each: <r0> .. <rK-1>")
    steps: int | None = Field(800, gt=0, description="overrides offline.steps")
    optim: OptimConfig | None = Field(
        OptimConfig(lr=1e-3, schedule="constant", warmup_steps=0), description="overrides offline.optim"
    )
    eval_every: int | None = Field(80, gt=0, description="overrides offline.eval_every")


class ALoLConfig(OfflineMethodConfig):
    """A-LoL (Baheti et al. 2024): advantage-weighted offline policy gradient, negative advantages dropped."""

    variant: Literal["alol", "alol_seq", "ref_free"] = Field(
        "alol", description="importance weight per sequence (alol), per token (alol_seq) or none (ref_free)"
    )
    clip: float = Field(0.9, gt=0, description="importance weights are clipped to [1 - clip, 1 + clip]")


class PHFConfig(_Strict):
    """Pretraining with human feedback, conditional training (Korbak et al. 2023) on the pretraining corpus.

    Each corpus document is scored by the arm's proxy and tagged ``<good>`` (top ``good_fraction``) or
    ``<bad>``; the LM is pretrained on the tagged documents and generates conditioned on ``<good>``.
    """

    init_path: str | None = Field(None, description="start from this causal LM; default: from scratch")
    steps: int = steps_field(1000)
    batch_size: int = Field(128, gt=0)
    optim: OptimConfig = OptimConfig(lr=3e-3, weight_decay=0.01, warmup_steps=50)
    good_fraction: float = Field(0.5, gt=0, lt=1, description="share of documents tagged <good>")
    calibration_docs: int = Field(4096, ge=16, description="documents scored to fix the <good> threshold")
    eval_every: int = eval_every_field(250)
    eval_prompts: int = Field(512, gt=0)
    checkpoint_every: int = checkpoint_every_field(250)


class OfflineConfig(_Strict):
    """Offline RLHF from a fixed dataset scored once by the proxy (never by gold).

    Responses are sampled from the SFT policy on training prompts (and/or taken from the arm's labelled
    pairs), scored by the arm's reward model and cached in ``<run_dir>/<arm>/offline-data``; filtered
    MLE, RWR, reward-conditioned training and A-LoL then train on that one dataset.
    """

    policy_path: str | None = Field(None, description="policy, reference and sampler; default: SFT")
    reward_path: str | None = Field(None, description="proxy; default: <run_dir>/<arm>/reward/model")
    data: Literal["policy", "labels", "both"] = Field(
        "policy", description="policy samples, the arm's label/train.jsonl pairs, or both"
    )
    prompts: int = Field(2048, gt=0, description="training prompts the policy is sampled on")
    samples_per_prompt: int = Field(4, ge=1)
    value_samples: int = Field(4, ge=1, description="reference samples per prompt for V_ref(x) (A-LoL)")
    temperature: float = temperature_field()
    max_new_tokens: int = max_new_tokens_field()
    eval_fraction: float = Field(0.05, gt=0, lt=1, description="prompts held out for eval/loss")
    steps: int = Field(200, gt=0, description="optimizer steps")
    batch_size: int = Field(64, gt=0)
    optim: OptimConfig = OptimConfig(lr=1e-4, schedule="constant", warmup_steps=0)
    kl_estimator: Literal["k1", "k2", "k3"] = Field("k1", description="the audit's KL estimator")
    eval_every: int = eval_every_field(20)
    eval_prompts: int = Field(1024, gt=0)
    samples_to_save: int = Field(128, ge=0)
    checkpoint_every: int = checkpoint_every_field(50)
    filtered_mle: FilteredMLEConfig = FilteredMLEConfig()
    rwr: RWRConfig = RWRConfig()
    reward_conditioned: RewardConditionedConfig = RewardConditionedConfig()
    alol: ALoLConfig = ALoLConfig()
    phf: PHFConfig = PHFConfig()


class DPHConfig(_Strict):
    """Direct Preference Heads (Hadji-Kyriacou & Arandjelović 2024): a small reward head on the frozen SFT
    policy's final hidden state, trained on the arm's rater labels (``losses.dph_loss``), then used at inference
    to rerank n samples of the unchanged policy. Sampling (n = 1, 2, 4 .. ``bon.max_n``, ``bon.prompts``,
    temperature, length) is the ``bon`` section's, with best-of-n's seed: the same samples, so DPH-rerank and
    best-of-n against the separate reward model differ only in who picks (docs/dph-ift.md)."""

    policy_path: str | None = Field(None, description="the frozen policy; default: <run_dir>/sft/model")
    reward_path: str | None = Field(
        None, description="RM the audit scores with (proxy); default: <run_dir>/<arm>/reward/model"
    )
    data_path: str | None = Field(None, description="comparisons JSONL; default: <arm>/label/train.jsonl")
    eval_path: str | None = Field(None, description="held-out comparisons; default: <arm>/label/eval.jsonl")
    loss: Literal["contrastive", "separable"] = Field("contrastive", description="the paper's two objectives")
    label_smoothing: float = Field(0.1, ge=0, lt=0.5, description="cDPO epsilon: assumed label-flip rate")
    pooler: bool = Field(True, description="dense + tanh before the scalar output; false: one linear layer")
    epochs: int = Field(10, gt=0, description="passes over the pairs (the head trains on cached features)")
    batch_size: int = Field(64, gt=0, description="pairs per step")
    optim: OptimConfig = OptimConfig(lr=1e-3, weight_decay=0.01, warmup_steps=10)
    drop_ties: bool = Field(True, description="train on pairs the rater did not call a tie only")
    eval_pairs: int = Field(2048, gt=0, description="held-out comparisons the head is scored on (at most)")
    feature_batch_size: int = Field(64, gt=0, description="sequences per forward when reading hidden states")
    samples_to_save: int = Field(128, ge=0)


class IFTConfig(_Strict):
    """Intuitive Fine-Tuning (Hua et al. 2024): SFT and preference optimization as one token-level process, from
    the base model on positive data only: inputs mix the demonstration's and the model's own greedy prediction's
    embeddings (``lam``), and each token's NLL is weighted by the discounted loss of the tokens after it
    (``gamma``); ``losses.ift_loss``. Audited like the other optimizers (KL to the SFT model)."""

    model_path: str | None = Field(None, description="model to train; default: <run_dir>/pretrain/model")
    reference_path: str | None = Field(None, description="audit KL reference; default: <run_dir>/sft/model")
    reward_path: str | None = Field(
        None, description="RM the audit scores with (proxy); default: <run_dir>/<arm>/reward/model"
    )
    data: Literal["demos", "chosen", "both"] = Field(
        "both", description="demonstrations (the SFT stage's), the chosen side of the arm's labels, or both"
    )
    demos_path: str | None = Field(None, description="demos JSONL; default: <run_dir>/sft/demos.jsonl")
    labels_path: str | None = Field(None, description="comparisons JSONL; default: <arm>/label/train.jsonl")
    lam: float = Field(0.2, ge=0, le=1, description="lambda: weight of the greedy prediction in the input")
    gamma: float = Field(0.95, ge=0, le=1, description="discount of the future loss in the token weights")
    freeze_input_embeddings: bool | None = Field(
        None,
        description="read e(y_t), e(ŷ_t) from a frozen copy of the input table (true), the live table (false); "
        "default: frozen only when the table is not tied to the LM head (a tied table moves with the head, so a "
        "frozen copy would train the model on inputs it never sees when it samples)",
    )
    steps: int | None = Field(None, gt=0, description="optimizer steps; default: sft.steps + dpo.steps")
    batch_size: int = Field(64, gt=0)
    optim: OptimConfig = OptimConfig(lr=1e-3, warmup_steps=20)
    eval_every: int = eval_every_field(100)
    eval_prompts: int = Field(512, gt=0)
    temperature: float = temperature_field()
    max_new_tokens: int = max_new_tokens_field()
    samples_to_save: int = Field(128, ge=0)


#: Optimizers ``rewardlab run`` can apply to an arm (each also a ``rewardlab`` subcommand): the registry's.
MethodName = Literal[OPTIMIZERS]  # type: ignore[valid-type]


class AuditEvalsConfig(_Strict):
    """Behaviour evaluations (``rewardlab eval``'s sets, docs/evals.md) run by the audit of every optimizer,
    so their curves sit next to proxy and gold: ``eval/<set>`` columns in ``audit.jsonl`` and a report figure."""

    sets: str | None = Field(
        None,
        description="comma-separated sets, groups or globs as `rewardlab eval --sets` (e.g. "
        "anthropic/human/survival-instinct,truthfulqa); none: off",
    )
    limit: int = Field(50, gt=0, description="items per set")
    every: int = Field(
        1, gt=0, description="run at every N-th audit row (the first and N-th, 2N-th ... rows)"
    )
    data_dir: str | None = Field(None, description="default: $REWARDLAB_DATA, else ../shared/data")
    max_new_tokens: int = Field(128, gt=0, description="GSM8K generation length")
    batch_size: int = Field(16, gt=0)


class PipelineConfig(_Strict):
    """A whole experiment: shared settings plus one section per stage."""

    seed: int = 0
    resume: bool = Field(
        False,
        description="trainers continue from <stage>.partial/checkpoint when there is one (docs/run-folders.md)",
    )
    allow_config_change: bool = Field(
        False,
        description="with resume: accept changes to fields that alter only what is measured (RESUME_MEASUREMENT)",
    )
    run_dir: str = "runs/default"
    threads: int = Field(2, ge=0, description="torch threads (0 = torch's default)")
    dtype: DType = Field(
        "float32",
        description="weights of the causal LMs the policy stages load: float32, bfloat16, or auto (bf16 only "
        "where the device computes it natively); losses and log-probs stay float32 (docs/models.md)",
    )
    precision: Precision = Field(
        "float32",
        description="what the training loops compute in: float32, bf16-mixed (autocast to bf16, float32 weights "
        "and optimizer state; sampling stays float32), or auto (bf16-mixed only where the device computes bf16 "
        "natively); docs/models.md",
    )
    arm_processes: int = Field(
        0,
        ge=0,
        description="arms `rewardlab run` trains at once, each in its own process with threads // arm_processes "
        "torch threads; 0 = one per thread (2 with threads 2), 1 = one after another in this process",
    )
    report_to: list[Literal["tensorboard"]] = Field(default_factory=list, description="besides metrics.jsonl")
    audit_evals: AuditEvalsConfig = Field(
        default_factory=AuditEvalsConfig,
        description="behaviour evaluations the audit runs on a schedule during optimization (docs/evals.md)",
    )
    controls: list[str | dict[str, Any]] = Field(
        default_factory=lambda: ["unbiased"],
        description="control arms `rewardlab run` also runs: a rater preset name, or label overrides "
        "({name, source, rater, file}); [] for none",
    )
    methods: list[MethodName] = Field(
        default_factory=lambda: ["ppo", "bon"],
        description="optimizers `rewardlab run` applies to each arm, in this order (configs/compare.yaml: all)",
    )
    task: TaskSpec = Field(default_factory=lambda: TASKS["arithmetic"][0]())
    pretrain: PretrainConfig = PretrainConfig()
    sft: SFTConfig = SFTConfig()
    label: LabelConfig = LabelConfig()
    reward: RewardConfig = RewardConfig()
    ppo: PPOConfig = PPOConfig()
    bon: BoNConfig = BoNConfig()
    offline: OfflineConfig = OfflineConfig()
    dpo: DPOConfig = DPOConfig()
    iterative_dpo: IterativeDPOConfig = IterativeDPOConfig()
    modpo: MODPOConfig = MODPOConfig()
    dph: DPHConfig = DPHConfig()
    ift: IFTConfig = IFTConfig()
    slcai: SLCAIConfig = Field(
        default_factory=SLCAIConfig,
        description="SL-CAI: critique -> revision rounds, SFT on revisions (docs/rlaif.md)",
    )

    @field_validator("task", mode="before")
    @classmethod
    def _default_kind(cls, v: Any) -> Any:
        return with_default_kind(v)

    @model_validator(mode="after")
    def _check(self) -> PipelineConfig:
        task = self.build_task()
        # Task-owned sections are validated by the task's own models and stored resolved.
        for section, key, cap in (
            (self.pretrain, "corpus", "corpus_config"),
            (self.sft, "demos", "demos_config"),
        ):
            where = f"{'pretrain' if section is self.pretrain else 'sft'}.{key}"
            try:
                section.__dict__[key] = validate_section(
                    getattr(task, cap, None), getattr(section, key), where
                )
            except ValidationError as e:
                raise ValueError("; ".join(_error_lines(e, prefix=f"{where}."))) from None
        if self.label.source == "simulated":
            self.label.__dict__["rater"] = self.label.rater.resolve(task.rater_presets())
        pw = self.label.policy_weights
        if self.label.policy_paths is not None and len(self.label.policy_paths) != len(pw):
            raise ValueError("label.policy_weights must have one weight per entry of label.policy_paths")
        if any(w < 0 for w in pw) or sum(pw) <= 0:
            raise ValueError("label.policy_weights must be non-negative and not all zero")
        group = [m for m in self.methods if METHODS[m].advantage in ("rloo", "grpo")]
        if self.ppo.advantage in ("rloo", "grpo"):
            group.append(self.ppo.advantage)
        if group and self.ppo.samples_per_prompt < 2:
            raise ValueError(
                f"ppo.samples_per_prompt must be >= 2 for {'/'.join(dict.fromkeys(group))} "
                f"(a leave-one-out or group baseline needs 2 samples per prompt), got "
                f"{self.ppo.samples_per_prompt}"
            )
        return self

    SHARED_STAGES: ClassVar[tuple[str, ...]] = ("pretrain", "sft")

    def build_task(self) -> Task:
        """The task this config describes."""
        return build_task(self.task)

    @property
    def arm_name(self) -> str:
        """``label.name``, else the rater preset (simulated) or the source."""
        if self.label.name:
            return self.label.name
        return self.label.rater.preset if self.label.source == "simulated" else self.label.source

    @property
    def arm(self) -> str:
        """The arm of an experiment: its feedback source's name and the seed (e.g. ``time-pressed-s0``)."""
        return f"{self.arm_name}-s{self.seed}"

    def arm_info(self) -> dict[str, Any]:
        """What ``<arm>/arm.json`` records: name, role (treatment or control), source, preset, seed."""
        return {"name": self.arm_name, "role": self.label.role, "source": self.label.source,
                "preset": self.label.rater.preset if self.label.source == "simulated" else None,
                "seed": self.seed}  # fmt: skip

    def control_arm(self, control: str | dict[str, Any]) -> PipelineConfig:
        """This config with the label section of one ``controls`` entry (a preset name or label overrides)."""
        label = {"rater": {"preset": control}} if isinstance(control, str) else dict(control)
        if "source" not in label and "file" not in label:
            label["source"] = "simulated"
        data = self.model_dump(mode="json")
        base = {
            k: v for k, v in data["label"].items() if k not in ("name", "rater", "role", "source", "file")
        }
        data["label"] = {**base, **label, "role": "control"}
        if isinstance(data["label"].get("rater"), dict):
            data["label"]["rater"] = {k: v for k, v in data["label"]["rater"].items()}
        try:
            return PipelineConfig.model_validate(data)
        except ValidationError as e:
            raise RewardlabError(_format_validation_error(e, f"controls entry {control!r}")) from None
        except RewardlabError as e:
            raise RewardlabError(f"controls entry {control!r}: {e}") from None

    def check_resume(self, stage: str, old: dict[str, Any]) -> list[str]:
        """Compare this config with ``old`` (the one the interrupted ``stage`` started with) before ``--resume``.

        Only what the stage reads is compared: the top-level settings, ``task`` and the stage's section.
        A change to a :data:`RESUME_INERT` field is accepted, one to a :data:`RESUME_MEASUREMENT` field
        only with ``--allow-config-change``; any other change alters training (the weights follow the old
        config) and is refused, naming each field. Returns the accepted changes as lines for the log.
        """
        changes = _diff(_resume_view(old, stage), _resume_view(self.model_dump(mode="json"), stage))
        accepted, measured, refused = [], [], []
        for key, a, b in changes:
            if key in ("resume", "allow_config_change"):
                continue  # the flags of this very command
            line = f"{key}: {a!r} -> {b!r}"
            if _matches(key, RESUME_INERT):
                accepted.append(line)
            elif _matches(key, RESUME_MEASUREMENT):
                measured.append(line)
            else:
                refused.append(line)
        if refused:
            raise RewardlabError(
                f"{stage}: --resume with a config that changes training (the checkpoint follows the old one):\n"
                + "\n".join(f"  {x}" for x in refused)
                + "\nput the old values back, or start the stage again without --resume"
            )
        if measured and not self.allow_config_change:
            raise RewardlabError(
                f"{stage}: --resume with a config that changes what is measured:\n"
                + "\n".join(f"  {x}" for x in measured)
                + "\nadd --allow-config-change to accept it (the weights are unaffected), or put the old values back"
            )
        return accepted + measured

    def stage_dir(self, stage: str) -> Path:
        """``<run_dir>/<stage>`` for the shared base models (pretrain, sft); ``<run_dir>/<arm>/<stage>`` else.

        Every arm (rater preset x seed) of one experiment shares the pretrained and SFT models.
        """
        if stage in self.SHARED_STAGES:
            return Path(self.run_dir) / stage
        return Path(self.run_dir) / self.arm / stage


#: Config fields (dotted; ``*`` matches a section) that never change what a stage computes: a change on
#: ``--resume`` is accepted and logged.
RESUME_INERT = ("resume", "allow_config_change", "threads", "arm_processes", "report_to", "run_dir",
                "*.checkpoint_every")  # fmt: skip
#: Fields that change what is measured but not the weights (evaluation cadence and size, samples kept):
#: a change on ``--resume`` needs ``--allow-config-change``.
RESUME_MEASUREMENT = ("*.eval_every", "*.eval_prompts", "*.samples_to_save")
#: Sections a stage reads besides its own (the DPO variants reuse the DPO settings).
_ALSO_READS = {"iterative_dpo": ("dpo",), "modpo": ("dpo",)}


def _resume_view(data: dict[str, Any], stage: str) -> dict[str, Any]:
    """The part of a dumped config that ``stage`` reads: top-level scalars, ``task`` and its section(s)."""
    import re

    base = re.sub(r"-[bw][0-9.e+-]+$", "", stage)  # a DPO beta-sweep or MODPO weight run: its method's view
    if base not in METHODS:
        base = "dpo" if base != stage else base
    if base not in METHODS:
        return data
    section = METHODS[base].section
    keep = {"task", section, *_ALSO_READS.get(section, ())}
    return {k: v for k, v in data.items() if k in keep or not isinstance(v, dict | list)}


def _diff(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted key, old, new)`` for every leaf that differs (a missing side is None)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in dict.fromkeys([*old, *new]):
            out += _diff(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [] if old == new else [(prefix.rstrip("."), old, new)]


def _matches(key: str, patterns: tuple[str, ...]) -> bool:
    import fnmatch

    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a","b","c"], yaml-parsed value)."""
    if "=" not in item:
        raise RewardlabError(f"--set {item!r}: expected key=value")
    key, raw = item.split("=", 1)
    keys = key.strip().split(".")
    if not all(keys):
        raise RewardlabError(f"--set {item!r}: empty key")
    return keys, yaml.safe_load(raw)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        keys, value = parse_override(item)
        node = data
        for k in keys[:-1]:
            nxt = node.get(k)
            if nxt is None:
                nxt = node[k] = {}
            if not isinstance(nxt, dict):
                raise RewardlabError(f"--set {item!r}: {k} is not a section")
            node = nxt
        node[keys[-1]] = value
    return data


def _error_lines(err: ValidationError, prefix: str = "") -> list[str]:
    """``dotted.field: message`` per error; a model-level check's message already names its field."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        if not loc and e["type"] == "value_error":
            lines.append(msg.removeprefix("Value error, "))
        else:
            lines.append(f"{prefix}{loc or '(root)'}: {msg}")
    return lines


def _format_validation_error(err: ValidationError, source: str) -> str:
    return "\n".join([f"{source}: invalid config", *(f"  {line}" for line in _error_lines(err))])


def merge_sections(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` laid on ``base``: mappings merge key by key (recursively), any other value replaces."""
    out = dict(base)
    for key, value in over.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merge_sections(out[key], value) if both else value
    return out


def read_config_file(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML config file as a mapping; ``extends: OTHER.yaml`` (relative to the file) reads OTHER first and lays
    this file's sections on it (:func:`merge_sections`), so a variant states only what it changes."""
    text = read_text_file(path, "config file")
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise RewardlabError(f"{path}: malformed YAML ({e})") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise RewardlabError(f"{path}: top level must be a mapping of sections")
    data: dict[str, Any] = loaded or {}
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str) or not parent:
        raise RewardlabError(f"{path}: extends must be the path of another config file")
    base, chain = (path.parent / parent).resolve(), (*seen, path.resolve())
    if base in chain:
        raise RewardlabError(
            f"{path}: extends {parent} makes a cycle ({' -> '.join(map(str, (*chain, base)))})"
        )
    return merge_sections(read_config_file(base, chain), data)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    """Load a YAML config (or the defaults when ``path`` is None; ``extends:`` a base file, see
    :func:`read_config_file`) and apply ``--set`` overrides."""
    data: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        data = read_config_file(Path(path))
    data = apply_overrides(data, overrides or [])
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as e:
        raise RewardlabError(_format_validation_error(e, source)) from None


def revalidate(cfg: PipelineConfig, source: str) -> PipelineConfig:
    """``cfg`` validated again as a whole (after a field was set in code), errors naming ``source``."""
    try:
        return PipelineConfig.model_validate(cfg.model_dump(mode="json"))
    except ValidationError as e:
        raise RewardlabError(_format_validation_error(e, source)) from None


def dump_config(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
