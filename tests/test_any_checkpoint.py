"""Any local checkpoint through every policy stage: tiny random Llama, Qwen2 and GPT-2 with their own tokenizers.

Each architecture is written with ``save_pretrained`` into a temporary folder with its own byte-level BPE
tokenizer (GPT-2: no pad token, no chat template; Llama: ``<s>``/``</s>``; Qwen2: ChatML template, ``<|im_end|>``
EOS) and only 64 positions (so the chat-formatted prompts get cut), then SFT, labels, a reward model initialised
from the SFT folder, an RL method, DPO and best-of-n run on it through the CLI. GPT-2 runs PPO with a critic,
Llama RLOO, Qwen2 GRPO; Qwen2 also runs its policy stages with LoRA adapters. The sampler takes the fast path on
the plain Llama and falls back to ``generate`` on GPT-2, saying so in ``run.log``; both give valid samples whose
log-probs are those of a training forward.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from rewardlab.cli import main
from rewardlab.config import load_config
from rewardlab.optimize.lm import collate_lm, lm_loss
from rewardlab.optimize.ppo import policy_forward
from rewardlab.policies.lora import LoRAConfig, load_policy
from rewardlab.policies.models import (
    load_causal_lm,
    load_tokenizer,
    native_bf16,
    resolve_dtype,
    write_tiny_checkpoint,
)
from rewardlab.policies.sampling import encode_prompts, sample, sampler_path
from rewardlab.policies.tokenizer import encode_examples, prompt_text

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
MICRO = ROOT / "configs/micro.yaml"
ARM = "time-pressed-s0"
ARCHS = ("llama", "qwen2", "gpt2")
#: the RL method each architecture runs (all three share one trainer)
RL = {"gpt2": "ppo", "llama": "rloo", "qwen2": "grpo"}
SMALL = ["--set", "threads=1", "--set", "controls=[]", "--set", "sft.steps=4", "--set", "sft.num_demos=96",
         "--set", "sft.eval_prompts=8", "--set", "label.num_prompts=48", "--set", "reward.normalize_prompts=8",
         "--set", "ppo.steps=2", "--set", "ppo.eval_prompts=8", "--set", "ppo.eval_every=2",
         "--set", "dpo.steps=2", "--set", "dpo.eval_prompts=8", "--set", "dpo.eval_every=2",
         "--set", "dpo.eval_pairs=16", "--set", "bon.prompts=8", "--set", "bon.max_n=4"]  # fmt: skip
LORA = ["--set", "sft.lora={r: 4}", "--set", "ppo.lora={r: 4}", "--set", "dpo.lora={r: 4}"]


def task_texts(n: int = 300) -> list[str]:
    """Prompts and demonstrations of the micro task: what the tiny tokenizers are trained on."""
    cfg = load_config(MICRO)
    task = cfg.build_task()
    rng = random.Random(0)
    demo = task.demos(cfg.sft.demos)  # type: ignore[attr-defined]
    items = [task.sample_item(rng) for _ in range(n)]
    return [f"{task.prompt(i)} {demo(i, rng)}" for i in items]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    texts = task_texts()
    return {a: write_tiny_checkpoint(a, root / a, texts, positions=64) for a in ARCHS}  # type: ignore[arg-type]


def _stage(run: Path, stage: str) -> Path:
    return run / stage if stage == "sft" else run / ARM / stage


def test_the_tiny_checkpoints_are_their_architectures_with_their_own_tokenizers(
    checkpoints: dict[str, Path],
) -> None:
    kinds = {
        a: (type(load_causal_lm(p)).__name__, type(load_tokenizer(p)).__name__)
        for a, p in checkpoints.items()
    }
    assert kinds["gpt2"] == ("GPT2LMHeadModel", "GPT2Tokenizer")
    assert kinds["llama"][0] == "LlamaForCausalLM" and kinds["qwen2"] == (
        "Qwen2ForCausalLM",
        "Qwen2Tokenizer",
    )
    gpt2, qwen = load_tokenizer(checkpoints["gpt2"]), load_tokenizer(checkpoints["qwen2"])
    # no pad token: it falls back to EOS; the tokenizer's limit is clamped to the model's 64 positions
    assert gpt2.pad_token_id == gpt2.eos_token_id and gpt2.model_max_length == 64
    assert prompt_text(gpt2, "what is 2 + 2 ?") == "what is 2 + 2 ?"  # no chat template: the plain text
    # the Qwen2 tokenizer's own (ChatML) template formats prompts
    assert (
        prompt_text(qwen, "what is 2 + 2 ?")
        == "<|im_start|>user\nwhat is 2 + 2 ?<|im_end|>\n<|im_start|>assistant\n"
    )
    msgs = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "2+2?"},
    ]
    assert prompt_text(qwen, msgs).count("<|im_start|>") == 4
    # a long dialogue keeps its last tokens and fits the 64 positions
    (p, c), = encode_examples(gpt2, ["what is 1 + 1 ? " * 40], ["the answer is 2 ."])  # fmt: skip
    assert len(p) + len(c) == 64 and c[-1] == gpt2.eos_token_id


@pytest.mark.parametrize("arch", ARCHS)
def test_every_policy_stage_runs_on_a_local_checkpoint(checkpoints: dict[str, Path], tmp_path: Path, arch: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from rewardlab.optimize import ppo

    packed = []
    real_pack = ppo.pack_prompt_groups
    monkeypatch.setattr(
        ppo, "pack_prompt_groups", lambda *a, **k: packed.append(real_pack(*a, **k)) or packed[-1]
    )
    ck, run = checkpoints[arch], tmp_path / "run"
    rl = RL[arch]
    sets = [*SMALL, "--set", f"sft.model_path={ck}", "--set", f"label.policy_paths=[{run}/sft/model,{ck}]",
            "--set", f"methods=[{rl},dpo,bon]", "--set", "ppo.shared_prompt=true",  # packed (Llama, Qwen2+LoRA)
            *(LORA if arch == "qwen2" else [])]  # fmt: skip
    stages = f"sft,label,reward,{rl},dpo,bon"
    assert main(["run", str(MICRO), "--run-dir", str(run), "--quiet", "--stages", stages, *sets]) == 0
    # ppo.shared_prompt packed the groups of Llama and Qwen2 (through its LoRA wrapper); GPT-2 is not packable
    assert (arch != "gpt2") == any(p is not None for p in packed), arch
    start = load_causal_lm(ck)
    for stage in ("sft", "reward", rl, "dpo", "bon"):
        assert (_stage(run, stage) / "summary.json").is_file(), stage
    eos = load_tokenizer(ck).eos_token_id
    for stage in (
        "sft",
        rl,
        "dpo",
    ):  # every trained policy loads with from_pretrained as the same architecture
        out = _stage(run, stage)
        model = AutoModelForCausalLM.from_pretrained(out / "model")
        assert type(model) is type(start) and load_tokenizer(out / "model").eos_token_id == eos
        log = (out / "run.log").read_text()
        assert "dtype float32 (config dtype: float32)" in log
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        assert rows and all(v == v for r in rows for v in r.values() if isinstance(v, float)), stage  # no NaN
        if arch == "qwen2":  # LoRA: the adapter beside the merged model, and the log says what trained
            assert "LoRA r=4" in log and "reference = the same model with the adapter disabled" in log
            assert (out / "adapter" / "adapter_config.json").is_file()
            assert not any("lora_" in k for k in model.state_dict())
        else:
            assert not (out / "adapter").exists()
    sft_log = (run / "sft" / "run.log").read_text()
    if arch == "gpt2":
        why = "fast sampler: GPT2LMHeadModel not supported (learned absolute positions); using generate"
        assert why in sft_log
    elif arch == "llama":
        assert "fast sampler: LlamaForCausalLM on the CPU fast decoder" in sft_log
    else:
        assert "step by step on transformers' forward (adapter (e.g. LoRA)" in sft_log
    samples = [json.loads(x) for x in (run / "sft" / "samples.jsonl").read_text().splitlines()]
    assert samples and all(isinstance(s["response"], str) for s in samples)
    rm_cfg = json.loads((run / ARM / "reward" / "model" / "members" / "0" / "config.json").read_text())
    assert (
        rm_cfg["model_type"] == start.config.model_type
    )  # the reward model's backbone: the same architecture


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_both_sampler_paths_give_valid_samples_with_training_log_probs(checkpoints: dict[str, Path],
                                                                       arch: str) -> None:  # fmt: skip
    """Llama: the fast decoder; GPT-2: ``generate``. Both: the same samples for the same seed, EOS-terminated
    masks, and per-token log-probs equal to a training forward's (the PPO ratio starts at 1)."""
    tok, model = load_tokenizer(checkpoints[arch]), load_causal_lm(checkpoints[arch])
    path, why = sampler_path(model)
    assert path == {"llama": "fast", "gpt2": "generate"}[arch], why
    ids, mask = encode_prompts(tok, ["what is 3 + 4 ?", "what is 12 - 5 ? i think it is 6 ."], 10)
    for greedy in (False, True):
        a, b = (sample(model, ids, mask, max_new_tokens=10, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id, temperature=0.8, top_k=20, greedy=greedy,
                       generator=torch.Generator().manual_seed(3)) for _ in range(2))  # fmt: skip
        assert torch.equal(a.response_ids, b.response_ids)
        assert a.response_ids.shape[0] == 2 and 1 <= a.response_ids.shape[1] <= 10
        assert int(a.response_ids.max()) < len(tok)
        with torch.no_grad():
            lp = policy_forward(model, None, a, 1.0 if greedy else 0.8).logprobs
        m = a.response_mask
        assert torch.allclose(lp * m, a.logprobs, atol=1e-5), (arch, greedy)
        assert bool((a.logprobs[m.bool()] < 0).all())
    hidden = sample(model, ids, mask, max_new_tokens=10, eos_token_id=tok.eos_token_id, hidden_states=True,
                    pad_token_id=tok.pad_token_id, generator=torch.Generator().manual_seed(3)).hidden  # fmt: skip
    # generate records none: there PPO's shared value head runs the policy forward
    assert (hidden is None) == (arch == "gpt2")
    if arch == "gpt2":  # generate's randomness comes from the generator, not the global RNG
        torch.manual_seed(0)
        first = sample(model, ids, mask, max_new_tokens=6, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id, generator=torch.Generator().manual_seed(5))  # fmt: skip
        state = torch.get_rng_state()
        torch.manual_seed(99)
        second = sample(model, ids, mask, max_new_tokens=6, eos_token_id=tok.eos_token_id,
                        pad_token_id=tok.pad_token_id, generator=torch.Generator().manual_seed(5))  # fmt: skip
        assert torch.equal(first.response_ids, second.response_ids)
        torch.manual_seed(0)
        sample(model, ids, mask, max_new_tokens=6, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
               generator=torch.Generator().manual_seed(5))  # fmt: skip
        assert torch.equal(torch.get_rng_state(), state)  # the caller's global RNG is untouched


