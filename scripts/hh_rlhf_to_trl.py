#!/usr/bin/env python
"""Convert Anthropic HH-RLHF transcripts to TRL's explicit-prompt preference format (JSONL).

HH-RLHF (Bai et al. 2022; MIT, Copyright (c) 2022 Anthropic) stores each comparison as two whole
dialogues, ``chosen`` and ``rejected``, with turns marked ``\\n\\nHuman: `` and ``\\n\\nAssistant: ``.
The two dialogues share every turn except the last assistant reply. This script splits each
transcript into turns and writes one record per comparison::

    {"prompt": "Human: How do I ...?\\n\\nAssistant:", "chosen": "<final reply>",
     "rejected": "<other final reply>", "meta": {"source": "helpful-base/test", "line": 7}}

* ``prompt`` is the shared dialogue up to and including the last ``Assistant:`` marker (turns joined
  with a blank line, the leading newlines dropped); with ``--format messages`` it is a list of chat
  messages (``user``/``assistant``) and ``chosen``/``rejected`` are one assistant message each, as in
  TRL's conversational preference datasets;
* ``chosen``/``rejected`` are the final assistant replies, stripped;
* ``meta`` says where the pair came from (subset/split and 1-based line), so it can be traced back.

Dropped, and counted on stderr: pairs whose replies are identical (no preference), pairs with an
empty reply, pairs longer than ``--max-chars`` (prompt plus the longer reply) and, with
``--skip-malformed``, malformed transcripts. Without it a malformed transcript (no ``Human:`` turn
first, no final ``Assistant:`` turn, or chosen and rejected disagreeing before the last reply) is an
error naming the file and line.

``label.source: file`` reads the raw HH-RLHF files directly (``label.file.path: ../shared/data/hh-rlhf``,
with the fixed train/validation/test split of ``label.file.split``; :mod:`rewardlab.data.hh`, whose turn
splitting this script uses). The dataset task reads TRL-format JSONL only, so this script's output is what
``task: {kind: dataset}`` and ``label.source: file`` read together (configs/hh-file.yaml)::

    python scripts/hh_rlhf_to_trl.py --subset helpful-base --limit 400 --max-chars 600 \\
        --out /tmp/hh/hh-400.jsonl
    rewardlab run configs/hh-file.yaml --set task.path=/tmp/hh/hh-400.jsonl \\
        --set label.file.path=/tmp/hh/hh-400.jsonl

Inputs are ``<data-dir>/<subset>/<split>.jsonl.gz`` (``--subset`` may repeat; subsets are read one
after another, in file order), or explicit files given as arguments (``.jsonl`` or ``.jsonl.gz``).
The content of the harmless-base subset is offensive by design (red-teaming).
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from rewardlab.data.hh import HH_SUBSETS, hh_record
from rewardlab.data.hh import split_turns as _split_turns
from rewardlab.data.records import MalformedRecord

SUBSETS = HH_SUBSETS
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hh-rlhf"


class MalformedTranscript(ValueError):
    """A transcript that is not a Human/Assistant dialogue ending with an assistant reply."""


def split_turns(transcript: str) -> list[tuple[str, str]]:
    """``[(role, text), ...]`` of an HH-RLHF transcript (:func:`rewardlab.data.hh.split_turns`)."""
    try:
        return _split_turns(transcript)
    except MalformedRecord as e:
        raise MalformedTranscript(e.problem) from None


def convert_pair(chosen: str, rejected: str, fmt: str = "text") -> dict[str, Any]:
    """One TRL explicit-prompt record from an HH-RLHF ``chosen``/``rejected`` pair of transcripts.

    The turns and the shared prompt come from :func:`rewardlab.data.hh.hh_record` (the reader behind
    ``label.file.format: hh``); ``fmt="text"`` joins the prompt's turns into one ``Human:``/``Assistant:``
    transcript ending with ``Assistant:``, ``fmt="messages"`` keeps TRL's conversational record.
    """
    try:
        rec = hh_record(chosen, rejected)
    except MalformedRecord as e:
        raise MalformedTranscript(e.problem) from None
    if fmt == "messages":
        return rec
    role = {"user": "Human", "assistant": "Assistant"}
    prompt = "\n\n".join(f"{role[m['role']]}: {m['content']}" for m in rec["prompt"]) + "\n\nAssistant:"
    return {
        "prompt": prompt,
        "chosen": rec["chosen"][0]["content"],
        "rejected": rec["rejected"][0]["content"],
    }


def _length(record: dict[str, Any]) -> int:
    def n(x: Any) -> int:
        return len(x) if isinstance(x, str) else sum(len(m["content"]) for m in x)

    return n(record["prompt"]) + max(n(record["chosen"]), n(record["rejected"]))


def _reply(x: Any) -> str:
    return x if isinstance(x, str) else x[0]["content"]


def _open(path: Path) -> Iterable[str]:
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")


def convert_lines(
    lines: Iterable[str],
    source: str,
    *,
    fmt: str = "text",
    max_chars: int | None = None,
    skip_malformed: bool = False,
    counts: Counter[str] | None = None,
) -> Iterator[dict[str, Any]]:
    """Records converted from the JSONL ``lines`` of one HH-RLHF file named ``source`` (for errors/meta)."""
    counts = Counter() if counts is None else counts
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        counts["read"] += 1
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or "chosen" not in row or "rejected" not in row:
                raise MalformedTranscript("expected a JSON object with 'chosen' and 'rejected'")
            rec = convert_pair(row["chosen"], row["rejected"], fmt)
        except (MalformedTranscript, json.JSONDecodeError) as e:
            if skip_malformed:
                counts["malformed"] += 1
                continue
            raise MalformedTranscript(f"{source}:{i}: {e}") from None
        if _reply(rec["chosen"]) == _reply(rec["rejected"]):
            counts["identical"] += 1
            continue
        if not _reply(rec["chosen"]) or not _reply(rec["rejected"]):
            counts["empty_reply"] += 1
            continue
        if max_chars is not None and _length(rec) > max_chars:
            counts["too_long"] += 1
            continue
        rec["meta"] = {"source": source, "line": i}
        counts["kept"] += 1
        yield rec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Convert HH-RLHF chosen/rejected transcripts to TRL explicit-prompt JSONL "
        "(prompt = shared dialogue up to the last 'Assistant:', chosen/rejected = the final replies).",
        epilog="Example: python scripts/hh_rlhf_to_trl.py --subset helpful-base --limit 400 --max-chars 600 "
        "--out /tmp/hh/hh-400.jsonl",
    )
    ap.add_argument(
        "inputs",
        nargs="*",
        type=Path,
        help="HH-RLHF .jsonl/.jsonl.gz files (default: --data-dir/--subset/--split)",
    )
    ap.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="folder with <subset>/<split>.jsonl.gz (default: %(default)s)",
    )
    ap.add_argument(
        "--subset",
        action="append",
        choices=SUBSETS,
        help="subset(s) to read, in order (repeatable; default: helpful-base)",
    )
    ap.add_argument(
        "--split", default="test", help="split file name without .jsonl.gz (default: %(default)s)"
    )
    ap.add_argument("--limit", type=int, default=None, help="stop after N converted pairs")
    ap.add_argument(
        "--max-chars",
        type=int,
        default=None,
        help="drop pairs whose prompt plus longer reply exceeds N characters",
    )
    ap.add_argument(
        "--format",
        choices=("text", "messages"),
        default="text",
        help="plain-text prompt (default) or chat messages",
    )
    ap.add_argument(
        "--skip-malformed", action="store_true", help="skip malformed transcripts instead of failing"
    )
    ap.add_argument("--out", type=Path, required=True, help="output JSONL path ('-' for stdout)")
    args = ap.parse_args(argv)
    if args.limit is not None and args.limit <= 0:
        ap.error("--limit must be positive")
    if args.inputs:
        files = [(p, p.name) for p in args.inputs]
    else:
        files = [
            (args.data_dir / s / f"{args.split}.jsonl.gz", f"{s}/{args.split}")
            for s in args.subset or ["helpful-base"]
        ]
    for path, _ in files:
        if not path.is_file():
            ap.error(f"{path}: not found")

    counts: Counter[str] = Counter()
    records: list[dict[str, Any]] = []
    try:
        for path, source in files:
            with _open(path) as f:
                for rec in convert_lines(f, source, fmt=args.format, max_chars=args.max_chars,
                                         skip_malformed=args.skip_malformed, counts=counts):  # fmt: skip
                    records.append(rec)
                    if args.limit and len(records) >= args.limit:
                        break
            if args.limit and len(records) >= args.limit:
                break
    except MalformedTranscript as e:
        print(f"error: {e} (use --skip-malformed to skip such records)", file=sys.stderr)
        return 1
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if str(args.out) == "-":
        sys.stdout.write(text)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    dropped = ", ".join(
        f"{counts[k]} {k.replace('_', ' ')}"
        for k in ("identical", "empty_reply", "too_long", "malformed")
        if counts[k]
    )
    print(
        f"{len(records)} pairs written to {args.out} from {counts['read']} read ({dropped or 'none dropped'})",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
