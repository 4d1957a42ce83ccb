"""Small shared helpers: seeding, threads, atomic writes, finiteness checks."""

from __future__ import annotations

import json
import os
import random
import shutil
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

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
        old = None
        if target.exists():
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


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


def read_jsonl_numbered(path: Path | str) -> list[tuple[int, dict[str, Any]]]:
    """JSONL objects with their 1-based line numbers (blank lines skipped but counted).

    A missing file, a malformed line or a non-object line raises an error naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise RewardlabError(f"{path}: file not found")
    rows: list[tuple[int, dict[str, Any]]] = []
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise RewardlabError(f"{path}:{i}: malformed JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise RewardlabError(f"{path}:{i}: expected a JSON object, got {type(row).__name__}")
            rows.append((i, row))
    return rows


def read_jsonl(path: Path | str) -> list[dict[str, Any]]:
    """Read JSONL objects; errors name the file and line (see :func:`read_jsonl_numbered`)."""
    return [row for _, row in read_jsonl_numbered(path)]
