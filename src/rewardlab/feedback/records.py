"""Feedback records: pairwise comparisons and K-wise rankings, and their JSONL files.

The file format follows TRL's preference datasets: one JSON object per line with ``prompt``,
``chosen`` and ``rejected``, each either plain text (``"what is 2 + 2 ?"``) or conversational (a
list of ``{"role": ..., "content": ...}`` messages). Optional keys carry what the lab knows beyond
TRL: ``rater``, ``margin``, ``gold_chosen``/``gold_rejected`` (the hidden gold reward of each side,
for auditing only) and a free-form ``meta`` object; a tie is ``meta["tie"] = true``.

A ranking file has ``prompt``, ``completions`` (K >= 2) and ``ranking`` (indices into
``completions``, best first: a permutation of ``range(K)`` or a prefix of one, meaning the ranked
items beat each other in order and all beat every unranked item), plus optional ``rater``,
``golds`` and ``meta``.

Loading is strict: any problem raises :class:`~rewardlab.utils.RewardlabError` whose message names
the file, the 1-based line and the field (``data.jsonl:3: field 'chosen': ...``). Unknown keys are
errors too, so a typo (``"choosen"``) cannot silently drop a field.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from rewardlab.utils import RewardlabError, read_jsonl_numbered, write_jsonl

__all__ = [
    "Comparison",
    "Message",
    "Ranking",
    "Text",
    "comparisons_to_rankings",
    "load_comparisons",
    "load_prompt_completions",
    "load_rankings",
    "rankings_to_comparisons",
    "save_comparisons",
    "save_rankings",
]

Message = dict[str, str]
#: A prompt or completion: plain text or a list of chat messages.
Text = str | list[Message]

_COMPARISON_REQUIRED = ("prompt", "chosen", "rejected")
_COMPARISON_OPTIONAL = ("rater", "margin", "gold_chosen", "gold_rejected", "meta")
_RANKING_REQUIRED = ("prompt", "completions", "ranking")
_RANKING_OPTIONAL = ("rater", "golds", "meta")
_R = TypeVar("_R")


# ---------------------------------------------------------------------------- field checks
def _fail(where: str, name: str, problem: str) -> RewardlabError:
    return RewardlabError(f"{where}: field '{name}': {problem}")


def _check_text(value: Any, where: str, name: str) -> Text:
    """A string, or a non-empty list of ``{"role": str, "content": str}`` messages."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise _fail(where, name, f"expected a string or a list of chat messages, got {type(value).__name__}")
    if not value:
        raise _fail(where, name, "expected a string or a list of chat messages, got an empty list")
    for j, msg in enumerate(value):
        if not isinstance(msg, Mapping):
            raise _fail(
                where,
                name,
                f"message {j} must be an object with 'role' and 'content', got {type(msg).__name__}",
            )
        for key in ("role", "content"):
            if key not in msg:
                raise _fail(
                    where, name, f"message {j} has no '{key}' (a chat message needs 'role' and 'content')"
                )
            if not isinstance(msg[key], str):
                raise _fail(
                    where, name, f"message {j}: '{key}' must be a string, got {type(msg[key]).__name__}"
                )
    return [dict(m) for m in value]


def _check_same_format(texts: Sequence[tuple[str, Text]], where: str) -> None:
    """All texts of one record are plain, or all conversational (as TRL requires)."""
    kinds = {name: isinstance(t, str) for name, t in texts}
    if len(set(kinds.values())) > 1:
        plain = [n for n, k in kinds.items() if k]
        conv = [n for n, k in kinds.items() if not k]
        raise _fail(
            where,
            conv[0],
            f"is a list of messages but {', '.join(repr(p) for p in plain)} is plain text; "
            "a record must be all plain text or all conversational",
        )


def _check_number(value: Any, where: str, name: str, *, optional: bool = True) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(
            where, name, f"expected a number{' or null' if optional else ''}, got {type(value).__name__}"
        )
    if not math.isfinite(value):
        raise _fail(where, name, f"expected a finite number, got {value}")
    return float(value)


