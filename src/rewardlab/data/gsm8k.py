"""GSM8K (Cobbe et al. 2021, "Training Verifiers to Solve Math Word Problems"; MIT): grade-school math
word problems whose reference solutions end in ``#### <number>``.

:func:`final_number` reads the answer of a solution or of a model's output; :func:`read_gsm8k` reads the
problems of a split file; :func:`clean_solution` turns a reference solution into a demonstration (the
calculator annotations ``<<48/2=24>>`` dropped, the final ``#### 72`` written as ``The answer is 72.``).
The behaviour evaluation (:mod:`rewardlab.evals`) and the GSM8K task (:mod:`rewardlab.tasks.gsm8k`) both
score with :func:`final_number`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

from rewardlab.utils import RewardlabError, read_jsonl_numbered

__all__ = ["GSM8KProblem", "clean_solution", "final_number", "normalize_number", "read_gsm8k"]

# A number as people write it: optional sign (a minus right after a word or a closing bracket is a
# subtraction, not a sign: "3-4" is 3 and 4), optional $, digits with thousands commas, optional decimals.
_NUMBER = re.compile(r"((?<![0-9A-Za-z)\]])-)?\s*\$?\s*((?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)")


def normalize_number(text: str) -> str | None:
    """A canonical decimal string for a number written as ``1,234``, ``$5``, ``-3``, ``42.50`` or ``.5``:
    commas and ``$`` dropped, trailing zeros of the decimals dropped (``42.50`` -> ``42.5``, ``7.0`` -> ``7``).
    ``None`` when ``text`` holds no number."""
    m = _NUMBER.search(text)
    if m is None:
        return None
    sign, digits = m.group(1) or "", m.group(2).replace(",", "")
    try:
        value = Decimal(sign + digits)
    except InvalidOperation:  # pragma: no cover - the pattern only matches valid decimals
        return None
    if value == value.to_integral_value():
        return str(value.quantize(Decimal(1)).copy_abs() if value == 0 else value.quantize(Decimal(1)))
    return format(value.normalize(), "f")


def final_number(text: str) -> str | None:
    """The final number of a GSM8K solution or model output, normalized by :func:`normalize_number`.

    Cobbe et al. (2021) end every reference solution with ``#### <number>``: when ``####`` occurs, the
    number after its last occurrence is the answer; otherwise the last number in the text (what
    lm-evaluation-harness's flexible extraction does for free-form outputs). ``None`` when there is none.
    """
    if "####" in text:
        return normalize_number(text.rsplit("####", 1)[1])
    last = None
    for m in _NUMBER.finditer(text):
        last = m
    return None if last is None else normalize_number(last.group(0))


_CALC = re.compile(r"<<[^<>]*>>")


@dataclass(frozen=True)
class GSM8KProblem:
    """One problem: the question, the reference solution and its final number (normalized)."""

    question: str
    solution: str
    answer: str


def clean_solution(solution: str) -> str:
    """A reference solution as a demonstration: calculator annotations removed, ``#### N`` -> ``The answer is N.``"""
    body, _, tail = _CALC.sub("", solution).rpartition("####")
    if not _:
        return _CALC.sub("", solution).strip()
    answer = normalize_number(tail)
    return f"{body.strip()}\nThe answer is {answer}." if answer is not None else body.strip()


def read_gsm8k(path: Path, limit: int | None = None) -> list[GSM8KProblem]:
    """The problems of a GSM8K split file (JSONL with string ``question`` and ``answer`` = the solution)."""
    if not path.is_file():
        raise RewardlabError(
            f"{path}: GSM8K file not found (../shared/data/gsm8k/grade_school_math/data/*.jsonl)"
        )
    out = []
    for line, rec in read_jsonl_numbered(path):
        q, sol = rec.get("question"), rec.get("answer")
        if not isinstance(q, str) or not isinstance(sol, str):
            raise RewardlabError(f"{path}:{line}: fields 'question' and 'answer' must be strings")
        answer = final_number(sol)
        if answer is None or "####" not in sol:
            raise RewardlabError(
                f"{path}:{line}: field 'answer': the solution does not end in '#### <number>'"
            )
        out.append(GSM8KProblem(q.strip(), sol, answer))
        if limit is not None and len(out) >= limit:
            break
    return out
