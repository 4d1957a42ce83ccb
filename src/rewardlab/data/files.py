"""Reading records from data files, whatever the container: JSON Lines, JSON, CSV or Parquet, each
optionally gzip'd (Parquet excepted), a folder of them, or a ``datasets.Dataset``.

Each container yields :class:`Raw` rows that say where they come from (file and line, record or row),
holding either the record or the problem that made it unreadable (bad JSON, a bad CSV row), so that a
caller can stop on it or count and skip it. A problem with the whole file (missing, not gzip, not a JSON
list, not Parquet) raises :class:`~rewardlab.utils.RewardlabError`. The preference readers
(:mod:`rewardlab.feedback.readers`) and the prompt-file task (:mod:`rewardlab.tasks.dataset`) read
through here.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

from rewardlab.utils import RewardlabError, decode_utf8, iter_jsonl

__all__ = [
    "CONTAINERS",
    "CSV_MESSAGES",
    "FileFormat",
    "Raw",
    "container_of",
    "data_files",
    "iter_raw",
    "rows_of",
]

FileFormat = Literal["auto", "jsonl", "json", "csv", "parquet", "hh"]
_SUFFIXES = {
    ".jsonl": "jsonl", ".jsonl.gz": "jsonl", ".json": "json", ".json.gz": "json",
    ".csv": "csv", ".csv.gz": "csv", ".parquet": "parquet", ".pq": "parquet",
}  # fmt: skip
#: A CSV cell that holds a JSON list of chat messages (read as messages, not text).
CSV_MESSAGES = re.compile(r"^\s*\[\s*(\{|\])")
PARQUET_HELP = "install pyarrow (pip install pyarrow, the rewardlab[parquet] extra)"


@dataclass
class Raw:
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


def _jsonl(path: Path) -> Iterator[Raw]:
    """JSONL records, plain or gzip'd, one at a time so that a bad line can be skipped: the checks of
    :func:`rewardlab.utils.iter_jsonl` (UTF-8 with the byte offset, the record-size limit, one JSON value per line)."""
    i = 0
    with _open_binary(path) as f:
        try:
            for i, row, problem in iter_jsonl(f, path):
                yield (
                    Raw(f"{path}:{i}", i, row) if problem is None else Raw(f"{path}:{i}", i, error=problem)
                )
        except (OSError, EOFError, zlib.error) as e:
            raise RewardlabError(f"{path}:{i + 1}: not a readable gzip file ({e})") from None


def _json(path: Path) -> Iterator[Raw]:
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
        yield Raw(f"{path}:record {n}", n, row)


def _csv(path: Path) -> Iterator[Raw]:
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
            yield Raw(f"{path}:{start}", start, error=f"malformed CSV row ({e})")
            continue
        end = reader.line_num
        if not values:
            continue
        if len(values) != len(names):
            yield Raw(f"{path}:{start}", start,
                       error=f"the row has {len(values)} values for {len(names)} columns ({', '.join(names)})")  # fmt: skip
            continue
        yield Raw(f"{path}:{start}", start, dict(zip(names, values, strict=True)))


def _parquet(path: Path) -> Iterator[Raw]:
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
        yield Raw(f"{path}:row {n}", n, row)


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


CONTAINERS: dict[str, Callable[[Path], Iterator[Raw]]] = {
    "jsonl": _jsonl, "json": _json, "csv": _csv, "parquet": _parquet,
}  # fmt: skip


def rows_of(obj: Any, name: str) -> Iterator[Raw]:
    """Rows of a ``datasets.Dataset`` or of a sequence of dicts."""
    if type(obj).__name__ in ("DatasetDict", "IterableDatasetDict"):
        raise RewardlabError(f"{name}: a DatasetDict holds several splits; pass one, e.g. dataset['train']")
    for n, row in enumerate(obj, 1):
        yield Raw(f"{name}:row {n}", n, row)


def data_files(path: Path) -> list[Path]:
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


def iter_raw(path: Path, fmt: FileFormat = "auto") -> Iterator[tuple[Path, Iterator[Raw], bool]]:
    """``(file, rows, typed)`` for each data file under ``path`` (a file or a folder), ``typed`` True for
    CSV, whose cells are all strings."""
    for f in data_files(path):
        kind = container_of(f, fmt)
        yield f, CONTAINERS[kind](f), kind == "csv"
