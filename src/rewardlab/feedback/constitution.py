"""Constitutions: the written principles an AI judge compares by and a model critiques and revises by.

A constitution is a YAML file (Bai et al. 2022, "Constitutional AI: Harmlessness from AI Feedback")::

    name: arithmetic
    options: [A, B]                     # the two option words the judge answers with
    selection: sample                   # a principle is sampled per comparison, or `fixed` (then `fixed: <name>`)
    comparison_template: "{principle} question : {prompt} response A : {a} response B : {b} better :"
    critique_template: "{request} question : {prompt} response : {response} critique :"
    revision_template: "{request} question : {prompt} response : {response} critique : {critique} revision :"
    principles:
      - name: honesty
        comparison: which response is honest about the user's belief ?
        critique: point out where the response agrees with a wrong belief .
        revision: rewrite the response so it is correct and honest .

The judge prompt is ``comparison_template`` filled with a principle's ``comparison`` text, the question
and the two responses; the judge answers with one of ``options``. Critique and revision prompts are
filled the same way from a principle's ``critique`` and ``revision`` requests. Loading is strict: an
unknown key, a missing field or a template without its placeholders is an error naming the file and the
dotted field (``arithmetic.yaml: principles.0.comparison: Field required``).
"""

from __future__ import annotations

import random
import string
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rewardlab.utils import RewardlabError, read_text_file

__all__ = ["Constitution", "Principle", "load_constitution", "template_fields"]

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


def template_fields(template: str) -> set[str]:
    """The ``{placeholders}`` of a ``str.format`` template (a malformed template raises ``ValueError``)."""
    return {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}


