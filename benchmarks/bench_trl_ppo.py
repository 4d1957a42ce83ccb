"""The TRL side of ``bench_trl.py``'s full-PPO row: the last TRL release that still has a ``PPOTrainer``.

TRL 1.16 (the main virtual environment's) has no PPO: it moved to ``trl.experimental.ppo`` and was
deleted in 2026-09 (huggingface/trl#7020), and people who run PPO pin an older TRL. This file is run by
the Python of its own virtual environment, ``.venv-trl-ppo`` (``benchmarks/trl_ppo_env.sh`` creates it),
as ``python benchmarks/bench_trl_ppo.py --child SPEC_JSON``, and prints one ``RESULT {...}`` line as
``bench_trl.py``'s children do. It never imports rewardlab (that venv has none).

Which TRL (tried newest first on 2026-11-30, torch 2.13.0+cpu, Python 3.11):

* 1.16.0, 1.15.0, 1.14.2, 1.14.0, 1.13.0: no PPO at all (their wheels hold neither ``trl.PPOTrainer``
  nor ``trl.experimental.ppo``; 1.13.0 keeps only a fused PPO loss, ``trl/losses/fused_linear_ppo.py``);
* **1.12.0**: the last release with ``trl.experimental.ppo.PPOTrainer`` (deleted in 1.13.0). It installs
  with transformers 5.24.0, accelerate 1.15.0, datasets 5.2.0 and runs here, so the older releases
  (1.0-1.11 with ``trl.experimental.ppo``, 0.2x with ``trl.PPOTrainer``) were not needed. transformers 5
  reads the v5 checkpoints of ``bench_assets.py`` as they are: no converted copy is needed.

What the TRL run is (and how ``bench_trl.py``'s ``rl_ppo_trl`` matches it):

* models, all loaded with ``from_pretrained`` from the shared assets folder: the policy and its frozen
  reference (``models/<size>``), the reward model and the value model (a Llama sequence classifier,
  ``ppo_rm/<size>/members/0``, written once by ``bench_trl.py`` from the same trunk with a seeded
  score head; TRL's PPO examples initialise the value model from the reward model, so does this);
* 8 prompts per step (one generation each: TRL's PPO samples one completion per prompt), taken in
  dataset order (the trainer's shuffled dataloader is replaced by an unshuffled one, so both sides see
  the same prompts step by step), up to ``NEW_TOKENS`` = 48 new tokens at temperature 1, stop at EOS,
  ``missing_eos_penalty`` 1.0 (rewardlab's ``missing_eos: penalty`` default);
* 2 PPO epochs x 2 minibatches of 4 (``per_device_train_batch_size`` 8, ``num_mini_batches`` 2, no
  gradient accumulation: 4 optimizer steps per rollout), KL coefficient 0.05 (k1 in the reward), GAE
  with gamma 1 and lambda 0.95, clip 0.2 (policy and value), vf_coef 0.1, advantages whitened, rewards
  not; AdamW at lr 1e-5 with linear decay, fp32, no gradient checkpointing, no sample generations.

The rate runs from the end of step ``WARMUP`` to the last step (``on_step_end``), tokens are the prompt's
real tokens plus the response up to and including EOS (counted where the reward model sees them).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

T_START = time.perf_counter()  # setup time counts from here (the child's imports included)

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_trl import (  # noqa: E402  (bench_trl imports only the standard library at module level)
    BATCH,
    NEW_TOKENS,
    WARMUP,
    StepClock,
    _threads,
    _trl_clock_callback,
    _trl_common,
)

PPO_EPOCHS = 2
MINIBATCHES = 2
KL_COEF = 0.05
MISSING_EOS_PENALTY = 1.0


def ppo_classes() -> tuple[Any, Any]:
    """``(PPOConfig, PPOTrainer)`` of the installed TRL: ``trl.experimental.ppo`` (1.x) or ``trl`` (0.x)."""
    try:
        from trl.experimental.ppo import PPOConfig, PPOTrainer
    except ImportError:
        from trl import PPOConfig, PPOTrainer
    return PPOConfig, PPOTrainer


def reward_model_path(assets: Path, size: str) -> Path:
    """The reward model's checkpoint (also the value model's initialisation), as ``bench_trl.py`` writes it."""
    return assets / "ppo_rm" / size / "members" / "0"


def prompt_rows(tok: Any, assets: Path) -> list[dict[str, list[int]]]:
    """Every pair's prompt as token ids (no special tokens: rewardlab's ``encode_prompts`` adds none here)."""
    lines = (assets / "pairs.jsonl").read_text(encoding="utf-8").splitlines()
    prompts = [json.loads(line)["prompt"] for line in lines if line.strip()]
    return [{"input_ids": ids} for ids in tok(prompts, add_special_tokens=False)["input_ids"]]


def count_scored_tokens(reward_model: Any, clock: StepClock, counted: dict[str, int]) -> None:
    """Add the real tokens of every sequence the reward model scores during a measured step to ``counted``."""
    backbone = getattr(reward_model, reward_model.base_model_prefix)

    def hook(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        if len(clock.times) >= clock.warmup:  # this rollout belongs to a measured step
            counted["tokens"] += int(kwargs["attention_mask"].sum())

    backbone.register_forward_pre_hook(hook, with_kwargs=True)


def in_dataset_order(trainer: Any, ds: Any) -> None:
    """Replace the trainer's shuffled prompt loader by one in dataset order (the prompts rewardlab's side uses)."""
    from torch.utils.data import DataLoader

    loader = DataLoader(ds, batch_size=BATCH, shuffle=False, collate_fn=trainer.data_collator, drop_last=True)
    trainer.dataloader = trainer.accelerator.prepare(loader)


def trl_ppo(spec: dict[str, Any], clock: StepClock, out: str) -> dict[str, Any]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    ppo_config, ppo_trainer = ppo_classes()
    assets = Path(spec["assets"])
    tok = AutoTokenizer.from_pretrained(assets / "tokenizer")
    tok.padding_side = "left"
    policy_path = assets / "models" / spec["size"]
    rm_path = reward_model_path(assets, spec["size"])
    policy = AutoModelForCausalLM.from_pretrained(policy_path)
    ref = AutoModelForCausalLM.from_pretrained(policy_path)
    reward = AutoModelForSequenceClassification.from_pretrained(rm_path, num_labels=1)
    value = AutoModelForSequenceClassification.from_pretrained(rm_path, num_labels=1)
    ds = Dataset.from_list(prompt_rows(tok, assets))
    common = _trl_common({**spec, "trainer": "ppo"}, out)
    cfg = ppo_config(**common, total_episodes=spec["steps"] * BATCH, num_ppo_epochs=PPO_EPOCHS,
                     num_mini_batches=MINIBATCHES, gradient_accumulation_steps=1, response_length=NEW_TOKENS,
                     temperature=1.0, stop_token="eos", missing_eos_penalty=MISSING_EOS_PENALTY, kl_coef=KL_COEF,
                     kl_estimator="k1", num_sample_generations=0, local_rollout_forward_batch_size=BATCH)  # fmt: skip
    trainer = ppo_trainer(args=cfg, processing_class=tok, model=policy, ref_model=ref, reward_model=reward,
                          value_model=value, train_dataset=ds, callbacks=[_trl_clock_callback(clock)])  # fmt: skip
    in_dataset_order(trainer, ds)
    counted = {"tokens": 0}
    count_scored_tokens(reward, clock, counted)
    setup = time.perf_counter() - T_START
    trainer.train()
    _, secs = clock.measured()
    return {"setup_s": setup, "tokens_per_s": counted["tokens"] / secs}


def child_main(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the TRL PPO benchmark in this (fresh) process and return its measurements."""
    _threads(spec["threads"])
    import torch

    clock = StepClock(WARMUP)
    with tempfile.TemporaryDirectory(prefix="bench_trl_ppo_") as out:
        res = trl_ppo(spec, clock, out)
    n, secs = clock.measured()
    if n != spec["steps"] - WARMUP:
        raise RuntimeError(f"measured {n} steps, expected {spec['steps'] - WARMUP}")
    res.update(samples_per_s=n * BATCH / secs, measured_s=secs, threads=torch.get_num_threads(),
               peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               versions={p: version(p) for p in ("trl", "transformers", "torch", "accelerate")})  # fmt: skip
    return res


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", required=True, help="the run's spec as JSON (bench_trl.py writes it)")
    args = ap.parse_args(argv)
    print("RESULT " + json.dumps(child_main(json.loads(args.child))), flush=True)


if __name__ == "__main__":
    main()