def _check_str(value: Any, where: str, name: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise _fail(where, name, f"expected a string or null, got {type(value).__name__}")


def _check_meta(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _fail(where, "meta", f"expected an object, got {type(value).__name__}")
    bad = [k for k in value if not isinstance(k, str)]
    if bad:
        raise _fail(where, "meta", f"keys must be strings, got {bad[0]!r}")
    return dict(value)


def _check_keys(row: Mapping[str, Any], required: Sequence[str], optional: Sequence[str], where: str) -> None:
    unknown = [k for k in row if k not in required and k not in optional]
    if unknown:
        allowed = ", ".join(list(required) + list(optional))
        raise RewardlabError(
            f"{where}: unknown field(s) {', '.join(repr(k) for k in unknown)} (allowed: {allowed}; "
            "put extra information under 'meta')"
        )
    for k in required:
        if k not in row:
            raise RewardlabError(f"{where}: missing required field '{k}'")


def _to_row(obj: Any, required: Sequence[str], optional: Sequence[str]) -> dict[str, Any]:
    """A JSONL row: the required fields, then the optional ones that are set (an empty ``meta`` is left out)."""
    d: dict[str, Any] = {n: getattr(obj, n) for n in required}
    for n in optional:
        v = getattr(obj, n)
        if v is not None and not (n == "meta" and not v):
            d[n] = v
    return copy.deepcopy(d)


def _from_row(cls: type[_R], row: Any, required: Sequence[str], optional: Sequence[str], where: str) -> _R:
    """Build a frozen record from a row, validated with errors prefixed by ``where``."""
    if not isinstance(row, Mapping):
        raise RewardlabError(f"{where}: expected a JSON object, got {type(row).__name__}")
    _check_keys(row, required, optional, where)
    obj = object.__new__(cls)
    for n in (*required, *optional):
        object.__setattr__(obj, n, copy.deepcopy(row.get(n)))
    obj._validate(where)  # type: ignore[attr-defined]
    return obj


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


# --------------------------------------------------------------------------------- records
@dataclass(frozen=True)
class Comparison:
    """One pairwise preference: ``chosen`` is preferred to ``rejected`` given ``prompt``.

    ``gold_chosen``/``gold_rejected`` are the hidden gold rewards (for audits; never train on
    them). A tie is recorded as ``meta["tie"] = True`` (then the order of the pair is arbitrary).
    Fields are validated on construction; a bad value raises :class:`RewardlabError`.
    """

    prompt: Text
    chosen: Text
    rejected: Text
    rater: str | None = None
    margin: float | None = None
    gold_chosen: float | None = None
    gold_rejected: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._validate("Comparison")

    def _validate(self, where: str) -> None:
        texts = [(n, _check_text(getattr(self, n), where, n)) for n in _COMPARISON_REQUIRED]
        _check_same_format(texts, where)
        for n, t in texts:
            object.__setattr__(self, n, t)
        object.__setattr__(self, "rater", _check_str(self.rater, where, "rater"))
        for n in ("margin", "gold_chosen", "gold_rejected"):
            object.__setattr__(self, n, _check_number(getattr(self, n), where, n))
        object.__setattr__(self, "meta", _check_meta(self.meta, where))

    @property
    def tie(self) -> bool:
        """Whether the rater judged the two completions equally good."""
        return bool(self.meta.get("tie", False))

    def to_dict(self) -> dict[str, Any]:
        """A TRL-style row; ``None`` fields (and an empty ``meta``) are left out."""
        return _to_row(self, _COMPARISON_REQUIRED, _COMPARISON_OPTIONAL)

    @classmethod
    def from_dict(cls, row: Mapping[str, Any], where: str = "comparison") -> Comparison:
        """Build from a row, with errors prefixed by ``where`` (e.g. ``"file.jsonl:3"``)."""
        return _from_row(cls, row, _COMPARISON_REQUIRED, _COMPARISON_OPTIONAL, where)


@dataclass(frozen=True)
class Ranking:
    """A K-wise ranking: ``ranking`` lists indices into ``completions``, best first.

    ``ranking`` is a permutation of ``range(K)`` or a prefix of one (a partial "top-m" ranking:
    the listed items beat each other in order and every unlisted item). ``golds`` holds the
    hidden gold reward of each completion (same order as ``completions``) or is ``None``.
    """

    prompt: Text
    completions: list[Text]
    ranking: list[int]
    rater: str | None = None
    golds: list[float] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._validate("Ranking")

    def _validate(self, where: str) -> None:
        prompt = _check_text(self.prompt, where, "prompt")
        comps = self.completions
        if not isinstance(comps, list | tuple):
            raise _fail(where, "completions", f"expected a list of completions, got {type(comps).__name__}")
        if len(comps) < 2:
            raise _fail(where, "completions", f"a ranking needs at least 2 completions, got {len(comps)}")
        comps = [_check_text(c, where, f"completions[{i}]") for i, c in enumerate(comps)]
        _check_same_format(
            [("prompt", prompt)] + [(f"completions[{i}]", c) for i, c in enumerate(comps)], where
        )
        k = len(comps)
        rk = self.ranking
        if not isinstance(rk, list | tuple) or not all(_is_int(i) for i in rk):
            raise _fail(where, "ranking", "expected a list of integer indices into 'completions'")
        rk = list(rk)
        if not rk:
            raise _fail(where, "ranking", "is empty; list at least the best completion's index")
        if any(i < 0 or i >= k for i in rk) or len(set(rk)) != len(rk):
            raise _fail(
                where,
                "ranking",
                f"{rk} is not a permutation of range({k}) or a prefix of one "
                "(indices must be distinct and within the completions)",
            )
        golds = self.golds
        if golds is not None:
            if not isinstance(golds, list | tuple):
                raise _fail(where, "golds", f"expected a list of numbers or null, got {type(golds).__name__}")
            if len(golds) != k:
                raise _fail(where, "golds", f"has {len(golds)} values for {k} completions")
            golds = [_check_number(g, where, f"golds[{i}]", optional=False) for i, g in enumerate(golds)]
        object.__setattr__(self, "prompt", prompt)
        object.__setattr__(self, "completions", comps)
        object.__setattr__(self, "ranking", rk)
        object.__setattr__(self, "golds", golds)
        object.__setattr__(self, "rater", _check_str(self.rater, where, "rater"))
        object.__setattr__(self, "meta", _check_meta(self.meta, where))

    @property
    def k(self) -> int:
        return len(self.completions)

    def pairs(self) -> list[tuple[int, int]]:
        """The implied ``(better, worse)`` index pairs, in ranking order.

        For a full ranking ``r`` these are ``(r[i], r[j])`` for ``i < j`` (K(K-1)/2 pairs); for a
        prefix, each listed item then also beats the unlisted ones (in index order).
        """
        listed = set(self.ranking)
        unranked = [i for i in range(self.k) if i not in listed]
        out: list[tuple[int, int]] = []
        for pos, better in enumerate(self.ranking):
            for worse in self.ranking[pos + 1 :] + unranked:
                out.append((better, worse))
        return out

    def to_dict(self) -> dict[str, Any]:
        return _to_row(self, _RANKING_REQUIRED, _RANKING_OPTIONAL)

    @classmethod
    def from_dict(cls, row: Mapping[str, Any], where: str = "ranking") -> Ranking:
        return _from_row(cls, row, _RANKING_REQUIRED, _RANKING_OPTIONAL, where)


# ------------------------------------------------------------------------------------ files
def _read_rows(path: Path | str) -> list[tuple[int, dict[str, Any]]]:
    """JSONL rows with their 1-based line numbers (blank lines are skipped but counted)."""
    rows = read_jsonl_numbered(path)
    if not rows:
        raise RewardlabError(f"{path}: no records")
    return rows


def _write_rows(path: Path | str, items: Iterable[Any], kind: type) -> Path:
    rows = []
    for n, item in enumerate(items):
        if not isinstance(item, kind):
            raise RewardlabError(f"{path}: item {n} is a {type(item).__name__}, expected a {kind.__name__}")
        row = item.to_dict()
        try:
            json.dumps(row, ensure_ascii=False)
        except (TypeError, ValueError) as e:
            raise RewardlabError(
                f"{path}: item {n} cannot be written as JSON ({e}); check its 'meta'"
            ) from None
        rows.append(row)
    return write_jsonl(path, rows)


def load_comparisons(path: Path | str) -> list[Comparison]:
    """Read a TRL-style preference JSONL file (plain or conversational); strict validation."""
    return [Comparison.from_dict(row, where=f"{path}:{i}") for i, row in _read_rows(path)]


def load_prompt_completions(path: Path | str) -> list[dict[str, Text]]:
    """Read TRL prompt-completion JSONL (``prompt``/``completion``, plain or conversational) for SFT.

    Strict like the preference files: each text is a string or a list of ``role``/``content`` messages,
    a record is all plain or all conversational, and an unknown field is an error (``meta`` holds extras).
    """
    out = []
    for i, row in _read_rows(path):
        where = f"{path}:{i}"
        _check_keys(row, ("prompt", "completion"), ("meta",), where)
        texts = [(k, _check_text(row[k], where, k)) for k in ("prompt", "completion")]
        _check_same_format(texts, where)
        out.append(dict(texts))
    return out


def save_comparisons(path: Path | str, items: Iterable[Comparison]) -> Path:
    """Write comparisons as JSONL, atomically."""
    return _write_rows(path, items, Comparison)


def load_rankings(path: Path | str) -> list[Ranking]:
    """Read a ranking JSONL file; strict validation."""
    return [Ranking.from_dict(row, where=f"{path}:{i}") for i, row in _read_rows(path)]


def save_rankings(path: Path | str, items: Iterable[Ranking]) -> Path:
    """Write rankings as JSONL, atomically."""
    return _write_rows(path, items, Ranking)


# ------------------------------------------------------------------------------ conversion
def comparisons_to_rankings(comparisons: Iterable[Comparison]) -> list[Ranking]:
    """Each comparison becomes a K=2 ranking ``[chosen, rejected]`` with ranking ``[0, 1]``.

    Golds are carried over when both are known; a ``margin`` is kept as ``meta["margin"]`` (and
    restored by :func:`rankings_to_comparisons`); ``meta`` (a tie included) is copied. Pairs are not
    merged across prompts: pairwise labels need not be consistent with any single ranking.
    """
    out = []
    for c in comparisons:
        golds = None
        if c.gold_chosen is not None and c.gold_rejected is not None:
            golds = [c.gold_chosen, c.gold_rejected]
        meta = copy.deepcopy(c.meta)
        if c.margin is not None:
            meta["margin"] = c.margin
        out.append(
            Ranking(
                prompt=copy.deepcopy(c.prompt),
                completions=[copy.deepcopy(c.chosen), copy.deepcopy(c.rejected)],
                ranking=[0, 1],
                rater=c.rater,
                golds=golds,
                meta=meta,
            )
        )
    return out


def rankings_to_comparisons(rankings: Iterable[Ranking], *, with_index: bool = False) -> list[Comparison]:
    """Expand each ranking into its implied pairs (K(K-1)/2 for a full ranking), in ranking order.

    Golds are carried over; ``meta`` is copied to every pair. With ``with_index=True`` each pair's
    meta also gets ``ranking_index`` (which ranking it came from, for grouping all pairs of one
    prompt in a batch as InstructGPT does) and ``pair`` (``[chosen_index, rejected_index]``).
    """
    out = []
    for n, r in enumerate(rankings):
        base_meta = copy.deepcopy(r.meta)
        margin = None
        m = base_meta.get("margin")
        if r.k == 2 and isinstance(m, int | float) and not isinstance(m, bool):
            margin = float(base_meta.pop("margin"))
        for i, j in r.pairs():
            meta = copy.deepcopy(base_meta)
            if with_index:
                meta["ranking_index"] = n
                meta["pair"] = [i, j]
            out.append(
                Comparison(
                    prompt=copy.deepcopy(r.prompt),
                    chosen=copy.deepcopy(r.completions[i]),
                    rejected=copy.deepcopy(r.completions[j]),
                    rater=r.rater,
                    margin=margin,
                    gold_chosen=r.golds[i] if r.golds is not None else None,
                    gold_rejected=r.golds[j] if r.golds is not None else None,
                    meta=meta,
                )
            )
    return out
