"""rewardlab against TRL 1.16, side by side in one run: DPO, reward model, SFT, GRPO/PPO and the sampler.

    python benchmarks/bench_trl.py                 # the full suite (make bench)
    python benchmarks/bench_trl.py --quick         # short runs, for development
    python benchmarks/bench_trl.py --only sft,rm --sizes 1m --repeats 3

Both sides train the same local Llama models (~1M and ~11M params, saved once and loaded with
``from_pretrained``) on the same synthetic data (2,000 pairs, ~62 real tokens per sequence, see
``bench_assets.py``), fp32, 8 samples per optimizer step, no gradient checkpointing, each run in its
own subprocess with the same torch thread count on both sides (set before any work), so each run's
peak RSS (``getrusage`` in the child) is its own. ``--threads 1,2`` (the default) runs the whole table at
one thread per run, then at two (this machine's cores, ``rewardlab``'s default here), and prints both
tables and their median ratios side by side. For CPUs with native bf16 (the machine line says):
``--dtype bf16-mixed`` keeps float32 weights and computes the training loops in bf16 (rewardlab's
``precision: bf16-mixed``, TRL's ``bf16=True``: both autocast); ``--dtype bfloat16`` loads every trained
causal LM in bf16 on both sides (TRL also with ``bf16=True``) and accepts greedy differences between the
sampler and ``generate`` (bf16 logits tie: top-2 gaps of 0 or 1 ulp). Rows that do not apply are skipped
with the reason (``SKIPPED``). The runs of a pair alternate
(A B, B A, A B, ...) over ``--repeats`` so that drifts in machine load hit both sides alike; the
ratio rewardlab/TRL is taken within each repeat and reported as min/median/max.

Rates exclude warm-up: they run from the end of step ``--warmup`` to the end of the last step
(TRL: ``on_step_end`` timestamps; rewardlab: the same points of its loops). A *sample* is a pair
(DPO, reward), a prompt+completion sequence (SFT) or a generated completion (GRPO/PPO: 2 prompts x
4 generations of up to 48 new tokens). tokens/s counts non-pad tokens of the policy's input as the
data defines them (prompt + completion for each sequence; DPO and reward: chosen and rejected
sequences, each with its prompt, even where rewardlab shares the prompt), so it is samples/s times
the mean tokens per sample; GRPO/PPO count prompt plus generated tokens actually produced. Setup is
from the top of the child to just before the first training step (imports, loading, tokenisation,
trainer construction, TRL's reference precompute over all 2,000 pairs).

Pairs: DPO (reference log-probs precomputed on both sides) vs ``DPOTrainer``; reward-model training
(``reward.shared_prompt: true``: one row per pair, the prompt encoded once, as DPO packs) vs
``RewardTrainer``; SFT (completion-only loss) vs ``SFTTrainer``; rewardlab GRPO (advantage
``grpo``, one update per rollout, no KL, like TRL's defaults) and full PPO (a value head on the
policy's trunk, GAE, 2 epochs x 2 minibatches, KL to a reference) both vs ``GRPOTrainer`` (``beta=0``, same prompts per
step), both with ``ppo.shared_prompt: true`` (each prompt encoded once in the training and reference forwards,
its 4 completions after it behind a block mask); the rollout sampler vs ``model.generate`` (both in one process, alternating calls, greedy
outputs asserted identical).

``ppo-trl``: full PPO against a real ``PPOTrainer``. TRL 1.16 has none (moved to ``trl.experimental`` and
deleted in 2026-09, huggingface/trl#7020), so that side runs ``bench_trl_ppo.py`` under the Python of its
own virtual environment (``--trl-ppo-python``, default ``.venv-trl-ppo/bin/python``, made by
``benchmarks/trl_ppo_env.sh`` = ``make bench-trl-ppo-env``): TRL 1.12.0, the last release with
``trl.experimental.ppo`` (which releases failed and why: that file's docstring). The row is skipped, with
a message, when that venv is absent. Both sides load the same four models with ``from_pretrained``:
policy and reference (``models/<size>``), reward model and value model (one Llama sequence classifier on
the same trunk with a seeded score head, ``ppo_rm/<size>``, written once into the assets folder). Per step
8 prompts in dataset order, one generation each (TRL's PPO samples one per prompt), up to 48 new tokens,
EOS stops, missing-EOS penalty 1.0, GAE (gamma 1, lambda 0.95), KL 0.05 (k1), 2 epochs x 2 minibatches
of 4, clip 0.2, vf_coef 0.1. rewardlab's critic is its ``value_model: separate`` option with
``value_init: reward`` (its own trunk, initialised from the reward model, as TRL's), not the shared
value head of the ``ppo`` row. Both train policy and critic with one optimizer. What remains different is
how each library does the same passes: both take the old log-probs from the sampler (rewardlab when its
weights and training compute are float32), TRL computes the LM head over the prompt positions too and calls
``gc.collect()`` twice per step. (One sample per prompt: ``shared_prompt`` would change nothing here.)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

T_START = time.perf_counter()  # setup time counts from here (the child's imports included)

HERE = Path(__file__).resolve().parent
WARMUP = 10
BATCH = 8
GROUP = 4  # GRPO/PPO generations per prompt
NEW_TOKENS = 48
SIZES = ("1m", "11m")
TRAINERS = ("sampler", "dpo", "rm", "sft", "onpolicy", "ppo-trl")
#: Rows each --dtype skips, and why: rewardlab trains reward models in fp32 weights; TRL 1.12's script is fp32;
#: under bf16-mixed both samplers run fp32 (autocast covers training only), so the row would repeat fp32's.
SKIPPED = {"float32": {}, "bfloat16": {"rm": "reward models train in fp32 weights (use bf16-mixed)",
                                      "ppo-trl": "TRL 1.12's script runs fp32"},
           "bf16-mixed": {"sampler": "sampling stays fp32 under mixed precision",
                          "ppo-trl": "TRL 1.12's script runs fp32"}}  # fmt: skip
TRL_PPO_PYTHON = HERE.parent / ".venv-trl-ppo" / "bin" / "python"  # benchmarks/trl_ppo_env.sh makes it

# Targets: median ratio rewardlab / TRL, per (row, size).
TARGETS: dict[tuple[str, str], float] = {
    ("dpo", "1m"): 2.0, ("dpo", "11m"): 1.3,
    ("rm", "1m"): 1.5, ("rm", "11m"): 1.2,
    ("sft", "1m"): 1.5, ("sft", "11m"): 1.2,
    ("grpo", "1m"): 2.0, ("grpo", "11m"): 2.0,
    ("ppo", "1m"): 1.2, ("ppo", "11m"): 1.2,
    ("ppo-trl", "1m"): 2.0, ("ppo-trl", "11m"): 2.0,
    ("sampler", "1m"): 3.0, ("sampler", "11m"): 1.5,
}  # fmt: skip
LEARNING_RATE = {"dpo": 5e-6, "rm": 1e-4, "sft": 2e-5, "grpo": 1e-5, "ppo": 1e-5}


# ----------------------------------------------------------------------------------------- child side
class StepClock:
    """End-of-step timestamps; the rate is measured from the end of step ``warmup`` to the last step."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.times: dict[int, float] = {}
        self.first_step_start: float | None = None

    def mark(self, step: int) -> None:
        self.times[step] = time.perf_counter()

    def measured(self) -> tuple[int, float]:
        """(steps measured, seconds) between the end of step ``warmup`` and the last step."""
        last = max(self.times)
        return last - self.warmup, self.times[last] - self.times[self.warmup]


