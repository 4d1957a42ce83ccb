"""The model calls of the evaluations: log-probs of given continuations, and greedy generation.

Prompts use the tokenizer's chat template when it has one (the question as one user message, then the
assistant's turn: :func:`rewardlab.policies.tokenizer.prompt_text`), otherwise each set's own plain format.
A context longer than the model's positions keeps its last tokens (where the choices and the question end);
the number of items cut so is counted.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rewardlab.policies.sampling import sample
from rewardlab.policies.tokenizer import context_limit, decode_completion, prompt_text
from rewardlab.utils import RewardlabError


def context_text(tokenizer: PreTrainedTokenizerBase, question: str, plain: str) -> str:
    """The text before the answer: chat-formatted when the tokenizer has a chat template, else
    ``plain.format(question=question)`` (e.g. Anthropic's ``"\\n\\nHuman: {question}\\n\\nAssistant:"``)."""
    if getattr(tokenizer, "chat_template", None):
        return prompt_text(tokenizer, question)
    return plain.format(question=question)


@dataclass
class LMScorer:
    """Log-probs and greedy generations of one causal LM (eval mode, no gradients, batched).

    ``truncated`` counts the contexts that had to lose their first tokens to fit the model's positions.
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    batch_size: int = 16
    truncated: int = field(default=0, init=False)

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @torch.no_grad()
    def logprobs(self, contexts: Sequence[str], continuations: Sequence[str]) -> list[float]:
        """``log p(continuation | context) = sum_t log p(c_t | context, c_<t)`` for each pair.

        The continuation is tokenized on its own (with its leading space), so every option of a question is
        scored on the same context tokens. Pairs are batched by length, left-padded (positions from the mask).
        """
        if len(contexts) != len(continuations):
            raise ValueError("logprobs: one continuation per context")
        limit = context_limit(self.tokenizer)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        seqs: list[tuple[list[int], int]] = []  # (ids, number of continuation tokens)
        cache: dict[str, list[int]] = {}
        for ctx, cont in zip(contexts, continuations):
            c_ids = cache.setdefault(ctx, self._encode(ctx))
            a_ids = self._encode(cont)
            if not a_ids:
                raise RewardlabError(f"the answer {cont!r} encodes to zero tokens")
            if limit is not None and len(c_ids) + len(a_ids) > limit:
                keep = limit - len(a_ids)
                if keep < 1:
                    raise RewardlabError(
                        f"the answer {cont!r} alone is longer than the model's {limit} positions"
                    )
                c_ids = c_ids[-keep:]
                self.truncated += 1
            if not c_ids:
                raise RewardlabError("a context encodes to zero tokens")
            seqs.append(([*c_ids, *a_ids], len(a_ids)))
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i][0]))
        out = [0.0] * len(seqs)
        device = next(self.model.parameters()).device
        keep_arg = "logits_to_keep" in inspect.signature(type(self.model).forward).parameters
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                width = max(len(seqs[i][0]) for i in idx)
                ids = torch.full((len(idx), width), int(pad), dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for r, i in enumerate(idx):  # left padding: every answer ends at the last column
                    row = seqs[i][0]
                    ids[r, width - len(row) :] = torch.tensor(row)
                    mask[r, width - len(row) :] = 1
                # the answer's k tokens are predicted by the logits at the k positions before each of them,
                # so only the last (longest answer + 1) columns of logits are needed (a real vocabulary's
                # logits over the whole context would dominate memory)
                keep = min(width, max(seqs[i][1] for i in idx) + 1)
                ids, mask = ids.to(device), mask.to(device)
                extra = {"logits_to_keep": keep} if keep_arg else {}
                logits = self.model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                                    **extra).logits[:, -keep:]  # fmt: skip
                logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
                token_logp = logp.gather(-1, ids[:, width - keep + 1 :].unsqueeze(-1)).squeeze(-1)
                for r, i in enumerate(idx):
                    out[i] = float(token_logp[r, keep - 1 - seqs[i][1] :].sum())
        finally:
            self.model.train(was_training)
        return out

    def generate(self, contexts: Sequence[str], max_new_tokens: int, stop: Sequence[str] = ()) -> list[str]:
        """Greedy completions of ``contexts`` (cut at the first EOS and at the first of ``stop``).

        When the model's positions cannot hold ``max_new_tokens`` after a prompt, at most half of them are
        given to the answer and the prompt keeps its last tokens.
        """
        tok = self.tokenizer
        if tok.eos_token_id is None:
            raise RewardlabError("greedy generation needs a tokenizer with an EOS token")
        pad = int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
        limit = context_limit(tok)
        new = max_new_tokens if limit is None else max(1, min(max_new_tokens, limit // 2))
        texts: list[str] = []
        for start in range(0, len(contexts), self.batch_size):
            encoded = [self._encode(c) for c in contexts[start : start + self.batch_size]]
            if limit is not None:
                cut = [ids[-(limit - new) :] for ids in encoded]
                self.truncated += sum(len(a) != len(b) for a, b in zip(encoded, cut))
                encoded = cut
            width = max(len(e) for e in encoded)
            ids = torch.full((len(encoded), width), pad, dtype=torch.long)
            mask = torch.zeros((len(encoded), width), dtype=torch.long)
            for r, e in enumerate(encoded):
                ids[r, width - len(e) :] = torch.tensor(e)
                mask[r, width - len(e) :] = 1
            device = next(self.model.parameters()).device
            batch = sample(self.model, ids.to(device), mask.to(device), max_new_tokens=new,
                           eos_token_id=int(tok.eos_token_id), pad_token_id=pad, greedy=True)  # fmt: skip
            for row in batch.response_ids.tolist():
                text = decode_completion(tok, row)
                for s in stop:
                    text = text.split(s, 1)[0]
                texts.append(text.strip())
        return texts
