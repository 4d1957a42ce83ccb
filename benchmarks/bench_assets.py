"""The models and data that both sides of ``bench_trl.py`` train on, built locally and saved to a folder.

Everything is deterministic in the seed and nothing is downloaded:

* a word-level tokenizer (rewardlab's :func:`build_task_tokenizer`, WordPiece with whitespace and
  punctuation splitting) over 1,732 synthetic words, so ``tokenize(prompt + completion)`` is
  ``tokenize(prompt) + tokenize(completion)`` and TRL's tokenisation (of the concatenated text, with
  ``<eos>`` appended as text) gives exactly the ids rewardlab's ``encode_examples`` gives. The chat
  template is removed: both sides see plain text prompts. Vocabulary: 1,761 tokens;
* two randomly initialised Llama causal LMs with untied embeddings, saved with ``save_pretrained``:
  ``1m`` (hidden 128, 2 layers, FFN 512, 4 heads: 0.98M params) and ``11m`` (hidden 384, 4 layers,
  FFN 1536, 6 heads: 10.79M params); both sides load them with ``from_pretrained``;
* 2,000 preference pairs: prompt ``"Question: <8-16 prompt words> Answer:"`` (12-20 tokens); chosen
  30-60 words, 90% from the "good" half of an 800-word completion vocabulary, rejected the same from
  the "bad" half; with EOS a completion is 31-61 tokens. One prompt+completion sequence has ~62 real
  tokens; padded to the longest of 16 it has ~77.

Folder layout: ``tokenizer/``, ``models/<size>/``, ``pairs.jsonl`` (``prompt``, ``chosen``,
``rejected``; completions start with a space, as TRL concatenates ``prompt + completion``).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from rewardlab.policies.models import ModelConfig, build_causal_lm
from rewardlab.policies.tokenizer import build_task_tokenizer

SIZES: dict[str, ModelConfig] = {
    "1m": ModelConfig(
        hidden_size=128,
        num_layers=2,
        num_heads=4,
        intermediate_size=512,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    ),
    "11m": ModelConfig(
        hidden_size=384,
        num_layers=4,
        num_heads=6,
        intermediate_size=1536,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    ),
}
N_PAIRS = 2000
N_COMPLETION_WORDS = 800  # first half "good", second half "bad"
N_PROMPT_WORDS = 932  # 6 special + 20 digit pieces + 3 prompt tokens + 800 + 932 = 1,761 tokens
CONSONANTS = "bcdfghjklmnprstvwxz"
VOWELS = "aeiou"


def word_list(seed: int = 0) -> list[str]:
    """Distinct lowercase CVCV pseudo-words: completion words first (good half, bad half), then prompt words."""
    syllables = [c + v for c in CONSONANTS for v in VOWELS]
    words = sorted({a + b for a in syllables for b in syllables})
    return random.Random(seed).sample(words, N_COMPLETION_WORDS + N_PROMPT_WORDS)


def good_words(words: list[str]) -> frozenset[str]:
    return frozenset(words[: N_COMPLETION_WORDS // 2])


def good_fraction(text: str, good: frozenset[str]) -> float:
    """The synthetic reward: share of a completion's words from the good half (0 for an empty one)."""
    toks = text.split()
    return sum(t in good for t in toks) / len(toks) if toks else 0.0


def make_pairs(words: list[str], n: int = N_PAIRS, seed: int = 0) -> list[dict[str, str]]:
    """``n`` synthetic preference pairs ``{"prompt", "chosen", "rejected"}`` (completions start with a space)."""
    rng = random.Random(seed)
    half = N_COMPLETION_WORDS // 2
    good, bad = words[:half], words[half:N_COMPLETION_WORDS]
    prompt_words = words[N_COMPLETION_WORDS:]

    def completion(main: list[str], other: list[str]) -> str:
        k = rng.randint(30, 60)
        return " " + " ".join(rng.choice(main) if rng.random() < 0.9 else rng.choice(other) for _ in range(k))

    rows = []
    for _ in range(n):
        q = " ".join(rng.choice(prompt_words) for _ in range(rng.randint(8, 16)))
        rows.append({"prompt": f"Question: {q} Answer:", "chosen": completion(good, bad),
                     "rejected": completion(bad, good)})  # fmt: skip
    return rows


def build_assets(out: Path | str, seed: int = 0, sizes: list[str] | None = None) -> Path:
    """Write the tokenizer, the models (``sizes``, default all) and the pairs into ``out``; return it."""
    out = Path(out)
    words = word_list(seed)
    tok = build_task_tokenizer(["question", "answer", ":", *words], model_max_length=256)
    tok.chat_template = None  # plain-text prompts on both sides
    tok.save_pretrained(out / "tokenizer")
    for size in sizes or list(SIZES):
        model = build_causal_lm(SIZES[size], tok, seed=seed)
        model.save_pretrained(out / "models" / size, safe_serialization=True)
    with (out / "pairs.jsonl").open("w", encoding="utf-8") as f:
        for row in make_pairs(words, seed=seed):
            f.write(json.dumps(row) + "\n")
    (out / "words.json").write_text(json.dumps(words))
    return out


def read_pairs(assets: Path | str) -> list[dict[str, str]]:
    lines = (Path(assets) / "pairs.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def read_good_words(assets: Path | str) -> frozenset[str]:
    return good_words(json.loads((Path(assets) / "words.json").read_text()))
