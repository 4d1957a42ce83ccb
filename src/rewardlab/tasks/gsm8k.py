"""GSM8K as a task with a gold reward: grade-school math word problems (Cobbe et al. 2021).

A prompt is the problem in the format of the behaviour evaluation (``Question: ...\\nAnswer:``); the
**gold reward** is exact match of the response's final number with the reference answer
(:func:`rewardlab.data.gsm8k.final_number`: the number after the last ``####``, else the last number)::

    gold = 1[final number == reference answer]      (0 when the response holds no number)

so a policy optimized against a simulated-rater proxy can be audited against correctness. Items come
from GSM8K's own files: ``train`` prompts from ``train.jsonl`` (pretraining, SFT, labels), ``eval``
prompts from ``test.jsonl`` (the audit), so the audit never sees a training problem.

Raters who do not verify perceive effort (:meth:`GSM8KTask.surface_features`: ``words``, ``steps``,
the lines of working that hold an ``=``, and ``answer_phrase``, an explicit ``The answer is``); how hard
a problem is to check (:meth:`GSM8KTask.level`) is the number of steps of its reference solution
(1: up to 2 steps, 2: 3-4, 3: 5 or more). Demonstrations and the pretraining corpus are the reference
solutions without calculator annotations (:func:`rewardlab.data.gsm8k.clean_solution`).

Sized for real models (a GPU, a local checkpoint through ``sft.model_path``): a tiny model trained here
from scratch learns the format, not the arithmetic, and its gold stays near 0.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rewardlab.data.gsm8k import GSM8KProblem, clean_solution, final_number, read_gsm8k
from rewardlab.tasks.base import Gold, TaskInfo, TextSampler, seeded_cycle, validate_section, word_count

PROMPT = "Question: {question}\nAnswer:"
_STEP = re.compile(r"^.*=.*$", re.MULTILINE)

#: Simulated-rater profiles (``rewardlab.feedback.simulated``): what each preset sets.
RATER_PRESETS: dict[str, dict[str, Any]] = {
    "unbiased": {"verify_prob": [1.0, 1.0, 1.0], "biases": {}, "epsilon": 0.0},
    "time-pressed": {
        "verify_prob": [0.5, 0.25, 0.1],
        "biases": {"words": 0.01, "steps": 0.3, "answer_phrase": 0.5},
        "epsilon": 0.0,
    },
}


def default_data_dir() -> str:
    """``$REWARDLAB_DATA/gsm8k/grade_school_math/data``, ``$REWARDLAB_DATA`` defaulting to ``../shared/data``."""
    return str(
        Path(os.environ.get("REWARDLAB_DATA", "../shared/data")) / "gsm8k" / "grade_school_math" / "data"
    )


class GSM8KTaskConfig(BaseModel):
    """GSM8K's problems from a local folder; gold is exact match of the final number."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["gsm8k"] = "gsm8k"
    data_dir: str = Field(
        default_factory=default_data_dir, description="folder with train.jsonl and test.jsonl"
    )
    train_limit: int | None = Field(None, gt=0, description="read at most this many training problems")
    eval_limit: int | None = Field(500, gt=0, description="audit prompts: the first N test problems")


def steps(text: str) -> int:
    """Lines of working: lines holding an ``=``."""
    return len(_STEP.findall(text))


class GSM8KTask:
    """Items are :class:`~rewardlab.data.gsm8k.GSM8KProblem`; gold is 1 for the right final number."""

    verifier = True  # answers end in a number a frozen LM can verify

    def __init__(self, config: GSM8KTaskConfig | None = None) -> None:
        self.config = config or GSM8KTaskConfig()
        self.info = TaskInfo(
            name="gsm8k",
            has_gold=True,
            description="GSM8K word problems; gold = exact match of the final number",
            behaviors={
                "answered_rate": "states a number",
                "shows_work_rate": "shows working (a line with =)",
            },
            headline=None,
            gold_parts=("correct",),
            group="difficulty",
        )

    @cached_property
    def _splits(self) -> dict[str, list[GSM8KProblem]]:
        folder = Path(self.config.data_dir)
        return {
            "train": read_gsm8k(folder / "train.jsonl", self.config.train_limit),
            "eval": read_gsm8k(folder / "test.jsonl", self.config.eval_limit),
        }

    @cached_property
    def _by_prompt(self) -> dict[str, GSM8KProblem]:
        return {self.prompt(p): p for split in self._splits.values() for p in split}

    # ------------------------------------------------------------- the Task protocol
    def sample_item(self, rng: random.Random, split: str = "train") -> GSM8KProblem:
        return rng.choice(self._splits[split])

    def sample_items(self, n: int, seed: int, split: str = "train") -> list[GSM8KProblem]:
        """``n`` problems of ``split``: the whole split in a seeded order, repeated as needed."""
        return seeded_cycle(self._splits[split], n, seed)

    def prompt(self, item: GSM8KProblem) -> str:
        return PROMPT.format(question=item.question)

    def item(self, prompt: str) -> GSM8KProblem:
        try:
            return self._by_prompt[prompt]
        except KeyError:
            raise ValueError(f"not a GSM8K prompt of this task: {prompt[:80]!r}") from None

    def gold(self, item: GSM8KProblem, response: str) -> float:
        return self.gold_detail(item, response).value

    def gold_detail(self, item: GSM8KProblem, response: str) -> Gold:
        got = final_number(response)
        correct = got is not None and got == item.answer
        return Gold(
            value=float(correct),
            parseable=got is not None,
            correct=correct,
            parts={"correct": float(correct)},
        )

    def behavior_flags(self, item: GSM8KProblem, response: str) -> dict[str, float | None]:
        return {
            "answered_rate": float(final_number(response) is not None),
            "shows_work_rate": float(steps(response) > 0),
        }

    def meta(self, item: GSM8KProblem) -> dict[str, Any]:
        return {"difficulty": self.level(item), "answer": item.answer}

    def level(self, item: GSM8KProblem) -> int:
        n = steps(item.solution)
        return 1 if n <= 2 else 2 if n <= 4 else 3

    def surface_features(self, item: GSM8KProblem, response: str) -> dict[str, float]:
        return {
            "words": float(word_count(response)),
            "steps": float(steps(response)),
            "answer_phrase": float("the answer is" in response.lower()),
        }

    def rater_presets(self) -> Mapping[str, Mapping[str, Any]]:
        return RATER_PRESETS

    # -------------------------------------------------------- optional capabilities
    def _sampler(self, config: Mapping[str, Any], where: str) -> TextSampler:
        validate_section(None, config, where)
        return lambda item, rng: clean_solution(item.solution)

    def corpus(self, config: Mapping[str, Any]) -> TextSampler:
        return self._sampler(config, "pretrain.corpus")

    def demos(self, config: Mapping[str, Any]) -> TextSampler:
        return self._sampler(config, "sft.demos")

    def demo_items(self) -> Sequence[GSM8KProblem]:
        return list(self._splits["train"])

    def corpus_texts(self) -> list[str]:
        """Training prompts and their cleaned solutions (what a byte-level BPE is trained on)."""
        return [t for p in self._splits["train"] for t in (self.prompt(p), clean_solution(p.solution))]
