"""Readers for preference data in the ecosystem's formats.

Record styles (TRL's preference formats, plus Anthropic's HH-RLHF transcripts):

* **explicit prompt**: ``{"prompt": ..., "chosen": ..., "rejected": ...}``;
* **implicit prompt**: only ``chosen`` and ``rejected``, which share a prefix; the prompt is extracted
  as TRL's ``extract_prompt`` does (:func:`extract_prompt`: the shared leading messages, or the shared
  leading text cut at a word boundary);
* **conversational**: any of the above with lists of ``{"role", "content"}`` messages instead of strings;
* **HH-RLHF**: ``chosen``/``rejected`` transcripts with ``\\n\\nHuman:``/``\\n\\nAssistant:`` turns
  (:mod:`rewardlab.data.hh`), detected when a record has no prompt and both sides open with a
  ``Human:`` turn, or forced with ``format="hh"``; they become conversational records.

Containers, chosen by the file name (or ``format``): JSON Lines (``.jsonl``, ``.jsonl.gz``; read with the
UTF-8 and record-size checks of :mod:`rewardlab.utils`), JSON (``.json``, ``.json.gz``: a list of
records), CSV (``.csv``, ``.csv.gz``: a header row; a cell holding a JSON list of messages is read as
messages, ``margin``/``gold_*`` as numbers, ``meta`` as a JSON object) and Parquet (``.parquet``; needs
``pyarrow``, or ``pandas`` with a Parquet engine). A folder is read file by file (sorted; files with
other suffixes, e.g. README and LICENSE, are ignored). In Python, :func:`read_preferences` also takes a
``datasets.Dataset`` or a list of dicts.

Every malformed record raises :class:`~rewardlab.utils.RewardlabError` naming the file, the line (JSONL,
CSV), record (JSON) or row (Parquet, Dataset), and the field::

    prefs.jsonl:3: field 'chosen': expected a string or a list of chat messages, got int

With ``skip_bad_records=True`` such records are counted and skipped instead, and :class:`ReadStats`
keeps the first :data:`MAX_REASONS` messages. A problem with the whole file (missing, not gzip, not a
JSON list, no records at all) always stops.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rewardlab.data.files import CSV_MESSAGES, FileFormat, Raw, iter_raw, rows_of
from rewardlab.data.hh import HH_SUBSETS, hh_record, hh_split, is_hh_transcript
from rewardlab.data.records import MalformedRecord, extract_prompt
from rewardlab.feedback.records import Comparison
from rewardlab.utils import RewardlabError

__all__ = [
    "MAX_REASONS",
    "FileFormat",
    "PreferenceData",
    "ReadStats",
    "read_preferences",
]

SplitChoice = Literal["all", "train", "validation", "test"]
#: How many skipped records' messages :class:`ReadStats` keeps.
MAX_REASONS = 5
_KNOWN = ("prompt", "chosen", "rejected", "rater", "margin", "gold_chosen", "gold_rejected", "meta")
_NUMBERS = ("margin", "gold_chosen", "gold_rejected")


@dataclass
class ReadStats:
    """What a read saw: records ``read``, ``kept``, ``bad`` (skipped as malformed, with the first
    :data:`MAX_REASONS` messages) and ``dropped`` by reason (``identical`` or ``empty_reply`` HH pairs,
    ``other_split`` when one split is read)."""

    source: str
    read: int = 0
    kept: int = 0
    bad: int = 0
    bad_reasons: list[str] = field(default_factory=list)
    dropped: Counter[str] = field(default_factory=Counter)
    by_subset: Counter[str] = field(default_factory=Counter)

    def add_bad(self, message: str) -> None:
        self.bad += 1
        if len(self.bad_reasons) < MAX_REASONS:
            self.bad_reasons.append(message)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (for ``summary.json``)."""
        return {
            "source": self.source,
            "read": self.read,
            "kept": self.kept,
            "bad_records": self.bad,
            "bad_reasons": list(self.bad_reasons),
            "dropped": dict(self.dropped),
            "by_subset": dict(self.by_subset),
        }


@dataclass
class PreferenceData:
    """Comparisons read from a source, with the :class:`ReadStats` of the read."""

    comparisons: list[Comparison]
    stats: ReadStats


def _subset_of(path: Path) -> str:
    """The HH subset a file belongs to (its folder's name when that is a subset), else the file's name."""
    return path.parent.name if path.parent.name in HH_SUBSETS else path.name


# ----------------------------------------------------------------------------------------- records
def _typed_csv(row: dict[str, Any]) -> dict[str, Any]:
    """CSV cells as values: JSON lists of messages, numbers for ``margin``/``gold_*``, a JSON ``meta``."""
    out: dict[str, Any] = {}
    for k, v in row.items():
        if k in _NUMBERS:
            if v.strip() == "":
                continue
            try:
                out[k] = float(v)
            except ValueError:
                raise MalformedRecord(k, f"expected a number, got {v[:40]!r}") from None
        elif k in ("rater",) and v == "":
            continue
        elif k == "meta" or (k in ("prompt", "chosen", "rejected") and CSV_MESSAGES.match(v)):
            if k == "meta" and not v.strip():
                continue
            try:
                out[k] = json.loads(v)
            except json.JSONDecodeError as e:
                what = "a JSON object" if k == "meta" else "a JSON list of chat messages"
                raise MalformedRecord(k, f"looks like {what} but is not valid JSON ({e.msg})") from None
        else:
            out[k] = v
    return out


