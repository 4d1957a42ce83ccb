"""A task read from a file of prompts, with no gold: real data such as HH-RLHF.

The file (or a folder of files) is JSON Lines, JSON, CSV or Parquet, optionally gzip'd
(:mod:`rewardlab.data.files`), with a ``prompt`` field per record (plain text, or chat messages that
are joined into one ``role: content`` transcript), optionally with ``chosen`` (TRL's preference format)
or ``completion`` (TRL's prompt-completion format). Records without a prompt field are read as TRL's
implicit-prompt records (the prefix ``chosen`` and ``rejected`` share) or as raw HH-RLHF transcript
pairs (:mod:`rewardlab.data.hh`: the shared dialogue is the prompt, the chosen reply the reference).

Records are split once into train and eval prompts, so the audit never sees a training prompt:
``split: fraction`` holds out the last ``eval_fraction`` of the unique prompts in file order;
``split: hh`` uses HH-RLHF's fixed split (:func:`rewardlab.data.hh.hh_split`: train is the train part,
eval the validation part, the test part is left out), so a reward model trained with
``label.file.split: train`` never saw an audit prompt.

No gold: the audit measures the proxy, KL and the behaviours below, and the report says plainly that
the gold curves are absent. When the records carry ``chosen``/``completion`` texts the task also offers
them as a pretraining corpus and as SFT demonstrations, so the whole pipeline runs on the file alone.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rewardlab.data.files import CSV_MESSAGES, FileFormat, iter_raw
from rewardlab.data.hh import hh_record, hh_split, is_hh_transcript
from rewardlab.data.records import MalformedRecord, extract_prompt
from rewardlab.tasks.base import Gold, TaskInfo, TextSampler, seeded_cycle, word_count
from rewardlab.utils import RewardlabError

REFUSAL_MARKERS = ("i'm sorry", "i am sorry", "i cannot", "i can't", "i won't", "as an ai")


class DatasetTaskConfig(BaseModel):
    """Prompts (and optional reference responses) from a JSONL file; no gold."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["dataset"] = "dataset"
    path: str = Field(
        ...,
        description="a file or folder of JSONL/JSON/CSV/Parquet records (optionally .gz): TRL preference or "
        "prompt-completion records, implicit-prompt pairs or raw HH-RLHF transcripts",
    )
    format: FileFormat = Field("auto", description="auto (by file name) | jsonl | json | csv | parquet | hh")
    split: Literal["fraction", "hh"] = Field(
        "fraction",
        description="fraction: the last eval_fraction of prompts is held out; hh: HH-RLHF's fixed split",
    )
    name: str = Field("dataset", description="the task's name in reports")
    prompt_field: str = Field("prompt", description="the column holding the prompt")
    response_field: str | None = Field(
        None,
        description="column of a reference response (corpus and demos); default: chosen, else completion",
    )
    eval_fraction: float = Field(
        0.1, gt=0, lt=1, description="share of unique prompts held out for the audit"
    )
    max_prompt_chars: int = Field(2000, gt=0, description="prompts are cut to their last N characters")
    skip_bad_records: bool = Field(
        False, description="skip malformed records (listed in the task's `skipped`) instead of stopping"
    )


def _text(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(m, Mapping) and "content" in m for m in value):
        return "\n".join(f"{m.get('role', 'user')}: {m['content']}" for m in value)
    raise RewardlabError(f"{where}: expected a string or a list of chat messages, got {type(value).__name__}")


def _json_cell(name: str, value: Any) -> Any:
    """A CSV cell: chat messages when it holds a JSON list of them, else the text itself."""
    if not (isinstance(value, str) and CSV_MESSAGES.match(value)):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as e:
        raise MalformedRecord(
            name, f"looks like a JSON list of chat messages but is not valid JSON ({e.msg})"
        ) from None


