"""Tokenizers built locally and tiny models saved/loaded through from_pretrained."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rewardlab.policies.models import ModelConfig, build_causal_lm, load_causal_lm, load_tokenizer
from rewardlab.policies.tokenizer import (
    build_task_tokenizer,
    decode_completion,
    encode_completion,
    encode_examples,
    encode_prompt,
    prompt_text,
    train_bpe_tokenizer,
)
from rewardlab.tasks.arithmetic import TASK_WORDS
from rewardlab.utils import RewardlabError


@pytest.fixture(scope="module")
def tok():
    return build_task_tokenizer(TASK_WORDS)


def test_numbers_split_into_digits_and_decode_back(tok):
    ids = encode_completion(tok, "you are right . the answer is 1405 .")
    assert tok.convert_ids_to_tokens(ids)[-6:] == ["1", "##4", "##0", "##5", ".", "<eos>"]
    assert decode_completion(tok, ids) == "you are right . the answer is 1405 ."
    assert "<unk>" not in tok.convert_ids_to_tokens(encode_prompt(tok, "what is 12 - 3 ? i think it is 9 ."))


def test_chat_template_plain_and_conversational(tok):
    assert prompt_text(tok, "what is 1 + 2 ?") == "<user> what is 1 + 2 ? <assistant>"
    conv = [{"role": "user", "content": "what is 1 + 2 ?"}]
    assert prompt_text(tok, conv) == prompt_text(tok, "what is 1 + 2 ?")
    ex = encode_examples(tok, [conv], [[{"role": "assistant", "content": "the answer is 3 ."}]])
    assert ex[0][1][-1] == tok.eos_token_id


def test_decode_cuts_at_eos(tok):
    ids = encode_completion(tok, "the answer is 3 .") + encode_completion(tok, "hmm .")
    assert decode_completion(tok, ids) == "the answer is 3 ."


def test_tokenizer_roundtrip_through_from_pretrained(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "<user> what is 85 + 3 ? <assistant>"
    assert loaded(text)["input_ids"] == tok(text)["input_ids"]
    assert loaded.chat_template == tok.chat_template
    assert loaded.pad_token == "<pad>" and loaded.eos_token == "<eos>"


def _hh_rlhf_texts(n: int) -> list[str]:
    """Up to ``n`` HH-RLHF transcripts: from ``../shared/data/hh-rlhf`` when present, else from the 100-pair
    sample kept in the repository (``tests/data/hh-rlhf-sample.jsonl``, MIT; prompt + chosen reply)."""
    import gzip
    import json
    from pathlib import Path

    tests = Path(__file__).resolve().parent
    shared = tests.parents[1] / "shared/data/hh-rlhf"
    files = (sorted(shared.rglob("*.jsonl.gz")) + sorted(shared.rglob("*.jsonl"))) if shared.is_dir() else []
    if files:
        opener = gzip.open if files[0].suffix == ".gz" else open
        with opener(files[0], "rt", encoding="utf-8") as f:
            return [json.loads(line)["chosen"] for _, line in zip(range(n), f)]
    rows = [
        json.loads(x) for x in (tests / "data/hh-rlhf-sample.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    return [f"{r['prompt']} {r['chosen']}" for r in rows[:n]]


def test_bpe_tokenizer_on_real_text():
    texts = _hh_rlhf_texts(300)
    assert len(texts) >= 100
    bpe = train_bpe_tokenizer(texts, vocab_size=600)
    assert 300 < len(bpe) <= 600
    sample = texts[0][:200]
    assert bpe.decode(bpe(sample)["input_ids"]) == sample
    assert prompt_text(bpe, "hi").startswith("<user> hi")


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_build_save_load_model(tok, tmp_path, arch):
    model = build_causal_lm(
        ModelConfig(arch=arch, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64), tok
    )
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded = load_causal_lm(tmp_path)
    assert isinstance(loaded, type(AutoModelForCausalLM.from_pretrained(tmp_path)))
    x = torch.tensor([encode_prompt(tok, "what is 1 + 2 ?")])
    with torch.no_grad():
        assert torch.allclose(model.eval()(x).logits, loaded.eval()(x).logits)
    assert load_tokenizer(tmp_path).padding_side == "left"


def test_bad_model_paths(tmp_path):
    with pytest.raises(RewardlabError, match="does not exist"):
        load_causal_lm(tmp_path / "nope")
    with pytest.raises(RewardlabError, match=r"no config\.json"):
        load_causal_lm(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(RewardlabError, match="cannot load a causal LM"):
        load_causal_lm(tmp_path)
    with pytest.raises(RewardlabError, match="no saved tokenizer"):
        load_tokenizer(tmp_path)


def test_length_chunked_step_equals_the_whole_batch_step(tok):
    """Pretraining's length-sorted micro-batches give the whole batch's token-mean loss and gradient."""
    import random

    from rewardlab.optimize.lm import chunked_lm_backward, collate_lm, length_chunks, lm_loss

    model = build_causal_lm(
        ModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64), tok, seed=0
    )
    rng = random.Random(0)
    words = [w for w in TASK_WORDS if w.isalpha()]
    examples = [([1, 2], [tok.convert_tokens_to_ids(rng.choice(words)) for _ in range(rng.randint(1, 20))])
                for _ in range(13)]  # fmt: skip
    batch = collate_lm(examples, int(tok.pad_token_id), completion_only=False)
    parts = length_chunks(batch, 4)
    assert sum(p["input_ids"].shape[0] for p in parts) == 13
    assert sum(p["input_ids"].numel() for p in parts) < batch["input_ids"].numel()  # less padding
    assert sum(int(p["attention_mask"].sum()) for p in parts) == int(batch["attention_mask"].sum())

    whole, n = lm_loss(model, batch)
    whole.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    chunked, n2 = chunked_lm_backward(model, batch, 4, lambda loss: loss.backward())
    assert n2 == n and torch.allclose(chunked, whole.detach(), atol=1e-6)
    for g, p in zip(grads, model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, g, atol=1e-6, rtol=1e-5)
