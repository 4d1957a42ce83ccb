"""Real prompts with a synthetic gold: a frozen reward model stands in for the humans.

Gao, Schulman & Hilton (2022), "Scaling Laws for Reward Model Overoptimization" (arXiv:2210.10760),
measure over-optimization without paying humans for every point of a curve: a large "gold" reward
model, trained on human labels, *is* the ground truth; smaller proxy reward models are trained on its
(noisy) preferences over policy samples; the policy is optimized against a proxy, and the gold tells
how much of the proxy's gain was real.

This task does the same on real text. Its prompts come from a :class:`~rewardlab.tasks.dataset.DatasetTask`
(``task.data``: e.g. HH-RLHF with its fixed split, so the audit's prompts are never trained on, and the
dataset's chosen replies as pretraining corpus and SFT demonstrations). Its **gold** is a frozen reward
model read from ``task.gold_path`` (a rewardlab reward-model folder: ``ensemble.json``, ``members/<i>``,
the tokenizer) with an encoder backbone (such as MiniLM): ``gold(prompt, response)`` is the
model's normalized score. The model lives inside the task, so like every gold it is reachable only through
:meth:`SyntheticGoldTask.gold`: the optimizers and the proxy see prompts and their own reward model, never it.

The folder is read with ``transformers`` directly (the task layer sits below ``rewards``) and encoded as
:class:`rewardlab.rewards.model.RewardModel` encodes an encoder backbone (``[CLS] prompt [SEP] response
[SEP]``, the prompt's oldest tokens cut first), so gold equals that model's score on the
same text (``tests/test_synthetic_gold.py`` checks it). Scores are cached per (prompt, response) and the
model is loaded once per process, as every stage of a study asks the same gold about the same samples. The
member config's ``reward_pooling`` (``mean``: the classifier on the masked mean of the last hidden states),
``reward_max_length`` and ``reward_truncation`` are honoured, as the reward model reads them.

The simulated rater of :mod:`rewardlab.feedback.simulated` labels pairs with this gold unchanged: the
preset ``gold`` verifies always (``perceived = gold_scale * gold``) and chooses by Boltzmann
``P(a > b) = sigmoid(beta * gold_scale * (gold_a - gold_b))``, the logistic label noise of a
Bradley-Terry rater (``beta = inf``: noiseless, Gao et al.'s main setting).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from rewardlab.tasks.base import Gold, TaskInfo, TextSampler, word_count
from rewardlab.tasks.dataset import DatasetTask, DatasetTaskConfig
from rewardlab.utils import RewardlabError

#: The longest input the gold reads, in tokens (as :func:`rewardlab.rewards.model.encode_for_reward`).
GOLD_MAX_TOKENS = 512


class SyntheticGoldConfig(BaseModel):
    """Prompts from a dataset, gold from a frozen reward model (Gao et al. 2022's synthetic setup)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["synthetic-gold"] = "synthetic-gold"
    gold_path: str = Field(
        ..., description="the gold: a rewardlab reward-model folder with an encoder backbone (e.g. MiniLM)"
    )
    data: DatasetTaskConfig = Field(
        ..., description="the prompts (and reference replies): a dataset task section, e.g. HH-RLHF, split hh"
    )
    name: str = Field("synthetic-gold", description="the task's name in reports")
    batch_size: int = Field(64, gt=0, description="sequences per gold forward pass when scoring many")


class FrozenGold:
    """A rewardlab reward-model folder (encoder members), frozen: normalized score, ensemble mean.

    ``score(prompts, responses)`` equals ``RewardModel.load(path).score(prompts, responses).mean``.
    """

    def __init__(self, path: Path) -> None:
        meta_path = path / "ensemble.json"
        if not meta_path.is_file():
            raise RewardlabError(f"task.gold_path: {path} is not a rewardlab reward model (no ensemble.json)")
        try:
            k = int(json.loads(meta_path.read_text(encoding="utf-8"))["k"])
        except (ValueError, KeyError) as e:
            raise RewardlabError(f"task.gold_path: {meta_path} is malformed ({e})") from None
        self.path = path
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.members = [
            AutoModelForSequenceClassification.from_pretrained(
                str(path / "members" / str(i)), dtype=torch.float32
            )
            .eval()
            .requires_grad_(False)
            for i in range(k)
        ]
        for m in self.members:
            if not (hasattr(m, "classifier") and not hasattr(m, "score")):
                raise RewardlabError(
                    f"task.gold_path: {path} has a {type(m).__name__} member; the gold must have an encoder "
                    "backbone (a [CLS] classifier such as MiniLM)"
                )
        self.stats = [(float(getattr(m.config, "reward_mean", 0.0)), float(getattr(m.config, "reward_std", 1.0)))
                      for m in self.members]  # fmt: skip
        cfg = self.members[0].config
        self.pooling = str(getattr(cfg, "reward_pooling", "cls"))
        model_max = min(int(getattr(self.tokenizer, "model_max_length", GOLD_MAX_TOKENS)), GOLD_MAX_TOKENS)
        self.max_tokens = int(getattr(cfg, "reward_max_length", None) or model_max)
        self.keep_end = getattr(cfg, "reward_truncation", "keep_end") != "keep_start"
        self._template = self._pair_template()
        self._cache: dict[tuple[str, str], float] = {}

    def _pair_template(self) -> tuple[list[int], list[int], list[int]]:
        """The special tokens the tokenizer puts before, between and after a pair (BERT: [CLS], [SEP], [SEP])."""
        tok = self.tokenizer
        a = tok("a", add_special_tokens=False)["input_ids"]
        b = tok("b", add_special_tokens=False)["input_ids"]
        ids = tok("a", "b")["input_ids"]
        i = next(k for k in range(len(ids)) if ids[k : k + len(a)] == a)
        j = next(k for k in range(len(ids) - len(b), i + len(a) - 1, -1) if ids[k : k + len(b)] == b)
        return ids[:i], ids[i + len(a) : j], ids[j + len(b) :]

    def _encode(self, prompt: str, response: str) -> list[int]:
        """``[CLS] prompt [SEP] response [SEP]`` in at most ``reward_max_length`` tokens (the length the gold was
        trained on): the response keeps its start, the prompt fills what is left with its newest tokens."""
        head, mid, tail = self._template
        p = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        c = self.tokenizer(response, add_special_tokens=False)["input_ids"]
        budget = self.max_tokens - len(head) - len(mid) - len(tail)
        if len(p) + len(c) > budget:
            c = c[:budget]
            room = budget - len(c)
            p = (p[len(p) - room :] if room else []) if self.keep_end else p[:room]
        return [*head, *p, *mid, *c, *tail]

    def _member_score(self, m: Any, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The member's raw score: its classifier's logit ([CLS] pooler), or, with ``reward_pooling: mean``, the
        classifier on the masked mean of the encoder's last hidden states."""
        if self.pooling != "mean":
            return m(input_ids=ids, attention_mask=mask).logits[:, 0]
        hidden = m.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
        w = mask.unsqueeze(-1).to(hidden.dtype)
        return m.classifier((hidden * w).sum(1) / w.sum(1).clamp(min=1.0))[:, 0]

    @torch.no_grad()
    def _forward(self, seqs: Sequence[list[int]]) -> list[float]:
        pad = int(self.tokenizer.pad_token_id or 0)
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        total = torch.zeros(len(seqs))
        for m, (mu, sd) in zip(self.members, self.stats, strict=True):
            total += (self._member_score(m, ids, mask).float() - mu) / sd
        return (total / len(self.members)).tolist()

    def score(self, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 64) -> list[float]:
        """Gold per (prompt, response); new pairs are scored in length-sorted batches and cached."""
        keys = list(zip(prompts, responses, strict=True))
        todo = list(dict.fromkeys(k for k in keys if k not in self._cache))
        enc = {k: self._encode(*k) for k in todo}
        todo.sort(key=lambda k: len(enc[k]))
        for i in range(0, len(todo), batch_size):
            chunk = todo[i : i + batch_size]
            for k, v in zip(chunk, self._forward([enc[k] for k in chunk]), strict=True):
                self._cache[k] = v
        return [self._cache[k] for k in keys]


#: One frozen gold per folder and process: every stage of a study asks it about the same samples.
_GOLDS: dict[Path, FrozenGold] = {}


def load_gold(path: str | Path) -> FrozenGold:
    """The frozen gold of ``path``, loaded once per process."""
    p = Path(path).resolve()
    if not p.exists():
        raise RewardlabError(f"task.gold_path: {p} not found")
    if p not in _GOLDS:
        _GOLDS[p] = FrozenGold(p)
    return _GOLDS[p]


class SyntheticGoldTask:
    """Items are the dataset's prompt strings; gold is the frozen reward model's score (no parts, no floor)."""

    verifier = False

    def __init__(self, config: SyntheticGoldConfig) -> None:
        self.config = config
        self._data = DatasetTask(config.data)
        self._frozen: FrozenGold | None = None
        self.info = TaskInfo(
            name=config.name,
            has_gold=True,
            description=f"prompts from {config.data.path}; gold: the frozen reward model {config.gold_path}",
            behaviors={"refusal_rate": "refuses or apologizes", "empty_rate": "empty response"},
            headline=None,
        )

    @property
    def _gold(self) -> FrozenGold:
        if self._frozen is None:
            self._frozen = load_gold(self.config.gold_path)
        return self._frozen

    def gold_many(self, items: Sequence[str], responses: Sequence[str]) -> list[float]:
        """Gold of many responses at once (batched; what a study calls to fill the cache)."""
        return self._gold.score([self.prompt(i) for i in items], responses, self.config.batch_size)

    # ------------------------------------------------------------- the Task protocol
    def sample_item(self, rng: random.Random, split: str = "train") -> str:
        return self._data.sample_item(rng, split)

    def sample_items(self, n: int, seed: int, split: str = "train") -> list[str]:
        return self._data.sample_items(n, seed, split)

    def prompt(self, item: str) -> str:
        return self._data.prompt(item)

    def item(self, prompt: str) -> str:
        return self._data.item(prompt)

    def gold(self, item: str, response: str) -> float | None:
        return self.gold_many([item], [response])[0]

    def gold_detail(self, item: str, response: str) -> Gold | None:
        value = self.gold(item, response)
        if value is None or not math.isfinite(value):
            raise RewardlabError(f"task {self.info.name}: the gold gave a non-finite score ({value})")
        return Gold(value=value)

    def behavior_flags(self, item: str, response: str) -> dict[str, float | None]:
        return self._data.behavior_flags(item, response)

    def meta(self, item: str) -> dict[str, Any]:
        return {}

    def level(self, item: str) -> int:
        return 1

    def surface_features(self, item: str, response: str) -> dict[str, float]:
        return {"length": float(word_count(response))}

    def rater_presets(self) -> Mapping[str, Mapping[str, Any]]:
        """``gold``/``unbiased``: the gold's Boltzmann preference (Gao et al.'s labeller); ``gold-noiseless``:
        always the higher gold; ``length-biased``: a rater who only sees length (a misspecified control)."""
        return {
            "unbiased": {"verify_prob": [1.0], "biases": {}, "gold_scale": 1.0, "beta": 2.0},
            "gold": {"verify_prob": [1.0], "biases": {}, "gold_scale": 1.0, "beta": 2.0},
            "gold-noiseless": {"verify_prob": [1.0], "biases": {}, "gold_scale": 1.0, "beta": math.inf},
            "length-biased": {"verify_prob": [0.0], "biases": {"length": 0.05}},
        }

    # -------------------------------------------------------- optional capabilities
    def split_of(self, prompt: Any) -> str | None:
        return self._data.split_of(prompt)

    def corpus(self, config: Mapping[str, Any]) -> TextSampler:
        return self._data.corpus(config)

    def demos(self, config: Mapping[str, Any]) -> TextSampler:
        return self._data.demos(config)

    def demo_items(self) -> Sequence[str]:
        return self._data.demo_items()

    def corpus_texts(self) -> list[str]:
        return self._data.corpus_texts()