def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)
    torch.set_num_interop_threads(1)


def _dtype(spec: dict[str, Any]) -> Any:
    """The weights' dtype of the trained causal LMs, both sides: bfloat16 for ``--dtype bfloat16``, else float32
    (the headline; ``bf16-mixed`` keeps float32 weights and autocasts)."""
    import torch

    return torch.bfloat16 if spec.get("dtype", "float32") == "bfloat16" else torch.float32


def _trl_common(spec: dict[str, Any], out: str) -> dict[str, Any]:
    """TrainingArguments shared by every TRL run (no checkpointing, no saving, no reporting); fp32, or with
    ``--dtype bfloat16`` / ``bf16-mixed`` ``bf16=True`` (HF Trainer's autocast; bf16 or fp32 weights)."""
    bf16 = spec.get("dtype", "float32") != "float32"
    return dict(output_dir=out, per_device_train_batch_size=BATCH, max_steps=spec["steps"],
                learning_rate=LEARNING_RATE[spec["trainer"]], bf16=bf16, fp16=False, use_cpu=bf16,
                gradient_checkpointing=False, logging_steps=10, save_strategy="no", report_to="none",
                disable_tqdm=True, dataloader_num_workers=0, dataloader_pin_memory=False, seed=0)  # fmt: skip


def _trl_clock_callback(clock: StepClock) -> Any:
    from transformers import TrainerCallback

    class Clock(TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            clock.mark(int(state.global_step))

    return Clock()


def _rl_optim(trainer: str, **kw: Any) -> Any:
    """rewardlab's optimizer config matching TRL's defaults: AdamW (0.9, 0.999), linear decay, clip 1.0."""
    from rewardlab.config import OptimConfig

    return OptimConfig(lr=LEARNING_RATE[trainer], weight_decay=0.0, warmup_steps=0, schedule="linear",
                       betas=(0.9, 0.999), max_grad_norm=1.0, **kw)  # fmt: skip


def _timed_run(out: str, clock: StepClock) -> Any:
    """A quiet rewardlab ``Run`` that also marks the clock at every logged step (every 10 and the last)."""
    from rewardlab.runs import Run

    class TimedRun(Run):
        def log_metrics(self, metrics: Any, step: int) -> None:
            clock.mark(step)
            super().log_metrics(metrics, step)

    return TimedRun(out, "bench", quiet=True)


def _pairs(spec: dict[str, Any]) -> list[dict[str, str]]:
    from bench_assets import read_pairs

    return read_pairs(spec["assets"])


def _seq_tokens(rows: list[dict[str, str]], tok: Any, key: str) -> float:
    """Mean real tokens of prompt + ``key`` completion (+ EOS), as both sides tokenise them."""
    n = [len(tok(r["prompt"] + r[key], add_special_tokens=False)["input_ids"]) + 1 for r in rows]
    return sum(n) / len(n)


# -- SFT ---------------------------------------------------------------------------------------------
def rl_sft(spec: dict[str, Any], clock: StepClock, out: str) -> dict[str, Any]:
    import random

    from rewardlab.optimize.lm import collate_lm, train_lm
    from rewardlab.policies.models import load_causal_lm, load_tokenizer
    from rewardlab.policies.tokenizer import encode_examples
    from rewardlab.training import Cadence, bucket_batches

    assets = Path(spec["assets"])
    tok = load_tokenizer(assets / "tokenizer")
    model = load_causal_lm(assets / "models" / spec["size"], _dtype(spec))
    rows = _pairs(spec)
    examples = encode_examples(tok, [r["prompt"] for r in rows], [r["chosen"] for r in rows])
    pad = int(tok.pad_token_id)
    rng = random.Random(0)
    lengths = [len(p) + len(c) for p, c in examples]
    queue: list[list[int]] = []

    def next_batch(step: int) -> dict[str, Any]:  # as pipelines/sft.py does with packing="bucket"
        if not queue:
            queue.extend(bucket_batches(lengths, BATCH, rng))
        return collate_lm([examples[j] for j in queue.pop()], pad, completion_only=True)

    setup = time.perf_counter() - T_START
    train_lm(model, next_batch, _rl_optim("sft"), _timed_run(out, clock), Cadence(spec["steps"]))
    return {"setup_s": setup, "tokens_per_sample": sum(lengths) / len(lengths)}


def trl_sft(spec: dict[str, Any], clock: StepClock, out: str) -> dict[str, Any]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    assets = Path(spec["assets"])
    tok = AutoTokenizer.from_pretrained(assets / "tokenizer")
    model = AutoModelForCausalLM.from_pretrained(assets / "models" / spec["size"], dtype=_dtype(spec))
    rows = _pairs(spec)
    ds = Dataset.from_list([{"prompt": r["prompt"], "completion": r["chosen"]} for r in rows])
    cfg = SFTConfig(**_trl_common(spec, out), max_length=128, packing=False, completion_only_loss=True)
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok,
                         callbacks=[_trl_clock_callback(clock)])  # fmt: skip
    setup = time.perf_counter() - T_START
    trainer.train()
    return {"setup_s": setup, "tokens_per_sample": _seq_tokens(rows, tok, "chosen")}


