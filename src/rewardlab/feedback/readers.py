"""Readers for preference data in the ecosystem's formats.

Record styles (TRL's preference formats, plus Anthropic's HH-RLHF transcripts):

* **explicit prompt**: ``{"prompt": ..., "chosen": ..., "rejected": ...}``;
* **implicit prompt**: only ``chosen`` and ``rejected``, which share a prefix; the prompt is extracted
  as TRL's ``extract_prompt`` does (:func:`extract_prompt`: the shared leading messages, or the shared
  leading text cut at a word boundary);
* **conversational**: any of the above with lists of ``{"role", "content"}`` messages instead of strings;
* **HH-RLHF**: ``chosen``/``rejected`` transcripts with ``\\n\\nHuman:``/``\\n\\nAssistant:`` turns
  (:mod:`rewardlab.feedback.hh`), detected when a record has no prompt and both sides open with a
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

import csv
import gzip
import io
import json
import math
import re
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

from rewardlab.feedback.hh import HH_SUBSETS, MalformedRecord, hh_record, hh_split, is_hh_transcript
from rewardlab.feedback.records import Comparison
from rewardlab.utils import RewardlabError, decode_utf8, iter_jsonl

__all__ = [
    "MAX_REASONS",
    "FileFormat",
    "PreferenceData",
    "ReadStats",
    "container_of",
    "extract_prompt",
    "read_preferences",
]

FileFormat = Literal["auto", "jsonl", "json", "csv", "parquet", "hh"]
SplitChoice = Literal["all", "train", "validation", "test"]
#: How many skipped records' messages :class:`ReadStats` keeps.
MAX_REASONS = 5
_SUFFIXES = {
    ".jsonl": "jsonl", ".jsonl.gz": "jsonl", ".json": "json", ".json.gz": "json",
    ".csv": "csv", ".csv.gz": "csv", ".parquet": "parquet", ".pq": "parquet",
}  # fmt: skip
_KNOWN = ("prompt", "chosen", "rejected", "rater", "margin", "gold_chosen", "gold_rejected", "meta")
_NUMBERS = ("margin", "gold_chosen", "gold_rejected")
_MESSAGES_CELL = re.compile(r"^\s*\[\s*(\{|\])")
PARQUET_HELP = "install pyarrow (pip install pyarrow, the rewardlab[parquet] extra)"


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


@dataclass
class _Raw:
    where: str
    line: int
    row: Any = None
    error: str | None = None  # a record-level problem (bad JSON, bad CSV row, ...)


# ------------------------------------------------------------------------------------ containers
def container_of(path: Path, fmt: FileFormat = "auto") -> str:
    """``jsonl``, ``json``, ``csv`` or ``parquet`` for ``path`` (``fmt`` wins; ``hh`` files are JSONL)."""
    if fmt == "hh":
        return "jsonl"
    if fmt != "auto":
        return fmt
    name = path.name.lower()
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return _SUFFIXES[suffix]
    raise RewardlabError(
        f"{path}: cannot tell the format from the name; use .jsonl, .json, .csv or .parquet "
        "(optionally .gz, except Parquet) or set label.file.format"
    )


def _open_binary(path: Path) -> BinaryIO:
    try:
        return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else path.open("rb")  # type: ignore[return-value]
    except OSError as e:
        raise RewardlabError(f"{path}: cannot read ({e.strerror or e})") from None


def _read_all(path: Path) -> bytes:
    with _open_binary(path) as f:
        try:
            return f.read()
        except (OSError, EOFError, zlib.error) as e:
            raise RewardlabError(f"{path}: not a readable gzip file ({e})") from None


def _jsonl(path: Path) -> Iterator[_Raw]:
    """JSONL records, plain or gzip'd, one at a time so that a bad line can be skipped: the checks of
    :func:`rewardlab.utils.iter_jsonl` (UTF-8 with the byte offset, the record-size limit, one JSON value per line)."""
    i = 0
    with _open_binary(path) as f:
        try:
            for i, row, problem in iter_jsonl(f, path):
                yield (
                    _Raw(f"{path}:{i}", i, row) if problem is None else _Raw(f"{path}:{i}", i, error=problem)
                )
        except (OSError, EOFError, zlib.error) as e:
            raise RewardlabError(f"{path}:{i + 1}: not a readable gzip file ({e})") from None


def _json(path: Path) -> Iterator[_Raw]:
    """A JSON file holding a list of records (plain or gzip'd)."""
    text = decode_utf8(_read_all(path), path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise RewardlabError(f"{path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise RewardlabError(f"{path}: JSON nested too deeply") from None
    if not isinstance(data, list):
        raise RewardlabError(
            f"{path}: expected a JSON list of records, got {type(data).__name__} (JSON Lines files end in .jsonl)"
        )
    for n, row in enumerate(data, 1):
        yield _Raw(f"{path}:record {n}", n, row)


def _csv(path: Path) -> Iterator[_Raw]:
    """A CSV file with a header row (plain or gzip'd); the line of each row is where it starts."""
    text = decode_utf8(_read_all(path), path)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as e:
        raise RewardlabError(f"{path}:1: malformed CSV header ({e})") from None
    names = [h.strip() for h in header]
    if any(not n for n in names) or len(set(names)) != len(names):
        raise RewardlabError(f"{path}:1: the header must name every column once, got {header}")
    end = reader.line_num
    while True:
        start = end + 1
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            end = reader.line_num
            yield _Raw(f"{path}:{start}", start, error=f"malformed CSV row ({e})")
            continue
        end = reader.line_num
        if not values:
            continue
        if len(values) != len(names):
            yield _Raw(f"{path}:{start}", start,
                       error=f"the row has {len(values)} values for {len(names)} columns ({', '.join(names)})")  # fmt: skip
            continue
        yield _Raw(f"{path}:{start}", start, dict(zip(names, values, strict=True)))


def _parquet(path: Path) -> Iterator[_Raw]:
    """A Parquet file, through pyarrow (or pandas with a Parquet engine)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        pq = None
    try:
        if pq is not None:
            rows = pq.read_table(path).to_pylist()
        else:
            try:
                import pandas as pd
            except ImportError:
                raise RewardlabError(f"{path}: reading Parquet needs pyarrow; {PARQUET_HELP}") from None
            try:
                frame = pd.read_parquet(path)
            except ImportError:
                raise RewardlabError(f"{path}: reading Parquet needs pyarrow; {PARQUET_HELP}") from None
            rows = [{k: _plain(v) for k, v in r.items()} for r in frame.to_dict("records")]
    except RewardlabError:
        raise
    except Exception as e:  # pyarrow's and pandas' own error types
        raise RewardlabError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e})") from None
    for n, row in enumerate(rows, 1):
        yield _Raw(f"{path}:row {n}", n, row)


def _plain(value: Any) -> Any:
    """numpy values (from pandas) as plain Python: arrays as lists, NaN as None."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


_CONTAINERS: dict[str, Callable[[Path], Iterator[_Raw]]] = {
    "jsonl": _jsonl, "json": _json, "csv": _csv, "parquet": _parquet,
}  # fmt: skip


def _rows_of(obj: Any, name: str) -> Iterator[_Raw]:
    """Rows of a ``datasets.Dataset`` or of a sequence of dicts."""
    if type(obj).__name__ in ("DatasetDict", "IterableDatasetDict"):
        raise RewardlabError(f"{name}: a DatasetDict holds several splits; pass one, e.g. dataset['train']")
    for n, row in enumerate(obj, 1):
        yield _Raw(f"{name}:row {n}", n, row)


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.is_file() and _known_suffix(p))
        if not found:
            raise RewardlabError(f"{path}: no .jsonl, .json, .csv or .parquet files (or .gz) in this folder")
        return found
    if not path.is_file():
        raise RewardlabError(f"{path}: file not found")
    return [path]


def _known_suffix(p: Path) -> bool:
    return any(p.name.lower().endswith(s) for s in _SUFFIXES)


def _subset_of(path: Path) -> str:
    """The HH subset a file belongs to (its folder's name when that is a subset), else the file's name."""
    return path.parent.name if path.parent.name in HH_SUBSETS else path.name


# ----------------------------------------------------------------------------------------- records
def extract_prompt(chosen: Any, rejected: Any) -> tuple[Any, Any, Any]:
    """``(prompt, chosen, rejected)`` of an implicit-prompt record, as TRL's ``extract_prompt``.

    Conversational: the shared leading messages are the prompt. Plain text: the shared leading text,
    cut back to a word boundary; the space before the completions stays with them (``"The answer is"``,
    ``" 85"``, ``" 95"``). Raises :class:`MalformedRecord` when nothing is shared, when a side has
    nothing left after the prompt, or when the sides are of different kinds.
    """
    for name, value in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(value, str | list):
            raise MalformedRecord(
                name, f"expected a string or a list of chat messages, got {type(value).__name__}"
            )
    if isinstance(chosen, str) != isinstance(rejected, str):
        raise MalformedRecord(
            "rejected", "chosen and rejected must both be text or both be lists of messages"
        )
    k = 0
    for a, b in zip(chosen, rejected):
        if a != b:
            break
        k += 1
    if chosen == rejected:
        raise MalformedRecord("rejected", "chosen and rejected are identical, so no prompt can be extracted")
    if isinstance(chosen, str):
        mid_word = k < min(len(chosen), len(rejected)) and not chosen[k - 1 : k].isspace()
        if mid_word and not (chosen[k].isspace() and rejected[k].isspace()):
            k = max(chosen.rfind(" ", 0, k), chosen.rfind("\n", 0, k), chosen.rfind("\t", 0, k)) + 1
        while k > 0 and chosen[k - 1].isspace():
            k -= 1
        prompt_empty = not chosen[:k].strip()
    else:
        prompt_empty = k == 0
    if prompt_empty:
        raise MalformedRecord(
            "rejected",
            "chosen and rejected share no prefix, so there is no implicit prompt "
            "(give a 'prompt' column, or map one with label.file.columns)",
        )
    for name, value in (("chosen", chosen), ("rejected", rejected)):
        if not value[k:] or (isinstance(value, str) and not value[k:].strip()):
            raise MalformedRecord(
                name, "is the shared prefix itself: nothing is left to compare after the prompt"
            )
    return chosen[:k], chosen[k:], rejected[k:]


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
        elif k == "meta" or (k in ("prompt", "chosen", "rejected") and _MESSAGES_CELL.match(v)):
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
    :func:`rewardlab.feedback.hh.hh_split` (keyed on each record's opening user turn). HH pairs whose
    final replies are identical or empty are dropped and counted. ``limit``: stop after that many
    comparisons. ``rater`` fills a missing ``rater``; ``finish`` may add fields (e.g. gold scores) to a
    row before validation. Malformed records raise, or with ``skip_bad_records`` are counted in
    :attr:`PreferenceData.stats`. No valid record at all is always an error.
    """
    columns = dict(columns or {})
    if isinstance(source, str | Path):
        path = Path(source)
        files = _files(path)
        streams: list[tuple[Iterator[_Raw], str, bool]] = []
        for f in files:
            kind = container_of(f, format)
            streams.append((_CONTAINERS[kind](f), _subset_of(f), kind == "csv"))
        name = str(path)
    else:
        name = getattr(getattr(source, "info", None), "dataset_name", None) or type(source).__name__
        streams = [(_rows_of(source, name), name, False)]
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