def test_dtype_auto_picks_bf16_only_where_native_and_says_why() -> None:
    native, why = native_bf16("cpu")
    dtype, line = resolve_dtype("auto", "cpu")
    assert dtype == (torch.bfloat16 if native else torch.float32) and why in line
    assert resolve_dtype("float32", "cpu")[0] == torch.float32
    forced, line = resolve_dtype("bfloat16", "cpu")
    assert forced == torch.bfloat16 and "config dtype: bfloat16" in line


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_bf16_loads_samples_and_trains_a_step_with_float32_losses(
    checkpoints: dict[str, Path], arch: str
) -> None:
    tok = load_tokenizer(checkpoints[arch])
    for lora in (None, {"r": 4}):
        policy = load_policy(checkpoints[arch], torch.bfloat16, LoRAConfig(**lora) if lora else None)
        model = policy.model
        assert next(model.get_input_embeddings().parameters()).dtype == torch.bfloat16
        ids, mask = encode_prompts(tok, ["what is 3 + 4 ?"], 6)
        batch = sample(model, ids, mask, max_new_tokens=6, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id, generator=torch.Generator().manual_seed(0))  # fmt: skip
        assert batch.logprobs.dtype == torch.float32 and bool(torch.isfinite(batch.logprobs).all())
        examples = encode_examples(tok, ["what is 3 + 4 ?", "what is 1 + 1 ?"], ["the answer is 7 .", "2"])
        loss, n = lm_loss(model, collate_lm(examples, int(tok.pad_token_id), True))
        assert loss.dtype == torch.float32 and n > 0 and bool(torch.isfinite(loss))
        trainable = [p for p in model.parameters() if p.requires_grad]
        before = [p.detach().clone() for p in trainable]
        opt = torch.optim.AdamW(trainable, lr=1e-2)
        loss.backward()
        opt.step()
        assert any(not torch.equal(a, p.detach()) for a, p in zip(before, trainable, strict=True))
        if lora:  # the adapters are float32 on a bf16 base (peft's autocast_adapter_dtype)
            assert {p.dtype for p in trainable} == {torch.float32}