def _comparison_row(
    raw: Any, *, columns: Mapping[str, str], fmt: FileFormat, typed: bool, rater: str | None
) -> tuple[dict[str, Any], bool]:
    """A row ready for :meth:`Comparison.from_dict` and whether it came from an HH transcript pair."""
    if not isinstance(raw, Mapping):
        raise MalformedRecord(None, f"expected a JSON object, got {type(raw).__name__}")
    row = {columns.get(k, k): v for k, v in raw.items()}
    if typed:
        row = _typed_csv(row)
    is_hh = fmt == "hh" or (
        "prompt" not in row and is_hh_transcript(row.get("chosen")) and is_hh_transcript(row.get("rejected"))
    )
    if "prompt" not in row or is_hh:
        for name in ("chosen", "rejected"):
            if name not in row:
                raise MalformedRecord(None, f"missing required field '{name}'")
        if is_hh:
            if "prompt" in row:
                raise MalformedRecord(
                    "prompt", "an HH-RLHF record has only 'chosen' and 'rejected' transcripts"
                )
            row.update(hh_record(row["chosen"], row["rejected"]))
        else:
            row["prompt"], row["chosen"], row["rejected"] = extract_prompt(row["chosen"], row["rejected"])
    meta = row.pop("meta", None)
    meta = dict(meta) if isinstance(meta, Mapping) else meta
    extra = {k: row.pop(k) for k in [k for k in row if k not in _KNOWN]}
    if extra:
        if meta is None:
            meta = {}
        if not isinstance(meta, dict):
            raise MalformedRecord("meta", f"expected an object, got {type(meta).__name__}")
        meta.update(extra)
    if meta is not None:
        row["meta"] = meta
    if rater is not None and row.get("rater") is None:
        row["rater"] = rater
    return row, is_hh


def _reply_text(x: Any) -> str:
    return x if isinstance(x, str) else " ".join(m.get("content", "") for m in x if isinstance(m, Mapping))


def read_preferences(
    source: Path | str | Any,
    *,
    columns: Mapping[str, str] | None = None,
    format: FileFormat = "auto",
    split: SplitChoice = "all",
    skip_bad_records: bool = False,
    limit: int | None = None,
    rater: str | None = None,
    finish: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> PreferenceData:
    """Comparisons from a preference file, a folder of them, a ``datasets.Dataset`` or a list of dicts.

    ``columns`` renames the source's columns to ``prompt``/``chosen``/``rejected`` (and the optional
    keys); other columns go into ``meta``. ``format``: ``auto`` (by the file name; HH transcripts are
    detected per record), ``jsonl``, ``json``, ``csv``, ``parquet`` or ``hh`` (HH-RLHF JSONL: every
    record must be a transcript pair). ``split``: ``all``, or one split of the fixed 80/10/10 split of
    :func:`rewardlab.data.hh.hh_split` (keyed on each record's opening user turn). HH pairs whose
    final replies are identical or empty are dropped and counted. ``limit``: stop after that many
    comparisons. ``rater`` fills a missing ``rater``; ``finish`` may add fields (e.g. gold scores) to a
    row before validation. Malformed records raise, or with ``skip_bad_records`` are counted in
    :attr:`PreferenceData.stats`. No valid record at all is always an error.
    """
    columns = dict(columns or {})
    if isinstance(source, str | Path):
        path = Path(source)
        streams: list[tuple[Iterator[Raw], str, bool]] = [
            (rows, _subset_of(f), typed) for f, rows, typed in iter_raw(path, format)
        ]
        name = str(path)
    else:
        name = getattr(getattr(source, "info", None), "dataset_name", None) or type(source).__name__
        streams = [(rows_of(source, name), name, False)]
    stats = ReadStats(name)
    out: list[Comparison] = []
    for raws, subset, typed in streams:
        for raw in raws:
            stats.read += 1
            try:
                if raw.error is not None:
                    raise RewardlabError(f"{raw.where}: {raw.error}")
                try:
                    row, is_hh = _comparison_row(
                        raw.row, columns=columns, fmt=format, typed=typed, rater=rater
                    )
                except MalformedRecord as e:
                    raise RewardlabError(f"{raw.where}: {e}") from None
                side = hh_split(row["prompt"]) if split != "all" else None
                if is_hh:
                    if not _reply_text(row["chosen"]).strip() or not _reply_text(row["rejected"]).strip():
                        stats.dropped["empty_reply"] += 1
                        continue
                    if row["chosen"] == row["rejected"]:
                        stats.dropped["identical"] += 1
                        continue
                    meta = row.setdefault("meta", {})
                    if isinstance(meta, dict):
                        meta.update({"subset": subset, "line": raw.line, "split": hh_split(row["prompt"])})
                if side is not None and side != split:
                    stats.dropped["other_split"] += 1
                    continue
                if finish is not None:
                    row = finish(row)
                comparison = Comparison.from_dict(row, where=raw.where)
            except RewardlabError as e:
                if not skip_bad_records:
                    raise RewardlabError(f"{e} (--skip-bad-records skips such records)") from None
                stats.add_bad(str(e))
                continue
            out.append(comparison)
            stats.kept += 1
            stats.by_subset[subset] += 1
            if limit and len(out) >= limit:
                return PreferenceData(out, stats)
    if not out:
        why = (
            f" ({stats.bad} malformed record(s) skipped; first: {stats.bad_reasons[0]})" if stats.bad else ""
        )
        dropped = (
            f" ({', '.join(f'{n} {k}' for k, n in stats.dropped.items())} dropped)" if stats.dropped else ""
        )
        raise RewardlabError(f"{name}: no records{why}{dropped}")
    return PreferenceData(out, stats)