# -- reward model ------------------------------------------------------------------------------------
def rl_rm(spec: dict[str, Any], clock: StepClock, out: str) -> dict[str, Any]:
    from rewardlab.config import RewardConfig
    from rewardlab.feedback.records import Comparison
    from rewardlab.policies.models import load_tokenizer
    from rewardlab.rewards.model import init_reward_backbone
    from rewardlab.rewards.train import RewardData, train_reward_member

    assets = Path(spec["assets"])
    tok = load_tokenizer(assets / "tokenizer")
    model = init_reward_backbone(assets / "models" / spec["size"], tok, seed=0)
    rows = _pairs(spec)
    comps = [Comparison(prompt=r["prompt"], chosen=r["chosen"], rejected=r["rejected"])
             for r in rows[: spec["steps"] * BATCH]]  # fmt: skip
    cfg = RewardConfig(batch_size=BATCH, epochs=1, optim=_rl_optim("rm"), shared_prompt=True)
    setup = time.perf_counter() - T_START
    train_reward_member(model, RewardData(tok, pairs=comps), cfg, _timed_run(out, clock), seed=0)
    tps = _seq_tokens(rows, tok, "chosen") + _seq_tokens(rows, tok, "rejected")
    return {"setup_s": setup, "tokens_per_sample": tps}


def trl_rm(spec: dict[str, Any], clock: StepClock, out: str) -> dict[str, Any]:
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    assets = Path(spec["assets"])
    tok = AutoTokenizer.from_pretrained(assets / "tokenizer")
    model = AutoModelForSequenceClassification.from_pretrained(assets / "models" / spec["size"], num_labels=1)
    model.config.pad_token_id = tok.pad_token_id
    rows = _pairs(spec)
    ds = Dataset.from_list(rows)
    cfg = RewardConfig(**_trl_common(spec, out), max_length=128)
    trainer = RewardTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok,
                            callbacks=[_trl_clock_callback(clock)])  # fmt: skip
    setup = time.perf_counter() - T_START
    trainer.train()
    tps = _seq_tokens(rows, tok, "chosen") + _seq_tokens(rows, tok, "rejected")
    return {"setup_s": setup, "tokens_per_sample": tps}


# -- DPO -----------------------------------------------------------------------------------------------
def rewardlab_has_dpo() -> bool:
    try:
        import rewardlab.optimize.dpo  # noqa: F401
    except ImportError:
        return False
    return True


def rl_dpo(spec: dict[str, Any], clock: StepClock, out: str) -> dict[str, Any]:
    from accelerate import Accelerator

    from rewardlab.config import DPOConfig
    from rewardlab.feedback.records import Comparison
    from rewardlab.optimize.dpo import (
        PairStream,
        PreferenceData,
        cached_reference_logps,
        pair_order,
        tokenize_comparisons,
        train_dpo,
    )
    from rewardlab.policies.models import load_causal_lm, load_tokenizer
    from rewardlab.training import Cadence, Trainee, make_optimizer

    assets = Path(spec["assets"])
    path = assets / "models" / spec["size"]
    tok = load_tokenizer(assets / "tokenizer")
    pad = int(tok.pad_token_id)
    policy = load_causal_lm(path, _dtype(spec))
    rows = _pairs(spec)
    comps = [Comparison(prompt=r["prompt"], chosen=r["chosen"], rejected=r["rejected"]) for r in rows]
    dc = DPOConfig(loss="sigmoid", beta=0.1, steps=spec["steps"], batch_size=BATCH, optim=_rl_optim("dpo"),
                   reference="precomputed", packing="shared_prompt")  # fmt: skip
    data = PreferenceData(tokenize_comparisons(tok, comps))
    ref = load_causal_lm(path, _dtype(spec)).eval().requires_grad_(False)
    # All 2,000 pairs, into a fresh cache folder: computed, never a cache hit (as TRL's precompute).
    data.ref_chosen, data.ref_rejected, _, hit = cached_reference_logps(
        ref, data.examples, pad, Path(out) / "cache", packing=dc.packing
    )
    assert not hit
    del ref
    acc = Accelerator()
    opt, sched = make_optimizer(policy, dc.optim, dc.steps)
    policy, opt = acc.prepare(policy, opt)
    setup = time.perf_counter() - T_START
    train_dpo(Trainee(policy, opt, sched, acc), PairStream(data, pair_order(data, dc.batch_size, 0), pad), dc,
              _timed_run(out, clock), Cadence(dc.steps))  # fmt: skip
    tps = _seq_tokens(rows, tok, "chosen") + _seq_tokens(rows, tok, "rejected")
    return {"setup_s": setup, "tokens_per_sample": tps}


def trl_dpo(spec: dict[str, Any], clock: StepClock, out: str) -> dict[str, Any]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    assets = Path(spec["assets"])
    tok = AutoTokenizer.from_pretrained(assets / "tokenizer")
    model = AutoModelForCausalLM.from_pretrained(assets / "models" / spec["size"], dtype=_dtype(spec))
    rows = _pairs(spec)
    ds = Dataset.from_list(rows)
    cfg = DPOConfig(**_trl_common(spec, out), beta=0.1, loss_type=["sigmoid"], max_length=128,
                    precompute_ref_log_probs=True)  # fmt: skip
    trainer = DPOTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok,
                         callbacks=[_trl_clock_callback(clock)])  # fmt: skip
    setup = time.perf_counter() - T_START
    trainer.train()
    tps = _seq_tokens(rows, tok, "chosen") + _seq_tokens(rows, tok, "rejected")
    return {"setup_s": setup, "tokens_per_sample": tps}


# -- on-policy -----------------------------------------------------------------------------------------
def _step_prompts(rows: list[dict[str, str]], step: int) -> list[str]:
    """The prompts of optimizer step ``step`` (1-based), in dataset order: TRL's with ``shuffle_dataset=False``."""
    n = BATCH // GROUP
    start = ((step - 1) * n) % len(rows)
    return [rows[start + i]["prompt"] for i in range(n)]


