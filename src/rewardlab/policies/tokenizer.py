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
from dataclasses import dataclass
from typing import Any, Literal

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from rewardlab.utils import RewardlabError

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


#: How an example longer than the limit is cut (TRL's ``truncation_mode`` names): ``keep_end`` drops the prompt's
#: oldest tokens (a dialogue keeps its last turns), ``keep_start`` its newest; both then cut the completion's end
#: (keeping EOS). ``error`` refuses the example, naming it.
Truncation = Literal["keep_end", "keep_start", "error"]


def fit_example(prompt: list[int], completion: list[int], limit: int | None,
                truncation: Truncation = "keep_end") -> tuple[list[int], list[int]]:  # fmt: skip
    """Cut an example to ``limit`` tokens: the prompt loses its oldest (``keep_end``) or newest (``keep_start``)
    tokens first, keeping at least one; then the completion is cut at its end (keeping EOS)."""
    if limit is None or len(prompt) + len(completion) <= limit:
        return prompt, completion
    keep = max(1, limit - len(completion))
    prompt = prompt[:keep] if truncation == "keep_start" else prompt[-keep:]
    if len(prompt) + len(completion) > limit:
        completion = [*completion[: max(0, limit - len(prompt) - 1)], completion[-1]]
    return prompt, completion


def fit_examples(examples: Sequence[tuple[list[int], list[int]]], limit: int | None, truncation: Truncation = "keep_end",
                 where: str = "data") -> tuple[list[tuple[list[int], list[int]]], int]:  # fmt: skip
    """Each example cut to ``limit`` tokens (:func:`fit_example`); returns them and how many were cut.

    With ``truncation="error"`` the first example over the limit raises an error naming it (1-based)."""
    out, cut = [], 0
    for i, (p, c) in enumerate(examples, 1):
        if limit is not None and len(p) + len(c) > limit:
            if truncation == "error":
                raise RewardlabError(
                    f"{where}: example {i} has {len(p) + len(c)} tokens, more than the limit of {limit} "
                    "(set truncation: keep_end or keep_start to cut it, or raise max_length up to the model's positions)"
                )
            cut += 1
            p, c = fit_example(p, c, limit, truncation)
        out.append((p, c))
    return out, cut


@dataclass
class Limits:
    """A stage's limit on user data: ``max_length`` tokens per example, cut by ``truncation``; it counts what it
    cuts (``cut`` of ``seen`` examples) so the stage can log it. Build it with :meth:`for_stage`."""

    max_length: int | None
    truncation: Truncation = "keep_end"
    where: str = "data"
    seen: int = 0
    cut: int = 0

    @classmethod
    def for_stage(cls, tokenizer: PreTrainedTokenizerBase, section: Any, name: str) -> Limits:
        """From a config section with ``max_length``/``truncation`` (named ``name`` in errors): ``max_length``
        if set, else the model's positions; one above the model's positions is an error."""
        model = context_limit(tokenizer)
        max_length = getattr(section, "max_length", None)
        if max_length is not None and model is not None and max_length > model:
            raise RewardlabError(
                f"{name}.max_length={max_length} is more than the model's {model} positions; lower it or leave it unset"
            )
        return cls(max_length if max_length is not None else model, getattr(section, "truncation", "keep_end"),
                   name)  # fmt: skip

    def describe(self) -> str | None:
        """One log line when examples were cut, else None."""
        if not self.cut:
            return None
        return (f"{self.cut} of {self.seen} examples were longer than {self.max_length} tokens and were cut "
                f"({self.where}.truncation={self.truncation})")  # fmt: skip


def encode_examples(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    completions: Sequence[str | Sequence[dict[str, str]]],
    limits: Limits | None = None,
) -> list[tuple[list[int], list[int]]]:
    """Batch-encode (prompt, completion) pairs to (prompt_ids, completion_ids + [eos]), each cut to ``limits``
    (default: the tokenizer's ``model_max_length``, ``keep_end``; a no-op for the built-in tasks' short texts)."""
    if len(prompts) != len(completions):
        raise ValueError("prompts and completions differ in length")
    eos = int(tokenizer.eos_token_id)  # type: ignore[arg-type]
    p_ids = tokenizer([prompt_text(tokenizer, p) for p in prompts], add_special_tokens=False)["input_ids"]
    c_ids = tokenizer([" " + completion_text(c) for c in completions], add_special_tokens=False)["input_ids"]
    return fit_to(limits, tokenizer, [(list(p), [*c, eos]) for p, c in zip(p_ids, c_ids, strict=True)])


def fit_to(limits: Limits | None, tokenizer: PreTrainedTokenizerBase,
           examples: list[tuple[list[int], list[int]]]) -> list[tuple[list[int], list[int]]]:  # fmt: skip
    """``examples`` cut to ``limits`` (counted there), or to the tokenizer's limit with ``keep_end``."""
    if limits is None:
        return fit_examples(examples, context_limit(tokenizer))[0]
    out, cut = fit_examples(examples, limits.max_length, limits.truncation, limits.where)
    limits.seen += len(examples)
    limits.cut += cut
    return out


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