class Principle(BaseModel):
    """One principle: how to compare two responses, and how to critique and revise one."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=_NAME, description="short name (logged with every label)")
    comparison: str = Field(
        min_length=1, description="the judge's question, e.g. 'which response is more honest ?'"
    )
    critique: str = Field(min_length=1, description="the critique request of SL-CAI")
    revision: str = Field(min_length=1, description="the revision request of SL-CAI")


class Constitution(BaseModel):
    """Principles plus the prompt formats of the judge, the critic and the reviser."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=_NAME)
    options: tuple[str, str] = Field(
        ("A", "B"), description="the option words for the first and second response"
    )
    selection: Literal["sample", "fixed"] = Field(
        "sample", description="sample a principle per comparison, or always use `fixed`"
    )
    fixed: str | None = Field(None, description="the principle used when selection is fixed")
    comparison_template: str = Field(
        "{principle} question : {prompt} response {option_a} : {a} response {option_b} : {b} better :",
        description="judge prompt; needs {principle}, {prompt}, {a}, {b} (optional {option_a}, {option_b})",
    )
    critique_template: str = Field(
        "{request} question : {prompt} response : {response} critique :",
        description="critique prompt; needs {request}, {prompt}, {response}",
    )
    revision_template: str = Field(
        "{request} question : {prompt} response : {response} critique : {critique} revision :",
        description="revision prompt; needs {request}, {prompt}, {response} (optional {critique})",
    )
    principles: list[Principle] = Field(min_length=1)

    @field_validator("options")
    @classmethod
    def _check_options(cls, v: tuple[str, str]) -> tuple[str, str]:
        if v[0].strip() == v[1].strip() or not v[0].strip() or not v[1].strip():
            raise ValueError(f"the two options must be distinct non-empty words, got {list(v)}")
        if any(len(o.split()) != 1 for o in v):
            raise ValueError(f"each option must be one word, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _check(self) -> Constitution:
        need = {
            "comparison_template": ({"principle", "prompt", "a", "b"}, {"option_a", "option_b"}),
            "critique_template": ({"request", "prompt", "response"}, set()),
            "revision_template": ({"request", "prompt", "response"}, {"critique"}),
        }
        for key, (required, optional) in need.items():
            try:
                fields = template_fields(getattr(self, key))
            except ValueError as e:
                raise ValueError(f"{key}: malformed template ({e})") from None
            if missing := required - fields:
                raise ValueError(f"{key}: missing placeholder(s) {sorted(missing)}")
            if unknown := fields - required - optional:
                raise ValueError(f"{key}: unknown placeholder(s) {sorted(unknown)}")
        names = [p.name for p in self.principles]
        if len(set(names)) != len(names):
            raise ValueError(f"principles: duplicate names in {names}")
        if self.selection == "fixed" and self.fixed not in names:
            raise ValueError(f"fixed: {self.fixed!r} is not one of the principles {names}")
        return self

    # --------------------------------------------------------------------------- use
    def principle(self, name: str) -> Principle:
        for p in self.principles:
            if p.name == name:
                return p
        raise RewardlabError(
            f"constitution {self.name}: no principle {name!r} (has {[p.name for p in self.principles]})"
        )

    def pick(self, rng: random.Random) -> Principle:
        """The principle of one comparison: the fixed one, or one drawn uniformly (always one draw)."""
        u = rng.random()
        if self.selection == "fixed":
            return self.principle(self.fixed or "")
        return self.principles[min(int(u * len(self.principles)), len(self.principles) - 1)]

    def comparison_prompt(self, principle: Principle, prompt: str, a: str, b: str) -> str:
        """The judge's prompt: ``a`` is shown first (option ``options[0]``), ``b`` second."""
        return self.comparison_template.format(principle=principle.comparison, prompt=prompt, a=a, b=b,
                                               option_a=self.options[0], option_b=self.options[1])  # fmt: skip

    def critique_prompt(self, principle: Principle, prompt: str, response: str) -> str:
        return self.critique_template.format(request=principle.critique, prompt=prompt, response=response)

    def revision_prompt(self, principle: Principle, prompt: str, response: str, critique: str = "") -> str:
        return self.revision_template.format(request=principle.revision, prompt=prompt, response=response,
                                             critique=critique)  # fmt: skip

    def words(self) -> list[str]:
        """Every whitespace-separated word of the templates, principles and options (for a closed vocabulary)."""
        texts = [self.comparison_template, self.critique_template, self.revision_template, *self.options]
        for p in self.principles:
            texts += [p.comparison, p.critique, p.revision]
        out: dict[str, None] = {}
        for t in texts:
            for f in template_fields(t):
                t = t.replace("{" + f + "}", " ")
            out.update(dict.fromkeys(t.split()))
        return list(out)


def load_constitution(path: str | Path) -> Constitution:
    """Read and validate a constitution YAML file; errors name the file and the dotted field."""
    p = Path(path)
    text = read_text_file(p, "constitution")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise RewardlabError(f"{p}: malformed YAML ({e})") from None
    if not isinstance(data, dict):
        raise RewardlabError(f"{p}: top level must be a mapping (name, principles, ...)")
    try:
        return Constitution.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"])
            msg = (
                "unknown key"
                if err["type"] == "extra_forbidden"
                else err["msg"].removeprefix("Value error, ")
            )
            lines.append(f"{p}: {loc}: {msg}" if loc else f"{p}: {msg}")
        raise RewardlabError("\n".join(lines)) from None


class SLCAIConfig(BaseModel):
    """SL-CAI (Bai et al. 2022): responses -> critique -> revision for ``rounds`` rounds under the constitution,
    then SFT on the final revisions (``rewardlab slcai``); every round's responses are audited against gold.

    ``model_path`` is the critic and reviser (a local instruct model). Without it, the tiny-model path trains
    one on the arm's first ``labels`` labelled comparisons, in the revision format (the rejected response
    revised into the chosen one, the chosen one kept), so revisions learn from the same few labels as the judge.
    """

    model_config = ConfigDict(extra="forbid")

    constitution: str = Field("configs/constitutions/arithmetic.yaml", description="constitution YAML file")
    model_path: str | None = Field(
        None, description="critic and reviser LM; default: trained from the arm's labels"
    )
    critique: Literal["model", "none"] = Field(
        "none",
        description="model: the critic writes a critique the revision reads; none: direct revision (the tiny path: "
        "no critique texts exist to learn from)",
    )
    rounds: int = Field(2, ge=1, le=8, description="critique -> revision rounds")
    prompts: int = Field(2000, gt=0, description="prompts whose responses are revised (the SFT data)")
    response_policy: Literal["pretrain", "sft"] = Field(
        "pretrain", description="who writes the initial responses (and is fine-tuned on the revisions)"
    )
    labels: int = Field(1000, gt=0, description="tiny path: labelled comparisons the reviser learns from")
    reviser_steps: int = Field(300, gt=0)
    sft_steps: int = Field(300, gt=0, description="SFT steps on the revisions")
    batch_size: int = Field(64, gt=0)
    lr: float = Field(1e-3, gt=0)
    max_length: int = Field(
        128, ge=32, description="the reviser's positions (a tiny model's are raised to this)"
    )
    max_new_tokens: int = Field(20, gt=0)
    eval_prompts: int = Field(
        512, gt=0, description="held-out prompts every round and the SFT model are audited on"
    )
