"""The LoRA path (peft): the reference is the adapter-disabled policy (one copy of the base weights), the outputs are
an adapter and a merged model, checkpoints hold the adapter and resume bitwise after a SIGKILL, and two processes
(torchrun, gloo) train it as one does."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rewardlab.checkpoint import KILL_ENV, Checkpointer
from rewardlab.cli import main
from rewardlab.optimize.dpo import model_fingerprint
from rewardlab.optimize.lm import collate_lm, lm_loss
from rewardlab.policies.lora import (
    DisabledAdapter,
    LoRAConfig,
    adapter_state_dict,
    load_adapter,
    load_adapter_state,
    load_policy,
    lora_targets,
)
from rewardlab.policies.models import load_causal_lm, load_tokenizer, write_tiny_checkpoint
from rewardlab.policies.tokenizer import encode_examples
from rewardlab.runs import Run, partial_dir
from rewardlab.utils import RewardlabError

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
MICRO = ROOT / "configs/micro.yaml"
ARM = "time-pressed-s0"
TEXTS = [f"what is {a} + {b} ? the answer is {a + b} ." for a in range(20) for b in range(15)]
SMALL = ["--set", "threads=1", "--set", "controls=[]", "--set", "sft.steps=6", "--set", "sft.num_demos=96",
         "--set", "sft.eval_prompts=8", "--set", "label.num_prompts=48", "--set", "reward.normalize_prompts=8",
         "--set", "ppo.eval_prompts=8", "--set", "ppo.eval_every=2", "--set", "ppo.samples_per_prompt=2",
         "--set", "sft.lora={r: 4}", "--set", "ppo.lora={r: 4}", "--set", "dpo.lora={r: 4}"]  # fmt: skip


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_checkpoint("llama", tmp_path_factory.mktemp("llama") / "model", TEXTS, positions=64)


def _step(policy_model: torch.nn.Module, tok: object) -> None:
    """One AdamW step of the trainable (adapter) weights on two examples."""
    ex = encode_examples(
        tok, ["what is 1 + 2 ?", "what is 3 + 4 ?"], ["the answer is 3 .", "the answer is 7 ."]
    )  # type: ignore[arg-type]
    opt = torch.optim.AdamW([p for p in policy_model.parameters() if p.requires_grad], lr=0.05)
    loss, _ = lm_loss(policy_model, collate_lm(ex, int(tok.pad_token_id), True))  # type: ignore[attr-defined]
    loss.backward()
    opt.step()


def test_the_reference_is_the_adapter_disabled_policy_with_no_second_copy(ckpt: Path) -> None:
    tok = load_tokenizer(ckpt)
    policy = load_policy(ckpt, lora=LoRAConfig(r=4))
    ref = policy.reference()
    assert isinstance(ref, DisabledAdapter) and isinstance(policy.reference(ckpt), DisabledAdapter)
    _step(policy.model, tok)
    policy.model.train()
    # one set of base weights: every tensor the reference computes with is one of the policy's
    base_ptrs = {p.data_ptr() for p in policy.model.parameters() if not p.requires_grad}
    assert {p.data_ptr() for p in ref.parameters()} <= {p.data_ptr() for p in policy.model.parameters()}
    assert len(base_ptrs) == len(list(load_causal_lm(ckpt).parameters()))
    assert list(ref.children()) == [] and list(ref.named_parameters(recurse=False)) == []
    ids = torch.tensor([[5, 9, 13, 20, 7]])
    with torch.no_grad():
        base = load_causal_lm(ckpt)(input_ids=ids).logits
        trained = policy.model(input_ids=ids).logits
    ref_logits = ref(input_ids=ids).logits
    assert torch.equal(ref_logits, base)  # the reference is the base model exactly ...
    assert not torch.allclose(trained, base)  # ... while the adapter has moved the policy
    assert policy.model.training and not ref_logits.requires_grad  # the call left the policy in train mode
    ref.eval()
    assert policy.model.training  # eval() on the reference never touches the policy
    # the reference's fingerprint is the base model's: a DPO reference cache is shared with the non-LoRA path
    assert model_fingerprint(ref) == model_fingerprint(load_causal_lm(ckpt))
    # without LoRA the reference is a separate frozen copy
    plain = load_policy(ckpt)
    other = plain.reference()
    assert not isinstance(other, DisabledAdapter) and not any(p.requires_grad for p in other.parameters())
    assert not {p.data_ptr() for p in other.parameters()} & {p.data_ptr() for p in plain.model.parameters()}


def test_default_targets_follow_the_architecture(ckpt: Path, tmp_path: Path) -> None:
    llama = load_causal_lm(ckpt)
    assert lora_targets(llama, LoRAConfig()) == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                 "down_proj"]  # fmt: skip
    assert lora_targets(llama, LoRAConfig(target_modules="all-linear")) == "all-linear"
    gpt2 = load_causal_lm(write_tiny_checkpoint("gpt2", tmp_path / "gpt2", TEXTS))
    assert lora_targets(gpt2, LoRAConfig()) == ["c_attn", "c_proj", "c_fc"]
    with pytest.raises(RewardlabError, match=r"lora\.target_modules"):
        load_policy(ckpt, lora=LoRAConfig(target_modules=["no_such_proj"]))


def test_save_writes_the_adapter_and_a_merged_model_that_load_alike(ckpt: Path, tmp_path: Path) -> None:
    tok = load_tokenizer(ckpt)
    policy = load_policy(ckpt, lora=LoRAConfig(r=4))
    _step(policy.model, tok)
    ids = torch.tensor([[5, 9, 13, 20, 7]])
    with torch.no_grad():
        trained = policy.model.eval()(input_ids=ids).logits
    out = policy.save(tok, tmp_path / "stage" / "model")
    merged = load_causal_lm(out)
    assert not any("lora_" in k for k in merged.state_dict())
    from_adapter = load_adapter(ckpt, tmp_path / "stage" / "adapter").eval()
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, trained, atol=1e-5)
        assert torch.allclose(from_adapter(input_ids=ids).logits, trained, atol=1e-5)
    assert json.loads((tmp_path / "stage" / "adapter" / "adapter_config.json").read_text())["r"] == 4


def test_checkpoints_hold_the_adapter_only_and_restore_it(ckpt: Path, tmp_path: Path) -> None:
    tok = load_tokenizer(ckpt)
    policy = load_policy(ckpt, lora=LoRAConfig(r=4))
    _step(policy.model, tok)
    run = Run(tmp_path, "unit")
    saver = Checkpointer(run, every=1, total_steps=1)
    saver.track(model=policy.model)
    saver.save(1)
    saved = load_file(str(tmp_path / "checkpoint" / "model.safetensors"))
    assert saved and all("lora_" in k for k in saved)
    assert saved.keys() == adapter_state_dict(policy.model).keys()
    fresh = load_policy(ckpt, lora=LoRAConfig(r=4))
    loader = Checkpointer(run, every=1, resume=True)
    loader.track(model=fresh.model)
    assert loader.restore() == 1
    for k, v in adapter_state_dict(policy.model).items():
        assert torch.equal(adapter_state_dict(fresh.model)[k], v), k
    wrong_rank = load_policy(ckpt, lora=LoRAConfig(r=2))
    with pytest.raises(RewardlabError, match="does not match"):
        load_adapter_state(wrong_rank.model, saved)


@pytest.fixture(scope="module")
def base(ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SFT (LoRA), labels and a reward model on the tiny Llama, shared by the resume and 2-process cases."""
    d = tmp_path_factory.mktemp("lora-base")
    sets = ["--set", f"sft.model_path={ckpt}", "--set", f"label.policy_paths=[{d}/sft/model,{ckpt}]"]
    assert (
        main(
            ["run", str(MICRO), "--run-dir", str(d), "--quiet", "--stages", "sft,label,reward", *SMALL, *sets]
        )
        == 0
    )
    return d