class DatasetTask:
    """Items are prompt strings from the file; ``gold`` is ``None`` everywhere."""

    verifier = False

    def __init__(self, config: DatasetTaskConfig) -> None:
        self.config = config
        self.skipped: list[str] = []  # "<file>:<line>: <problem>" of each record skipped as malformed
        self.info = TaskInfo(
            name=config.name,
            has_gold=False,
            description=f"prompts from {config.path} (no gold: proxy, KL and behaviour only)",
            behaviors={"refusal_rate": "refuses or apologizes", "empty_rate": "empty response"},
            headline=None,
        )

    @cached_property
    def _records(self) -> list[tuple[str, str | None, str]]:
        """(prompt, reference response or None, HH split) of every record, in file order."""
        c = self.config
        path = Path(c.path)
        if not path.exists():
            raise RewardlabError(f"task.path: {path} not found")
        out = []
        for _file, rows, typed in iter_raw(path, c.format):
            for raw in rows:
                try:
                    if raw.error is not None:
                        raise MalformedRecord(None, raw.error)
                    prompt, response = self._prompt_response(raw.row, typed)
                    text = self._normalize(_text(prompt, f"field '{c.prompt_field}'"))
                    reply = _text(response, "field 'response'") if response is not None else None
                except (MalformedRecord, RewardlabError) as e:
                    if not c.skip_bad_records:
                        raise RewardlabError(
                            f"{raw.where}: {e} (task.skip_bad_records skips such records)"
                        ) from None
                    self.skipped.append(f"{raw.where}: {e}")
                    continue
                out.append((text, reply, hh_split(prompt) if c.split == "hh" else ""))
        if not out:
            raise RewardlabError(
                f"{path}: no records"
                + (f" ({len(self.skipped)} skipped as malformed)" if self.skipped else "")
            )
        return out

    def _prompt_response(self, row: Any, typed: bool) -> tuple[Any, Any]:
        """The prompt and reference response (or None) of one record, as read; raises :class:`MalformedRecord`."""
        c = self.config
        if not isinstance(row, Mapping):
            raise MalformedRecord(None, f"expected a JSON object, got {type(row).__name__}")
        if typed:  # CSV cells holding JSON lists of messages
            row = {k: _json_cell(k, v) for k, v in row.items()}
        if c.prompt_field in row and c.format != "hh":
            prompt = row[c.prompt_field]
            field = c.response_field or next((f for f in ("chosen", "completion") if f in row), None)
            response = row[field] if field and field in row else None
        elif "chosen" in row and "rejected" in row:
            hh = c.format == "hh" or (is_hh_transcript(row["chosen"]) and is_hh_transcript(row["rejected"]))
            if hh:
                record = hh_record(row["chosen"], row["rejected"])
                prompt, response = record["prompt"], record["chosen"]
            else:
                prompt, response, _ = extract_prompt(row["chosen"], row["rejected"])
        else:
            raise MalformedRecord(
                c.prompt_field,
                "missing (set task.prompt_field, or give chosen and rejected to extract the prompt from)",
            )
        return prompt, response

    def _normalize(self, prompt: str) -> str:
        """A prompt as the task holds it: its last ``max_prompt_chars`` characters, stripped."""
        return prompt[-self.config.max_prompt_chars :].strip()

    @cached_property
    def _splits(self) -> dict[str, list[str]]:
        if self.config.split == "hh":
            parts = {"train": "train", "eval": "validation"}
            splits = {
                k: list(dict.fromkeys(p for p, _, s in self._records if s == v)) for k, v in parts.items()
            }
            for k, v in parts.items():
                if not splits[k]:
                    raise RewardlabError(
                        f"{self.config.path}: no prompt falls in HH's {v} split (task.split: hh)"
                    )
            return splits
        prompts = list(dict.fromkeys(p for p, _, _ in self._records))
        n_eval = max(1, int(len(prompts) * self.config.eval_fraction))
        if len(prompts) - n_eval < 1:
            raise RewardlabError(f"{self.config.path}: {len(prompts)} unique prompts; need at least 2")
        return {"train": prompts[:-n_eval], "eval": prompts[-n_eval:]}

    def split_of(self, prompt: Any) -> str | None:
        """``train`` or ``eval``: the split ``prompt`` (text or chat messages) belongs to; ``None`` if not in the file.

        A preference file read by ``label.source: file`` can be split by it, so that the reward model's and
        DPO's held-out pairs are exactly the prompts the audit holds out (and pretraining and SFT never see).
        """
        try:
            key = self._normalize(_text(prompt, "prompt"))
        except RewardlabError:
            return None
        return next((name for name, ps in self._split_sets.items() if key in ps), None)

    @cached_property
    def _split_sets(self) -> dict[str, frozenset[str]]:
        return {name: frozenset(ps) for name, ps in self._splits.items()}

    # ------------------------------------------------------------- the Task protocol
    def sample_item(self, rng: random.Random, split: str = "train") -> str:
        return rng.choice(self._splits[split])

    def sample_items(self, n: int, seed: int, split: str = "train") -> list[str]:
        """``n`` prompts of ``split``: the whole split in a seeded order, repeated as needed."""
        return seeded_cycle(self._splits[split], n, seed)

    def prompt(self, item: str) -> str:
        return item

    def item(self, prompt: str) -> str:
        return prompt

    def gold(self, item: str, response: str) -> float | None:
        return None

    def gold_detail(self, item: str, response: str) -> Gold | None:
        return None

    def behavior_flags(self, item: str, response: str) -> dict[str, float | None]:
        low = response.lower()
        return {
            "refusal_rate": float(any(m in low for m in REFUSAL_MARKERS)),
            "empty_rate": float(not low.strip()),
        }

    def meta(self, item: str) -> dict[str, Any]:
        return {}

    def level(self, item: str) -> int:
        return 1

    def surface_features(self, item: str, response: str) -> dict[str, float]:
        return {"length": float(word_count(response))}

    def rater_presets(self) -> Mapping[str, Mapping[str, Any]]:
        return {"unbiased": {"verify_prob": [1.0], "biases": {}}, "length-biased": {"verify_prob": [0.0],
                "biases": {"length": 0.05}}}  # fmt: skip

    # -------------------------------------------------------- optional capabilities
    def _documents(self) -> list[tuple[str, str]]:
        docs = [(p, r) for p, r, _ in self._records if r is not None and p in set(self._splits["train"])]
        if not docs:
            raise RewardlabError(
                f"{self.config.path}: no reference responses (chosen/completion) to pretrain or fine-tune on; "
                "give sft.model_path (a base model) or a file with responses"
            )
        return docs

    def _sampler(self, config: Mapping[str, Any]) -> TextSampler:
        if config:
            raise RewardlabError(
                f"task {self.config.name}: the corpus/demos sections take no keys, got {sorted(config)}"
            )
        by_prompt: dict[str, list[str]] = {}
        for p, r in self._documents():
            by_prompt.setdefault(p, []).append(r)
        return lambda item, rng: rng.choice(by_prompt[item]) if item in by_prompt else ""

    def corpus(self, config: Mapping[str, Any]) -> TextSampler:
        return self._sampler(config)

    def demos(self, config: Mapping[str, Any]) -> TextSampler:
        return self._sampler(config)

    def demo_items(self) -> Sequence[str]:
        """Train prompts that have a reference response (what SFT and pretraining sample from)."""
        return list(dict.fromkeys(p for p, _ in self._documents()))

    def corpus_texts(self) -> list[str]:
        """Every prompt and response of the file (what a BPE tokenizer is trained on)."""
        return [t for p, r, _ in self._records for t in (p, r) if t]