def _rl_onpolicy(spec: dict[str, Any], clock: StepClock, out: str, advantage: str) -> dict[str, Any]:
    import torch
    from accelerate import Accelerator
    from bench_assets import good_fraction, read_good_words

    from rewardlab.config import PPOConfig
    from rewardlab.optimize.ppo import Actors, SharedValueHead
    from rewardlab.policies.models import load_causal_lm, load_tokenizer
    from rewardlab.rewards.model import RewardScores
    from rewardlab.training import make_optimizer

    assets = Path(spec["assets"])
    path = assets / "models" / spec["size"]
    good = read_good_words(assets)

    class WordReward:
        """The synthetic reward as a rewardlab proxy: ``score`` returns :class:`RewardScores`."""

        alpha = 0.0

        def score(self, prompts: list[str], completions: list[str]) -> RewardScores:
            s = torch.tensor([good_fraction(c, good) for c in completions])
            return RewardScores(mean=s, std=torch.zeros_like(s), members=s[None])

    tok = load_tokenizer(assets / "tokenizer")
    acc = Accelerator()
    policy = load_causal_lm(path, _dtype(spec))
    critic: torch.nn.Module | None = None
    if advantage == "grpo":  # TRL GRPO's defaults: one update per rollout, beta = 0 (no reference)
        pc = PPOConfig(advantage="grpo", prompts_per_step=BATCH // GROUP, samples_per_prompt=GROUP,
                       ppo_epochs=1, minibatches=1, kl_coef=0.0, missing_eos="none", shared_prompt=True,
                       max_new_tokens=NEW_TOKENS, optim=_rl_optim("grpo"))  # fmt: skip
        ref = None
    else:  # PPO: value head on the policy's trunk, GAE, 2 epochs x 2 minibatches, KL 0.05 to a reference
        pc = PPOConfig(advantage="gae", prompts_per_step=BATCH // GROUP, samples_per_prompt=GROUP,
                       value_model="shared", shared_prompt=True, max_new_tokens=NEW_TOKENS,
                       optim=_rl_optim("ppo"))  # fmt: skip
        ref = load_causal_lm(path, _dtype(spec)).eval().requires_grad_(False)
        critic = SharedValueHead(policy.config.hidden_size)
    opt, _ = make_optimizer(
        torch.nn.ModuleList([policy, *([critic] if critic else [])]), pc.optim, spec["steps"]
    )
    if critic is not None:
        policy, critic, opt = acc.prepare(policy, critic, opt)
    else:
        policy, opt = acc.prepare(policy, opt)
    rows = _pairs(spec)
    actors = Actors(policy, ref, critic, WordReward(), tok)
    return _timed_rl_loop(actors, opt, pc, acc, clock, spec["steps"],
                          lambda step: [p for p in _step_prompts(rows, step) for _ in range(GROUP)])  # fmt: skip


def _timed_rl_loop(actors: Any, opt: Any, pc: Any, acc: Any, clock: StepClock, steps: int,
                   prompts_of: Callable[[int], list[str]]) -> dict[str, Any]:  # fmt: skip
    """Steps 1..``steps`` of rewardlab's on-policy loop (rollout, then update), timed by ``clock``: setup until
    now, and prompt plus generated tokens per second after the warm-up steps."""
    import torch

    from rewardlab.optimize.ppo import make_rollout, ppo_update, rollout_metrics

    gen = torch.Generator().manual_seed(0)
    tokens = 0
    setup = time.perf_counter() - T_START
    actors.policy.train()
    for step in range(1, steps + 1):
        ro = make_rollout(actors, prompts_of(step), pc, pc.kl_coef, gen)
        metrics = rollout_metrics(ro, pc, pc.kl_coef)
        metrics.update(ppo_update(actors.policy, actors.critic, opt, ro, pc, gen, step, accelerator=acc))
        clock.mark(step)
        if step > clock.warmup:
            tokens += int(ro.batch.prompt_mask.sum()) + int(ro.batch.response_mask.sum())
    _, secs = clock.measured()
    return {"setup_s": setup, "tokens_per_s": tokens / secs}


def rl_grpo(spec: dict[str, Any], clock: StepClock, out: str) -> dict[str, Any]:
    return _rl_onpolicy(spec, clock, out, "grpo")


def rl_ppo(spec: dict[str, Any], clock: StepClock, out: str) -> dict[str, Any]:
    return _rl_onpolicy(spec, clock, out, "gae")


def ppo_step_prompts(rows: list[dict[str, str]], step: int) -> list[str]:
    """The ``BATCH`` prompts of PPO step ``step`` (1-based), in dataset order, as ``bench_trl_ppo.py``'s TRL run
    takes them (its loader unshuffled, the last partial batch dropped)."""
    start = ((step - 1) * BATCH) % (len(rows) - len(rows) % BATCH)
    return [rows[start + i]["prompt"] for i in range(BATCH)]


def ppo_reward_model_dir(assets: Path, size: str) -> Path:
    """The PPO row's reward model: a rewardlab ``RewardModel`` folder whose ``members/0`` both sides load."""
    return assets / "ppo_rm" / size


def build_ppo_reward_model(assets: Path, size: str) -> Path:
    """Write (once) the PPO row's reward model: the ``size`` trunk with a seeded score head (seed 0)."""
    from rewardlab.policies.models import load_tokenizer
    from rewardlab.rewards.model import RewardModel, init_reward_backbone

    out = ppo_reward_model_dir(assets, size)
    if not (out / "ensemble.json").is_file():
        tok = load_tokenizer(assets / "tokenizer")
        RewardModel([init_reward_backbone(assets / "models" / size, tok, seed=0)], tok).save(out)
    return out


def rl_ppo_trl(spec: dict[str, Any], clock: StepClock, out: str) -> dict[str, Any]:
    """Full PPO set up as ``bench_trl_ppo.py``'s PPOTrainer: separate critic initialised from the reward model,
    a reward model (not the word reward), 8 prompts x 1 generation, 2 epochs x 2 minibatches, KL 0.05."""
    import torch
    from accelerate import Accelerator

    from rewardlab.config import PPOConfig
    from rewardlab.optimize.ppo import Actors, ValueModel
    from rewardlab.policies.models import load_causal_lm, load_tokenizer
    from rewardlab.rewards.model import RewardModel
    from rewardlab.training import make_optimizer

    assets = Path(spec["assets"])
    path = assets / "models" / spec["size"]
    rm_dir = ppo_reward_model_dir(assets, spec["size"])
    pc = PPOConfig(advantage="gae", prompts_per_step=BATCH, samples_per_prompt=1, ppo_epochs=2, minibatches=2,
                   kl_coef=0.05, kl_estimator="k1", value_model="separate", value_init="reward",
                   missing_eos="penalty", missing_eos_penalty=1.0, max_new_tokens=NEW_TOKENS,
                   optim=_rl_optim("ppo"))  # fmt: skip
    tok = load_tokenizer(assets / "tokenizer")
    acc = Accelerator()
    policy = load_causal_lm(path, _dtype(spec))
    ref = load_causal_lm(path, _dtype(spec)).eval().requires_grad_(False)
    rm = RewardModel.load(rm_dir)
    for m in rm.members:
        m.requires_grad_(False)
    critic = ValueModel.from_pretrained(rm_dir / "members" / "0")
    opt, _ = make_optimizer(torch.nn.ModuleList([policy, critic]), pc.optim, spec["steps"])
    policy, critic, opt = acc.prepare(policy, critic, opt)
    rows = _pairs(spec)
    actors = Actors(policy, ref, critic, rm, tok)
    return _timed_rl_loop(
        actors, opt, pc, acc, clock, spec["steps"], lambda step: ppo_step_prompts(rows, step)
    )