def _rows(path: Path) -> list[dict]:
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    clock = ("eps", "train/pairs_per_second")  # wall-clock rates
    return [{k: v for k, v in r.items() if not k.startswith("time/") and k not in clock} for r in rows]


#: stage, its folder, checkpoint settings, kill after N steps (a checkpoint before it and a metrics row after it)
RESUME = {
    "sft": ("sft", "sft", ["sft.checkpoint_every=2", "sft.steps=6"], 5),
    "rloo": ("rloo", f"{ARM}/rloo", ["ppo.checkpoint_every=2", "ppo.steps=4", "ppo.prompts_per_step=4"], 3),
    "dpo": ("dpo", f"{ARM}/dpo", ["dpo.checkpoint_every=2", "dpo.steps=4", "dpo.eval_every=2", "dpo.eval_pairs=16",
                                  "dpo.eval_prompts=8", "dpo.batch_size=16"], 3),
}  # fmt: skip


@pytest.mark.slow  # a CLI subprocess killed and two runs per case: 30-50 s each on this loaded 2-core machine
@pytest.mark.parametrize("case", list(RESUME))
def test_lora_run_killed_and_resumed_matches_the_uninterrupted_run(
    base: Path, tmp_path: Path, case: str
) -> None:
    stage, folder, settings, kill_after = RESUME[case]
    sets = [
        *SMALL,
        *[x for kv in settings for x in ("--set", kv)],
        "--set",
        f"sft.model_path={base / 'sft' / 'model'}",
    ]
    runs = {}
    for name in ("uninterrupted", "killed"):
        runs[name] = tmp_path / name
        shutil.copytree(base, runs[name], ignore=shutil.ignore_patterns("sft") if stage == "sft" else None)
    ref, killed = runs["uninterrupted"], runs["killed"]
    assert main([stage, str(MICRO), "--run-dir", str(ref), "--quiet", *sets]) == 0
    cmd = [
        sys.executable,
        "-m",
        "rewardlab.cli",
        stage,
        str(MICRO),
        "--run-dir",
        str(killed),
        "--quiet",
        *sets,
    ]
    env = {**os.environ, KILL_ENV: str(kill_after), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    partial = partial_dir(killed / folder)
    weights = partial / "checkpoint" / f"{'model' if stage == 'sft' else 'policy'}.safetensors"
    saved = load_file(str(weights))
    assert saved and all(
        "lora_" in k for k in saved
    )  # the checkpoint holds the adapter, not the base weights
    assert main([stage, str(MICRO), "--run-dir", str(killed), "--quiet", "--resume", *sets]) == 0
    assert "resumed from" in (killed / folder / "run.log").read_text()
    assert _rows(killed / folder / "metrics.jsonl") == _rows(ref / folder / "metrics.jsonl")
    for name in ("model/model.safetensors", "adapter/adapter_model.safetensors"):
        a, b = load_file(str(ref / folder / name)), load_file(str(killed / folder / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


@pytest.mark.slow  # two torchrun processes and a single-process twin: ~1 min on 2 cores
def test_two_processes_train_the_lora_path_as_one(base: Path, tmp_path: Path) -> None:
    sft = base / "sft" / "model"
    sets = [*SMALL, "--set", f"sft.model_path={sft}", "--set", "ppo.rollout_shards=2", "--set", "ppo.steps=2",
            "--set", "ppo.prompts_per_step=4", "--set", "methods=[rloo]"]  # fmt: skip
    one, two = tmp_path / "one", tmp_path / "two"
    for d in (one, two):
        shutil.copytree(base, d, ignore=shutil.ignore_patterns("sft"))
    args = ["run", str(MICRO), "--quiet", "--stages", "sft,rloo", *sets]
    assert main([*args, "--run-dir", str(one)]) == 0
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    cmd = [
        torchrun,
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "rewardlab.cli",
        *args,
        "--run-dir",
        str(two),
    ]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=400)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for folder in ("sft", f"{ARM}/rloo"):
        a, b = _rows(one / folder / "metrics.jsonl"), _rows(two / folder / "metrics.jsonl")
        assert [r["step"] for r in a] == [r["step"] for r in b] and a, folder
        for ra, rb in zip(a, b, strict=True):
            for k, va in ra.items():
                if isinstance(va, float) and "clipfrac" not in k:
                    assert math.isclose(va, rb[k], rel_tol=1e-4, abs_tol=2e-5), (
                        folder,
                        ra["step"],
                        k,
                        va,
                        rb[k],
                    )
        assert (two / folder / "adapter" / "adapter_model.safetensors").is_file()
        assert "LoRA r=4" in (two / folder / "run.log").read_text()
