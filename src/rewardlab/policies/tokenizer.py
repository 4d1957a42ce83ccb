"""Tokenizers built locally with `tokenizers`, wrapped as ``PreTrainedTokenizerFast``.

* :func:`build_task_tokenizer` - a WordPiece tokenizer whose vocabulary is the task's words plus
  single digits: ``85`` is ``8 ##5``, so a tiny model can learn arithmetic digit by digit and
  decoding gives back ``85``.
* :func:`train_bpe_tokenizer` - a byte-level BPE trained on any text iterator (e.g. HH-RLHF).

Both carry ``<pad>``, ``<eos>``, ``<unk>`` and a chat template::

    <user> {content} <assistant> {response} <eos>

so preference data can be plain strings or conversational messages, as in TRL.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

PAD, EOS, UNK, USER, ASSISTANT, SYSTEM = "<pad>", "<eos>", "<unk>", "<user>", "<assistant>", "<system>"
SPECIAL_TOKENS = [PAD, EOS, UNK, USER, ASSISTANT, SYSTEM]

CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}<system> {{ m['content'] }} "
    "{% elif m['role'] == 'user' %}<user> {{ m['content'] }} "
    "{% else %}<assistant> {{ m['content'] }} <eos> {% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)

Prompt = str | Sequence[dict[str, str]]


def _wrap(tok: Tokenizer, model_max_length: int) -> PreTrainedTokenizerFast:
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        additional_special_tokens=[USER, ASSISTANT, SYSTEM],
        model_max_length=model_max_length,
        padding_side="left",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_task_tokenizer(words: Iterable[str], model_max_length: int = 64) -> PreTrainedTokenizerFast:
    """WordPiece over ``words`` + digits (``0-9`` and ``##0-##9``); every number splits into digits."""
    vocab: dict[str, int] = {}
    for w in [*SPECIAL_TOKENS, *[str(d) for d in range(10)], *[f"##{d}" for d in range(10)], *words]:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token=UNK, max_input_chars_per_word=32))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    return _wrap(tok, model_max_length)


def train_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int = 2048, model_max_length: int = 512
) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained locally on ``texts`` (for real text such as HH-RLHF)."""
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return _wrap(tok, model_max_length)


def prompt_text(tokenizer: PreTrainedTokenizerBase, prompt: Prompt) -> str:
    """The text fed to the model for a prompt: chat-formatted when the tokenizer has a template.

    A plain-string prompt becomes one user message; a list of messages is used as is. A tokenizer
    without a chat template gets the plain text (conversational prompts are then an error).
    """
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        out: Any = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return str(out)
    if not isinstance(prompt, str):
        raise ValueError("conversational prompt given but the tokenizer has no chat_template")
    return prompt


def completion_text(completion: str | Sequence[dict[str, str]]) -> str:
    """The text of a completion: a string, or the content of the assistant message(s)."""
    if isinstance(completion, str):
        return completion
    return " ".join(m["content"] for m in completion if m.get("role", "assistant") == "assistant")


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: Prompt) -> list[int]:
    return list(tokenizer(prompt_text(tokenizer, prompt), add_special_tokens=False)["input_ids"])


def encode_completion(
    tokenizer: PreTrainedTokenizerBase, completion: str | Sequence[dict[str, str]]
) -> list[int]:
    """Completion token ids, ending with EOS."""
    ids = list(tokenizer(" " + completion_text(completion), add_special_tokens=False)["input_ids"])
    return [*ids, int(tokenizer.eos_token_id)]  # type: ignore[arg-type]


def decode_completion(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> str:
    """Text of generated ids, cut at the first EOS, without special tokens."""
    eos = tokenizer.eos_token_id
    out = list(ids)
    if eos in out:
        out = out[: out.index(eos)]
    return str(tokenizer.decode(out, skip_special_tokens=True)).strip()


#: A tokenizer whose ``model_max_length`` is at least this was given no real limit (transformers' default is 1e30).
_NO_LIMIT = 1_000_000


def context_limit(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The longest sequence the model was built for (``model_max_length``), or ``None`` when unset."""
    n = int(getattr(tokenizer, "model_max_length", _NO_LIMIT) or _NO_LIMIT)
    return n if n < _NO_LIMIT else None


def fit_example(prompt: list[int], completion: list[int], limit: int | None) -> tuple[list[int], list[int]]:
    """Cut an example to ``limit`` tokens: the prompt loses its *oldest* tokens first (the last turns of a
    dialogue matter most), keeping at least one; then the completion is cut at its end (keeping EOS)."""
    if limit is None or len(prompt) + len(completion) <= limit:
        return prompt, completion
    prompt = prompt[-max(1, limit - len(completion)) :]
    if len(prompt) + len(completion) > limit:
        completion = [*completion[: max(0, limit - len(prompt) - 1)], completion[-1]]
    return prompt, completion


def encode_examples(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    completions: Sequence[str | Sequence[dict[str, str]]],
) -> list[tuple[list[int], list[int]]]:
    """Batch-encode (prompt, completion) pairs to (prompt_ids, completion_ids + [eos]), each cut to the
    tokenizer's ``model_max_length`` (:func:`fit_example`; a no-op for the built-in tasks' short texts)."""
    if len(prompts) != len(completions):
        raise ValueError("prompts and completions differ in length")
    eos = int(tokenizer.eos_token_id)  # type: ignore[arg-type]
    p_ids = tokenizer([prompt_text(tokenizer, p) for p in prompts], add_special_tokens=False)["input_ids"]
    c_ids = tokenizer([" " + completion_text(c) for c in completions], add_special_tokens=False)["input_ids"]
    limit = context_limit(tokenizer)
    return [fit_example(list(p), [*c, eos], limit) for p, c in zip(p_ids, c_ids)]


def tokenizer_for_task(
    task: Any, model_max_length: int = 64, vocab_size: int = 2048
) -> PreTrainedTokenizerFast:
    """WordPiece over a closed-vocabulary task's words, else a byte-level BPE trained on its texts."""
    if callable(getattr(task, "vocabulary", None)):
        return build_task_tokenizer(task.vocabulary(), model_max_length=model_max_length)
    if callable(getattr(task, "corpus_texts", None)):
        return train_bpe_tokenizer(
            task.corpus_texts(), vocab_size=vocab_size, model_max_length=model_max_length
        )
    raise ValueError(f"task {task.info.name} has neither a vocabulary nor texts to train a tokenizer on")