def trl_grpo(spec: dict[str, Any], clock: StepClock, out: str) -> dict[str, Any]:
    from bench_assets import good_fraction, read_good_words
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    assets = Path(spec["assets"])
    tok = AutoTokenizer.from_pretrained(assets / "tokenizer")
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(assets / "models" / spec["size"], dtype=_dtype(spec))
    rows = _pairs(spec)
    good = read_good_words(assets)
    prompt_len = {r["prompt"]: len(tok(r["prompt"], add_special_tokens=False)["input_ids"]) for r in rows}
    counted = {"tokens": 0}

    def good_words_reward(prompts: list[str], completions: list[str], completion_ids: list[list[int]],
                          **kwargs: Any) -> list[float]:  # fmt: skip
        if len(clock.times) >= clock.warmup:  # this rollout belongs to a measured step
            counted["tokens"] += sum(prompt_len[p] for p in prompts) + sum(len(c) for c in completion_ids)
        return [good_fraction(c, good) for c in completions]

    ds = Dataset.from_list([{"prompt": r["prompt"]} for r in rows])
    cfg = GRPOConfig(**_trl_common(spec, out), num_generations=GROUP, max_completion_length=NEW_TOKENS,
                     beta=0.0, shuffle_dataset=False, temperature=1.0)  # fmt: skip
    trainer = GRPOTrainer(model=model, reward_funcs=good_words_reward, args=cfg, train_dataset=ds,
                          processing_class=tok, callbacks=[_trl_clock_callback(clock)])  # fmt: skip
    setup = time.perf_counter() - T_START
    trainer.train()
    _, secs = clock.measured()
    return {"setup_s": setup, "tokens_per_s": counted["tokens"] / secs}


# -- sampler -------------------------------------------------------------------------------------------
def sampler_pair(spec: dict[str, Any], out: str) -> dict[str, Any]:
    """sample() vs model.generate in one process, alternating; greedy outputs must be identical."""
    import copy

    import torch

    from rewardlab.policies.models import load_causal_lm, load_tokenizer
    from rewardlab.policies.sampling import encode_prompts, sample

    assets = Path(spec["assets"])
    tok = load_tokenizer(assets / "tokenizer")
    model = load_causal_lm(assets / "models" / spec["size"], _dtype(spec)).eval()
    rows = _pairs(spec)
    pad = int(tok.pad_token_id)
    prompts = [p for p in _step_prompts(rows, 1) for _ in range(GROUP)]  # the GRPO batch: 2 x 4
    ids, mask = encode_prompts(tok, prompts)
    no_eos = copy.deepcopy(model.generation_config)
    no_eos.eos_token_id = None  # both sides produce exactly NEW_TOKENS tokens per row
    gen = torch.Generator().manual_seed(0)

    def run_sample() -> None:
        o = sample(
            model, ids, mask, max_new_tokens=NEW_TOKENS, eos_token_id=-1, pad_token_id=pad, generator=gen
        )
        assert o.response_ids.shape == (len(prompts), NEW_TOKENS)

    def run_generate() -> None:
        with torch.inference_mode():
            o = model.generate(ids, attention_mask=mask, generation_config=no_eos, do_sample=True,
                               temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=NEW_TOKENS,
                               pad_token_id=pad)  # fmt: skip
        assert o.shape == (len(prompts), ids.shape[1] + NEW_TOKENS)

    check = greedy_outputs_identical(model, tok, [r["prompt"] for r in rows[:64]], NEW_TOKENS)
    if not check and spec.get("dtype", "float32") == "float32":  # bf16 logits tie often: argmax may differ
        raise AssertionError("sample(greedy=True) and model.generate(do_sample=False) differ")
    run_sample()
    run_generate()
    runs = spec["sampler_calls"]
    t: dict[str, list[float]] = {"rewardlab": [], "trl": []}
    for r in range(spec["repeats"]):
        order = [("rewardlab", run_sample), ("trl", run_generate)]
        for side, fn in order if r % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            for _ in range(runs):
                fn()
            t[side].append(time.perf_counter() - t0)
    if spec.get("profile"):  # cProfile three more calls of our sampler alone
        import cProfile

        prof = cProfile.Profile()
        prof.runcall(lambda: [run_sample() for _ in range(3)])
        prof.dump_stats(spec["profile"])
    n_tok = runs * len(prompts) * NEW_TOKENS
    return {"times": t, "new_tokens_per_call": len(prompts) * NEW_TOKENS, "calls": runs,
            "tokens_per_s": {k: [n_tok / s for s in v] for k, v in t.items()}, "greedy_identical": check}  # fmt: skip


def greedy_outputs_identical(model: Any, tok: Any, prompts: list[str], new_tokens: int) -> bool:
    """``sample(greedy=True)`` gives exactly ``model.generate(do_sample=False)``'s tokens (EOS enabled)."""
    import torch

    from rewardlab.policies.sampling import encode_prompts, sample

    ids, mask = encode_prompts(tok, prompts)
    eos, pad = int(tok.eos_token_id), int(tok.pad_token_id)
    ours = sample(
        model, ids, mask, max_new_tokens=new_tokens, eos_token_id=eos, pad_token_id=pad, greedy=True
    )
    with torch.inference_mode():
        ref = model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=new_tokens,
                             eos_token_id=eos, pad_token_id=pad)[:, ids.shape[1] :]  # fmt: skip
    # generate pads finished rows with pad and stops when all rows are done; compare up to the shorter
    width = min(ref.shape[1], ours.response_ids.shape[1])
    same = bool((ref[:, :width] == ours.response_ids[:, :width]).all())
    return (
        same and (ref[:, width:] == pad).all().item() and (ours.response_ids[:, width:] == pad).all().item()
    )


RUNNERS: dict[str, Callable[[dict[str, Any], StepClock, str], dict[str, Any]]] = {
    "rewardlab/sft": rl_sft, "trl/sft": trl_sft, "rewardlab/rm": rl_rm, "trl/rm": trl_rm,
    "rewardlab/dpo": rl_dpo, "trl/dpo": trl_dpo, "rewardlab/grpo": rl_grpo, "rewardlab/ppo": rl_ppo,
    "trl/grpo": trl_grpo, "rewardlab/ppo-trl": rl_ppo_trl,
}  # fmt: skip


