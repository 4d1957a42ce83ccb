"""Typed, validated configs for every stage, loaded from YAML with ``--set key=value`` overrides.

One YAML file describes a whole experiment (``configs/default.yaml``); each stage command reads its
own section and the shared ``seed``, ``task`` and ``run_dir``. Unknown keys, wrong types and bad
values are errors that name the file and the dotted field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rewardlab.feedback.raters import RaterConfig
from rewardlab.policies.models import ModelConfig
from rewardlab.tasks.arithmetic import CorpusConfig, DemoConfig, TaskConfig
from rewardlab.utils import RewardlabError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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
    corpus: CorpusConfig = CorpusConfig()
    steps: int = Field(1000, gt=0)
    batch_size: int = Field(128, gt=0)
    optim: OptimConfig = OptimConfig(lr=3e-3, weight_decay=0.01, warmup_steps=50)
    eval_every: int = Field(250, gt=0)
    eval_prompts: int = Field(512, gt=0, description="held-out prompts to measure parse rate and gold")


class SFTConfig(_Strict):
    """Supervised fine-tuning on expert demonstrations with completion-only loss."""

    model_path: str | None = Field(None, description="base model folder; default: <run_dir>/pretrain/model")
    demos: DemoConfig = DemoConfig()
    data_path: str | None = Field(None, description="JSONL of {prompt, completion}; default: sampled demos")
    num_demos: int = Field(20000, gt=0)
    steps: int = Field(400, gt=0)
    batch_size: int = Field(64, gt=0)
    packing: Literal["bucket", "none"] = Field("bucket", description="group examples of similar length")
    optim: OptimConfig = OptimConfig(lr=1e-3, warmup_steps=20)
    eval_fraction: float = Field(0.05, gt=0, lt=1)
    eval_every: int = Field(100, gt=0)
    eval_prompts: int = Field(512, gt=0)


class LabelConfig(_Strict):
    """Sample response pairs from policies and have simulated raters compare them."""

    rater: RaterConfig = RaterConfig()
    num_prompts: int = Field(12000, gt=0)
    policy_paths: list[str] | None = Field(
        None, description="policies to sample from; default: [<run_dir>/sft/model, <run_dir>/pretrain/model]"
    )
    policy_weights: list[float] = Field([0.5, 0.5], description="share of pairs drawn from each policy")
    temperature: float = Field(1.0, gt=0)
    max_new_tokens: int = Field(20, gt=0)
    k: int = Field(2, ge=2, description="completions per prompt; k > 2 also writes K-wise rankings")
    drop_identical: bool = True
    eval_fraction: float = Field(0.1, gt=0, lt=1)
    batch_size: int = Field(256, gt=0)


class RewardConfig(_Strict):
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
    optim: OptimConfig = OptimConfig(lr=5e-4, warmup_steps=20)
    normalize_prompts: int = Field(1024, gt=0, description="SFT samples to normalize rewards on")
    verifier: bool = Field(
        True, description="add a learned weight on a frozen LM's log-prob of the final answer"
    )
    verifier_path: str | None = Field(None, description="the verifier LM; default: <run_dir>/sft/model")
    normalize_policy_path: str | None = Field(
        None, description="policy sampled for normalization; default SFT"
    )
    eval_every: int = Field(200, gt=0)


class PPOConfig(_Strict):
    """Policy optimization against the proxy with a KL penalty to the reference (SFT) policy.

    ``advantage: gae`` is PPO with a value model (Ouyang et al. 2022); ``rloo`` and ``grpo`` use the same
    rollouts and update with a sequence-level baseline instead of a critic (Ahmadian et al. 2024;
    Shao et al. 2024).
    """

    policy_path: str | None = Field(None, description="policy and reference; default: <run_dir>/sft/model")
    reward_path: str | None = Field(None, description="proxy; default: <run_dir>/<arm>/reward/model")
    advantage: Literal["gae", "rloo", "grpo"] = "gae"
    steps: int = Field(120, gt=0, description="rollout + update iterations")
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
    grpo_eps: float = Field(1e-4, gt=0, description="GRPO: A = (r - mean) / (std + eps)")
    grpo_scale: Literal["group", "batch", "none"] = "group"
    value_model: Literal["separate", "shared"] = Field(
        "separate", description="critic: own trunk or policy's"
    )
    value_init: Literal["reward", "policy"] = Field("reward", description="separate critic initialised from")
    missing_eos: Literal["penalty", "replace", "none"] = Field("penalty", description="responses without EOS")
    missing_eos_penalty: float = Field(1.0, description="subtracted from the score (penalty)")
    missing_eos_score: float = Field(-3.0, description="the score given (replace)")
    score: Literal["mean", "conservative"] = Field(
        "mean", description="ensemble proxy: mean or mean - alpha*std"
    )
    temperature: float = Field(1.0, gt=0)
    max_new_tokens: int = Field(20, gt=0)
    eval_every: int = Field(10, gt=0)
    eval_prompts: int = Field(1024, gt=0)
    samples_to_save: int = Field(128, ge=0)


class BoNConfig(_Strict):
    """Best-of-n against the proxy from the SFT policy; KL = log n - (n-1)/n (analytic)."""

    policy_path: str | None = Field(None, description="default: <run_dir>/sft/model")
    reward_path: str | None = Field(None, description="default: <run_dir>/<arm>/reward/model")
    max_n: int = Field(64, ge=1, description="n sweeps powers of two up to max_n")
    prompts: int = Field(512, gt=0)
    temperature: float = Field(1.0, gt=0)
    max_new_tokens: int = Field(20, gt=0)
    samples_to_save: int = Field(128, ge=0)


class PipelineConfig(_Strict):
    """A whole experiment: shared settings plus one section per stage."""

    seed: int = 0
    run_dir: str = "runs/default"
    threads: int = Field(2, ge=0, description="torch threads (0 = torch's default)")
    report_to: list[Literal["tensorboard"]] = Field(default_factory=list, description="besides metrics.jsonl")
    controls: list[Literal["unbiased", "time-pressed", "sycophancy-prone"]] = Field(
        default_factory=lambda: ["unbiased"],
        description="rater presets `rewardlab run` also runs as controls",
    )
    methods: list[Literal["ppo", "rloo", "grpo", "bon"]] = Field(
        default_factory=lambda: ["ppo", "bon"], description="optimizers `rewardlab run` applies to each arm"
    )
    task: TaskConfig = TaskConfig()
    pretrain: PretrainConfig = PretrainConfig()
    sft: SFTConfig = SFTConfig()
    label: LabelConfig = LabelConfig()
    reward: RewardConfig = RewardConfig()
    ppo: PPOConfig = PPOConfig()
    bon: BoNConfig = BoNConfig()

    @model_validator(mode="after")
    def _check(self) -> PipelineConfig:
        pw = self.label.policy_weights
        if self.label.policy_paths is not None and len(self.label.policy_paths) != len(pw):
            raise ValueError("label.policy_weights must have one weight per entry of label.policy_paths")
        if any(w < 0 for w in pw) or sum(pw) <= 0:
            raise ValueError("label.policy_weights must be non-negative and not all zero")
        if self.ppo.advantage in ("rloo", "grpo") and self.ppo.samples_per_prompt < 2:
            raise ValueError("ppo.samples_per_prompt must be >= 2 for rloo/grpo")
        if self.bon.max_n & (self.bon.max_n - 1):
            raise ValueError("bon.max_n must be a power of two")
        return self

    SHARED_STAGES: ClassVar[tuple[str, ...]] = ("pretrain", "sft")

    @property
    def arm(self) -> str:
        """The arm of an experiment: the rater preset and the seed (e.g. ``time-pressed-s0``)."""
        return f"{self.label.rater.preset}-s{self.seed}"

    def stage_dir(self, stage: str) -> Path:
        """``<run_dir>/<stage>`` for the shared base models (pretrain, sft); ``<run_dir>/<arm>/<stage>`` else.

        Every arm (rater preset x seed) of one experiment shares the pretrained and SFT models.
        """
        if stage in self.SHARED_STAGES:
            return Path(self.run_dir) / stage
        return Path(self.run_dir) / self.arm / stage


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


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid config"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(root)"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    """Load a YAML config (or the defaults when ``path`` is None) and apply ``--set`` overrides."""
    data: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise RewardlabError(f"{p}: config file not found")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise RewardlabError(f"{p}: malformed YAML ({e})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise RewardlabError(f"{p}: top level must be a mapping of sections")
        data = loaded or {}
    data = apply_overrides(data, overrides or [])
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as e:
        raise RewardlabError(_format_validation_error(e, source)) from None


def dump_config(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
