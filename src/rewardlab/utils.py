"""Small shared helpers: seeding, threads, atomic writes, finiteness checks."""

from __future__ import annotations

import json
import os
import random
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch


class RewardlabError(Exception):
    """An error a user can act on: the message names the file, field or step at fault."""


class TrainingDivergedError(RewardlabError):
    """A loss or metric became NaN/inf during training."""


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def set_threads(n: int | None) -> None:
    """Fix the number of torch threads (``None`` or 0 leaves torch's default)."""
    if n:
        torch.set_num_threads(n)


def cpuinfo_field(*keys: str, cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """The value of the first line of ``cpuinfo`` whose key is one of ``keys`` (e.g. ``"model name"``,
    ``"flags"``); ``None`` where the file is absent or has no such line (not Linux)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in keys:
            return value.strip()
    return None


#: Rows per no-grad scoring forward of a reward model's members and verifier (:meth:`RewardModel.score
#: <rewardlab.rewards.model.RewardModel.score>`, :func:`~rewardlab.rewards.verifier.verifier_features`). Padded
#: batches of a few hundred rows run the masked forwards markedly slower than the same rows in batches of 128:
#: scoring 384 PPO audit samples with the demo's ~1M member and verifier took 0.89 s in one batch of 512 and
#: 0.51 s in batches of 128 (one thread; 0.51 vs 0.27 s with two), 4,096 best-of-n samples 6.8 vs 4.7 s.
SCORE_BATCH = 128


def cache_dir() -> Path:
    """Where rewardlab keeps per-machine state (the CPU linear backend's choice, compiled kernels):
    ``REWARDLAB_CACHE_DIR``, default ``~/.cache/rewardlab``."""
    return Path(os.environ.get("REWARDLAB_CACHE_DIR") or Path.home() / ".cache" / "rewardlab")


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices cut into batches of ``batch_size`` after a stable sort by length, so that each padded batch
    wastes little compute on padding. Scoring functions batch with this and scatter results back."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def check_finite(value: float | torch.Tensor, what: str, step: int, stage: str) -> None:
    """Abort with a clear error when ``value`` is NaN or inf."""
    v = float(value.detach().item() if isinstance(value, torch.Tensor) else value)
    if not np.isfinite(v):
        raise TrainingDivergedError(
            f"{stage}: {what} is {v} at step {step}; aborting (no checkpoint written)"
        )


def atomic_dir(target: Path | str, write: Callable[[Path], None]) -> Path:
    """Write a directory atomically: ``write(tmp)`` fills a temp folder that is then renamed to ``target``.

    A crash leaves either the old folder or the new one, never a half-written checkpoint.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        write(tmp)
        replace_dir(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def replace_dir(src: Path, target: Path) -> None:
    """Rename the folder ``src`` to ``target``, replacing it: the old folder is moved aside
    (``.<name>.old-*``), the new one renamed in, the old one removed. A kill between the two renames
    leaves no ``target``; :func:`restore_replaced_dir` puts the old one back."""
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(target, old)
    os.replace(src, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def restore_replaced_dir(target: Path) -> None:
    """Undo a kill inside :func:`replace_dir`: put the newest moved-aside folder back when ``target`` is
    missing, and remove any other moved-aside copies."""
    olds = sorted(target.parent.glob(f".{target.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if not target.exists() and olds:
        os.replace(olds.pop(), target)
    for p in olds:
        shutil.rmtree(p, ignore_errors=True)


def atomic_write_text(path: Path | str, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_jsonl(path: Path | str, rows: Iterable[dict[str, Any]]) -> Path:
    """Write rows as JSONL atomically."""
    return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


#: The largest JSONL record (one line, in bytes) the readers accept; ``REWARDLAB_MAX_RECORD_BYTES`` overrides it.
MAX_RECORD_BYTES = 1 << 20


def max_record_bytes() -> int:
    """The record-size limit in force: ``REWARDLAB_MAX_RECORD_BYTES`` when set, else :data:`MAX_RECORD_BYTES`."""
    raw = os.environ.get("REWARDLAB_MAX_RECORD_BYTES")
    if raw is None:
        return MAX_RECORD_BYTES
    try:
        value = int(raw)
    except ValueError:
        raise RewardlabError(
            f"REWARDLAB_MAX_RECORD_BYTES must be a whole number of bytes, got {raw!r}"
        ) from None
    if value <= 0:
        raise RewardlabError(f"REWARDLAB_MAX_RECORD_BYTES must be positive, got {value}")
    return value


def decode_utf8(data: bytes, path: Path | str, line: int | None = None, offset: int = 0) -> str:
    """``data`` decoded as UTF-8, or an error naming the file, line and byte offset of the first bad byte.

    ``offset`` is the file offset of ``data[0]``; without ``line`` the line is counted from ``data``.
    """
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        at = line if line is not None else data.count(b"\n", 0, e.start) + 1
        raise RewardlabError(
            f"{path}:{at}: not valid UTF-8 (byte 0x{data[e.start]:02x} at byte offset {offset + e.start}); "
            "save the file as UTF-8"
        ) from None


def read_text_file(path: Path | str, what: str = "file") -> str:
    """A whole text file as UTF-8; a missing file, an unreadable one or a bad byte gives one clear error."""
    path = Path(path)
    if not path.is_file():
        raise RewardlabError(f"{path}: {what} not found")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise RewardlabError(f"{path}: cannot read {what} ({e.strerror or e})") from None
    return decode_utf8(data, path)


def iter_jsonl(f: BinaryIO, path: Path | str) -> Iterator[tuple[int, Any, str | None]]:
    """``(line, value, None)`` for each non-blank line of the binary JSONL stream ``f``, or ``(line, None,
    problem)`` for a line longer than :func:`max_record_bytes`, not UTF-8 (with its byte offset) or not JSON.

    An over-long line is never read into memory whole: its problem is yielded first, and the rest of the line
    is skipped in chunks only if the caller asks for the next line. Read errors of ``f`` propagate.
    """
    limit = max_record_bytes()
    offset, i = 0, 0
    while True:
        raw = f.readline(limit + 2)
        if not raw:
            return
        i += 1
        offset += len(raw)
        if len(raw.rstrip(b"\r\n")) > limit:
            yield i, None, f"record is longer than the limit of {limit:,} bytes (REWARDLAB_MAX_RECORD_BYTES)"
            while raw and not raw.endswith(b"\n"):
                raw = f.readline(1 << 20)
                offset += len(raw)
            continue
        try:
            line = decode_utf8(raw, path, i, offset - len(raw))
        except RewardlabError as e:
            yield i, None, str(e).removeprefix(f"{path}:{i}: ")
            continue
        if not line.strip():
            continue
        try:
            value, problem = json.loads(line), None
        except json.JSONDecodeError as e:
            value, problem = None, f"malformed JSON ({e.msg} at column {e.colno})"
        except RecursionError:
            value, problem = None, "JSON nested too deeply"
        yield i, value, problem


def read_jsonl_numbered(path: Path | str) -> list[tuple[int, dict[str, Any]]]:
    """JSONL objects with their 1-based line numbers (blank lines skipped but counted).

    A missing or unreadable file, a malformed line, a non-object line, a byte that is not UTF-8 (with
    its byte offset) or a record longer than :func:`max_record_bytes` raises an error naming the file and
    line (:func:`iter_jsonl`). An over-long line is not read into memory past the limit.
    """
    path = Path(path)
    if not path.is_file():
        raise RewardlabError(f"{path}: file not found")
    try:
        f = path.open("rb")
    except OSError as e:
        raise RewardlabError(f"{path}: cannot read ({e.strerror or e})") from None
    rows: list[tuple[int, dict[str, Any]]] = []
    with f:
        for i, row, problem in iter_jsonl(f, path):
            if problem is not None:
                raise RewardlabError(f"{path}:{i}: {problem}")
            if not isinstance(row, dict):
                raise RewardlabError(f"{path}:{i}: expected a JSON object, got {type(row).__name__}")
            rows.append((i, row))
    return rows


def read_jsonl(path: Path | str) -> list[dict[str, Any]]:
    """Read JSONL objects; errors name the file and line (see :func:`read_jsonl_numbered`)."""
    return [row for _, row in read_jsonl_numbered(path)]