def child_main(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one benchmark in this (fresh) process and return its measurements."""
    _threads(spec["threads"])
    import torch

    if spec.get("dtype") == "bf16-mixed" and spec.get("side") == "rewardlab":
        from rewardlab.kernels.precision import set_training_compute

        set_training_compute(torch.bfloat16)  # what `precision: bf16-mixed` sets in every stage
    sys.path.insert(0, str(HERE))
    with tempfile.TemporaryDirectory(prefix="bench_run_") as out:
        if spec["trainer"] == "sampler":
            res = sampler_pair(spec, out)
        else:
            clock = StepClock(WARMUP)
            runner = RUNNERS[f"{spec['side']}/{spec['trainer']}"]
            if spec.get("profile"):  # cProfile the whole run into this file (rates are then inflated)
                import cProfile

                prof = cProfile.Profile()
                res = prof.runcall(runner, spec, clock, out)
                prof.dump_stats(spec["profile"])
            else:
                res = runner(spec, clock, out)
            n, secs = clock.measured()
            if n != spec["steps"] - WARMUP:
                raise RuntimeError(f"measured {n} steps, expected {spec['steps'] - WARMUP}")
            res["samples_per_s"] = n * BATCH / secs
            res.setdefault("tokens_per_s", res["samples_per_s"] * res.get("tokens_per_sample", 0.0))
            res["measured_s"] = secs
    res["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res["threads"] = torch.get_num_threads()
    if spec.get("side") == "rewardlab" or spec["trainer"] == "sampler":
        from rewardlab.kernels.cpu_linear import cpu_linear_backend

        res["cpu_linear"] = cpu_linear_backend()
    return res


def machine_description() -> dict[str, str]:
    """CPU model and core count (lscpu), whether it has native bf16, Python, torch, transformers, TRL, accelerate
    versions."""
    import platform

    import accelerate
    import torch
    import transformers

    cpu = platform.processor() or "?"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        cpu = f"{fields.get('Model name', '?').strip()}, {fields.get('CPU(s)', '?').strip()} CPUs"
    except OSError:
        pass
    try:
        from importlib.metadata import version

        trl_version = version("trl")
    except Exception:
        trl_version = "not installed"
    from rewardlab.policies.models import native_bf16

    # the fp32 table is the headline either way; `dtype: auto` uses bf16 only where it is native
    _, bf16 = native_bf16("cpu")
    return {"cpu": cpu, "bf16": bf16, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "trl": trl_version,
            "accelerate": accelerate.__version__}  # fmt: skip


# ---------------------------------------------------------------------------------------- parent side
def run_child(spec: dict[str, Any], log: Path, extra_env: dict[str, str] | None = None,
              command: list[str] | None = None) -> dict[str, Any]:  # fmt: skip
    """Run one child (default: this file under this Python; ``command``: another script or interpreter)."""
    env = dict(os.environ)
    env.update(extra_env or {})
    n = str(spec["threads"])
    env.update(OMP_NUM_THREADS=n, MKL_NUM_THREADS=n, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TQDM_DISABLE="1",
               TRANSFORMERS_VERBOSITY="error", PYTHONWARNINGS="ignore",
               HF_DATASETS_CACHE=str(log.parent / "hf_datasets_cache"))  # fmt: skip
    with log.open("a") as f:
        f.write(f"\n=== {json.dumps(spec)}\n")
        f.flush()
        cmd = command or [sys.executable, str(Path(__file__).resolve())]
        proc = subprocess.run([*cmd, "--child", json.dumps(spec)], stdout=subprocess.PIPE, stderr=f, text=True,
                              env=env, check=False)  # fmt: skip
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark child failed (rc={proc.returncode}): {spec}; see {log}")
    return json.loads(lines[-1][len("RESULT ") :])


def _mmm(xs: list[float]) -> tuple[float, float, float]:
    return min(xs), statistics.median(xs), max(xs)


def _fmt_ratio(xs: list[float]) -> str:
    lo, med, hi = _mmm(xs)
    return f"{lo:.2f} / **{med:.2f}** / {hi:.2f}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="30 offline / 20 on-policy steps, 3 repeats")
    ap.add_argument("--only", default=",".join(TRAINERS), help=f"comma-separated subset of {TRAINERS}")
    ap.add_argument("--sizes", default=",".join(SIZES))
    ap.add_argument("--repeats", type=int, default=3, help="ABAB repeats per pair (>= 3 for the table)")
    ap.add_argument("--steps", type=int, default=None, help="offline steps (default 100; quick 30)")
    ap.add_argument("--onpolicy-steps", type=int, default=None, help="default 50; quick 20")
    ap.add_argument("--threads", default="1,2",
                    help="torch threads in every run, both sides; a comma list runs the whole table once per "
                    "count (default 1,2: one thread, then this machine's two)")  # fmt: skip
    ap.add_argument("--dtype", default="float32", choices=tuple(SKIPPED),
                    help="float32 (the headline); bfloat16: bf16 weights, both sides; bf16-mixed: float32 weights "
                    "and bf16 autocast (rewardlab's precision: bf16-mixed, TRL's bf16=True); for CPUs with native "
                    "bf16 (the machine line says); rows that do not apply are skipped with the reason")  # fmt: skip
    ap.add_argument("--assets", default=None, help="reuse an assets folder (default: build a fresh temp one)")
    ap.add_argument("--out", default="runs/bench_trl", help="folder for results.json, table.md, child logs")
    ap.add_argument("--trl-ppo-python", default=str(TRL_PPO_PYTHON),
                    help="Python of the venv with the old TRL for the ppo-trl row (benchmarks/trl_ppo_env.sh)")  # fmt: skip
    ap.add_argument("--rl-env", action="append", default=[], metavar="KEY=VALUE",
                    help="environment for rewardlab's runs only, e.g. REWARDLAB_CPU_LINEAR=mkl")  # fmt: skip
    ap.add_argument(
        "--profile",
        action="store_true",
        help="after the table, cProfile one rewardlab run of every row that misses a target "
        "(<out>/profiles/<row>-<size>.txt: top functions by own and by cumulative time)",
    )
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        print("RESULT " + json.dumps(child_main(json.loads(args.child))), flush=True)
        return

    sys.path.insert(0, str(HERE))
    from bench_assets import build_assets

    steps = args.steps or (30 if args.quick else 100)
    on_steps = args.onpolicy_steps or (20 if args.quick else 50)
    only = [t.strip() for t in args.only.split(",") if t.strip()]
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    threads = parse_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "children.log"
    log.write_text("")
    t0 = time.perf_counter()
    assets = Path(args.assets) if args.assets else Path(tempfile.mkdtemp(prefix="bench_assets_"))
    if not (assets / "pairs.jsonl").is_file():
        build_assets(assets)
    print(f"assets in {assets} ({time.perf_counter() - t0:.1f} s); threads per run: {threads}; "
          f"steps {steps} offline / {on_steps} on-policy, first {WARMUP} excluded; {args.repeats} repeats",
          flush=True)  # fmt: skip
    rl_env = dict(kv.split("=", 1) for kv in args.rl_env)
    results: dict[str, Any] = {"args": vars(args), "machine": machine_description(), "rows": []}
    print(f"machine: {results['machine']}", flush=True)
    plan = Plan(only=only, sizes=sizes, repeats=args.repeats, steps=steps, on_steps=on_steps, quick=args.quick,
                trl_ppo_python=args.trl_ppo_python, log=log, rl_env=rl_env)  # fmt: skip
    for n in threads:
        print(f"\n--- {n} thread(s) per run ---", flush=True)
        base = {"assets": str(assets), "threads": n, "dtype": args.dtype}
        rows = run_rows(plan, base)
        if args.profile:
            profile_missed(rows, base, steps, on_steps, out, log, rl_env)
        results["rows"] += rows
    results["elapsed_s"] = time.perf_counter() - t0
    table = render_tables(results["rows"])
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "table.md").write_text(table + "\n")
    backends = sorted({r.get("cpu_linear", "?") for row in results["rows"] if isinstance(row["rewardlab"], list)
                       for r in row["rewardlab"]})  # fmt: skip
    print(f"\n{results['machine']}; weights {args.dtype}; rewardlab CPU linears: {backends}")
    print(table)
    print(f"\ntotal {results['elapsed_s'] / 60:.1f} min; results in {out}/results.json")


@dataclass
class Plan:
    """What one thread count runs: the rows, sizes, repeats and step counts, and where children log."""

    only: list[str]
    sizes: list[str]
    repeats: int
    steps: int
    on_steps: int
    quick: bool
    trl_ppo_python: str
    log: Path
    rl_env: dict[str, str]


def run_rows(plan: Plan, base: dict[str, Any]) -> list[dict[str, Any]]:
    """Every requested row at ``base["threads"]`` torch threads per run; each row records that count."""
    rows: list[dict[str, Any]] = []
    n, dtype = base["threads"], base.get("dtype", "float32")
    log, rl_env = plan.log, plan.rl_env
    for trainer in plan.only:
        for size in plan.sizes:
            why = SKIPPED[dtype].get(trainer)
            if why:
                print(f"{trainer}: skipped under {base['dtype']} ({why})", flush=True)
                continue
            if trainer == "ppo-trl" and not Path(plan.trl_ppo_python).is_file():
                print(f"ppo-trl: no {plan.trl_ppo_python} (make bench-trl-ppo-env); skipped", flush=True)
                continue
            if trainer == "dpo" and not rewardlab_has_dpo():
                print("dpo: rewardlab.optimize.dpo not available; skipped", flush=True)
                continue
            if trainer == "sampler":
                spec = {**base, "trainer": "sampler", "size": size, "repeats": max(plan.repeats, 3),
                        "sampler_calls": 3 if plan.quick else 10}  # fmt: skip
                res = run_child(spec, log, rl_env)
                ratios = [a / b for a, b in zip(res["times"]["trl"], res["times"]["rewardlab"])]
                rows.append({"row": "sampler", "size": size, "threads": n, "dtype": dtype,
                             "ratios": ratios,
                             "greedy_identical": res["greedy_identical"],
                             "rewardlab": {"tokens_per_s": res["tokens_per_s"]["rewardlab"]},
                             "trl": {"tokens_per_s": res["tokens_per_s"]["trl"]}})  # fmt: skip
                print(f"sampler {size} ({n}t): ratio {_fmt_ratio(ratios)} greedy identical "
                      f"{res['greedy_identical']}", flush=True)  # fmt: skip
                continue
            sides = ["rewardlab/grpo", "rewardlab/ppo", "trl/grpo"] if trainer == "onpolicy" else \
                [f"rewardlab/{trainer}", f"trl/{trainer}"]  # fmt: skip
            n_steps = plan.on_steps if trainer in ("onpolicy", "ppo-trl") else plan.steps
            commands = {"trl/ppo-trl": [plan.trl_ppo_python, str(HERE / "bench_trl_ppo.py")]}
            if trainer == "ppo-trl":
                build_ppo_reward_model(Path(base["assets"]), size)
            runs: dict[str, list[dict[str, Any]]] = {s: [] for s in sides}
            for r in range(plan.repeats):
                order = sides[r % len(sides) :] + sides[: r % len(sides)]  # rotate who goes first
                for side in order:
                    who, what = side.split("/")
                    spec = {**base, "trainer": what, "side": who, "size": size, "steps": n_steps}
                    res = run_child(spec, log, rl_env if who == "rewardlab" else None, commands.get(side))
                    runs[side].append(res)
                    print(f"  {side} {size} ({n}t) repeat {r}: {res['samples_per_s']:.1f} samples/s, "
                          f"{res['peak_rss_mib']:.0f} MiB, setup {res['setup_s']:.1f} s", flush=True)  # fmt: skip
            trl_side = sides[-1]
            for side in sides[:-1]:
                name = side.split("/")[1]
                ratios = [a["samples_per_s"] / b["samples_per_s"] for a, b in zip(runs[side], runs[trl_side])]
                rows.append({"row": name, "size": size, "threads": n, "dtype": dtype,
                             "ratios": ratios, "rewardlab": runs[side],
                             "trl": runs[trl_side], "trl_name": trl_side})  # fmt: skip
                print(f"{name} {size} ({n}t): ratio {_fmt_ratio(ratios)}", flush=True)
    return rows


def parse_threads(text: str) -> list[int]:
    """``"1,2"`` -> ``[1, 2]``: each count >= 1, no repeats, in the order given."""
    try:
        counts = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise SystemExit(f"--threads {text!r}: expected comma-separated integers, e.g. 1,2") from None
    if not counts or min(counts) < 1 or len(set(counts)) != len(counts):
        raise SystemExit(f"--threads {text!r}: expected distinct counts >= 1, e.g. 1,2")
    return counts


def missed(row: dict[str, Any]) -> list[str]:
    """The targets a row misses: ``speed`` (median ratio below target) and/or ``memory`` (median peak RSS
    above TRL's)."""
    out = []
    target = TARGETS.get((row["row"], row["size"]))
    if target is not None and statistics.median(row["ratios"]) < target:
        out.append("speed")
    if row["row"] != "sampler" and _rss(row, "rewardlab") > _rss(row, "trl"):
        out.append("memory")
    return out


def _rss(row: dict[str, Any], side: str) -> float:
    return statistics.median(r["peak_rss_mib"] for r in row[side])


def profile_missed(rows: list[dict[str, Any]], base: dict[str, Any], steps: int, on_steps: int, out: Path,
                   log: Path, rl_env: dict[str, str]) -> None:  # fmt: skip
    """cProfile one rewardlab run per row that misses a speed target; write the top functions as text."""
    import pstats

    folder = out / "profiles"
    folder.mkdir(exist_ok=True)
    for row in rows:
        if "speed" not in missed(row):
            continue
        name, size = row["row"], row["size"]
        stem = f"{name}-{size}" if base["threads"] == 1 else f"{name}-{size}-{base['threads']}t"
        stats_path = folder / f"{stem}.prof"
        if name == "sampler":
            spec = {**base, "trainer": "sampler", "size": size, "repeats": 1, "sampler_calls": 1}
        else:
            spec = {**base, "trainer": name, "side": "rewardlab", "size": size,
                    "steps": on_steps if name in ("grpo", "ppo", "ppo-trl") else steps}  # fmt: skip
        run_child({**spec, "profile": str(stats_path)}, log, rl_env)
        text = folder / f"{stem}.txt"
        with text.open("w") as f:
            st = pstats.Stats(str(stats_path), stream=f)
            st.strip_dirs()
            f.write(
                f"# rewardlab {name} {size}, {base['threads']} thread(s): cProfile of one run "
                "(rates under the profiler are lower)\n"
            )
            f.write("\n## by own time\n")
            st.sort_stats("tottime").print_stats(25)
            f.write("\n## by cumulative time\n")
            st.sort_stats("cumulative").print_stats(25)
        print(f"profile of {name} {size} ({base['threads']}t): {text}", flush=True)


TRL_NAME = {"dpo": "DPOTrainer", "rm": "RewardTrainer", "sft": "SFTTrainer", "grpo": "GRPOTrainer",
            "ppo": "GRPOTrainer", "ppo-trl": "PPOTrainer", "sampler": "model.generate"}  # fmt: skip
UNIT = {"dpo": "pairs/s", "rm": "pairs/s", "sft": "seqs/s", "grpo": "completions/s", "ppo": "completions/s",
        "ppo-trl": "completions/s", "sampler": "new tok/s"}  # fmt: skip


def row_label(row: dict[str, Any]) -> str:
    """The table's first column: ``<row> vs <TRL trainer>``; the PPO row names the TRL release it ran."""
    name = row["row"]
    if name == "ppo-trl":
        versions = sorted({r.get("versions", {}).get("trl", "?") for r in row["trl"]})
        return f"ppo vs PPOTrainer (trl {', '.join(versions)})"
    return f"{name} vs {TRL_NAME[name]}"


def render_table(rows: list[dict[str, Any]]) -> str:
    """One markdown table: medians per side and the ratio rewardlab/TRL min / median / max over repeats."""
    head = ("| rewardlab vs TRL | size | unit | rewardlab samples/s | TRL samples/s | rewardlab tok/s | TRL tok/s | "
            "peak RSS MiB rl / TRL | setup s rl / TRL | ratio min / median / max | target | met | RSS <= TRL |")  # fmt: skip
    lines = [head, "|" + "---|" * 13]
    for row in rows:
        name, size = row["row"], row["size"]
        target = TARGETS.get((name, size))
        med = statistics.median(row["ratios"])
        met = "" if target is None else ("yes" if med >= target else "**no**")
        label = row_label(row)
        if name == "sampler":
            rl_tok = statistics.median(row["rewardlab"]["tokens_per_s"])
            trl_tok = statistics.median(row["trl"]["tokens_per_s"])
            same = "greedy identical" if row["greedy_identical"] else "GREEDY DIFFERS"
            if not row["greedy_identical"] and row.get("dtype") == "bfloat16":
                same = "greedy differs at bf16 ties"  # a top-2 gap of 0 or 1 ulp in bf16 logits
            lines.append(f"| {label} ({same}) | {size} | {UNIT[name]} | - | - | {rl_tok:,.0f} | {trl_tok:,.0f} | "
                         f"- | - | {_fmt_ratio(row['ratios'])} | {target}x | {met} | - |")  # fmt: skip
            continue

        def med_of(side: str, key: str, row: dict[str, Any] = row) -> float:
            return statistics.median(r[key] for r in row[side])

        lines.append(
            f"| {label} | {size} | {UNIT[name]} | {med_of('rewardlab', 'samples_per_s'):.1f} | "
            f"{med_of('trl', 'samples_per_s'):.1f} | {med_of('rewardlab', 'tokens_per_s'):,.0f} | "
            f"{med_of('trl', 'tokens_per_s'):,.0f} | {med_of('rewardlab', 'peak_rss_mib'):.0f} / "
            f"{med_of('trl', 'peak_rss_mib'):.0f} | {med_of('rewardlab', 'setup_s'):.1f} / "
            f"{med_of('trl', 'setup_s'):.1f} | {_fmt_ratio(row['ratios'])} | {target}x | {met} | "
            f"{'**no**' if 'memory' in missed(row) else 'yes'} |"
        )
    return "\n".join(lines)


def render_side_by_side(rows: list[dict[str, Any]]) -> str:
    """One line per (row, size): the median ratio and whether the target is met at each thread count."""
    counts = sorted({r.get("threads", 1) for r in rows})
    keys = list(dict.fromkeys((r["row"], r["size"]) for r in rows))
    by = {(r["row"], r["size"], r.get("threads", 1)): r for r in rows}
    head = "| rewardlab vs TRL | size | target | " + " | ".join(f"{n} thread(s): median, met" for n in counts)
    lines = [head + " | met at every count |", "|" + "---|" * (4 + len(counts))]
    for name, size in keys:
        target = TARGETS.get((name, size))
        cells, met_all = [], target is not None
        label = row_label(next(r for r in rows if (r["row"], r["size"]) == (name, size)))
        for n in counts:
            row = by.get((name, size, n))
            if row is None:
                cells.append("-")
                met_all = False
                continue
            med = statistics.median(row["ratios"])
            ok = target is not None and "speed" not in missed(row)
            met_all = met_all and ok
            cells.append(f"{med:.2f}x, {'yes' if ok else '**no**'}" if target is not None else f"{med:.2f}x")
        verdict = "-" if target is None else ("yes" if met_all else "**no**")
        lines.append(f"| {label} | {size} | {target}x | " + " | ".join(cells) + f" | {verdict} |")
    return "\n".join(lines)


def render_tables(rows: list[dict[str, Any]]) -> str:
    """The full table per thread count, then (with more than one count) the ratios side by side."""
    counts = sorted({r.get("threads", 1) for r in rows})
    if len(counts) <= 1:
        return render_table(rows)
    parts = [f"### {n} thread(s) per run\n\n" + render_table([r for r in rows if r.get("threads", 1) == n])
             for n in counts]  # fmt: skip
    parts.append("### Median ratios side by side\n\n" + render_side_by_side(rows))
    return "\n\n".join(parts)


if __name__ == "__main__":
    main()
