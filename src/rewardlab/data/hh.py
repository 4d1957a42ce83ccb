"""Anthropic's HH-RLHF transcripts as conversational preference records, and their fixed split.

HH-RLHF (Bai et al. 2022; MIT, Copyright (c) 2022 Anthropic) stores each comparison as two whole
dialogues, ``{"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": "..."}``, that share every
turn except the last assistant reply. :func:`hh_record` splits both transcripts into turns
(``\\n\\nHuman:`` -> ``user``, ``\\n\\nAssistant:`` -> ``assistant``) and returns TRL's conversational
explicit-prompt record: ``prompt`` is the shared dialogue (a list of messages ending with the user's
turn), ``chosen`` and ``rejected`` are the two final assistant replies (one message each). The chat
template is applied later, by the tokenizer that reads the record.

A transcript that does not start with a ``Human:`` turn, does not end with an ``Assistant:`` reply, or
whose chosen and rejected sides differ before that reply (19 of the 8,552 test records) is malformed:
:class:`MalformedRecord` names the field and the problem.

The fixed split (:func:`hh_split`): every record is assigned to ``train`` (80%), ``validation`` (10%)
or ``test`` (10%) from a SHA-256 hash of its *opening human turn* (salted with :data:`SPLIT_SALT`), so
the assignment is a function of the record alone (never of file order, of which other records are read,
or of any random state), and all pairs of one conversation (HH repeats conversations at several depths)
land in the same split. Each subset is split the same way, so each is represented in each split in
the same proportions (up to the hash's sampling noise; counts in docs/data-formats.md).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Literal

from rewardlab.data.records import MalformedRecord

__all__ = [
    "HH_SUBSETS",
    "SPLITS",
    "SPLIT_SALT",
    "hh_record",
    "hh_split",
    "is_hh_transcript",
    "split_turns",
]

#: The four HH-RLHF subsets (folders of the upstream repository).
HH_SUBSETS = ("harmless-base", "helpful-base", "helpful-online", "helpful-rejection-sampled")
SplitName = Literal["train", "validation", "test"]
SPLITS: tuple[SplitName, ...] = ("train", "validation", "test")
#: Salt of the split hash; changing it would change the split, so it is versioned.
SPLIT_SALT = "rewardlab-hh-split-v1"
#: Cumulative fractions of the split: train below 0.8, validation below 0.9, test above.
SPLIT_FRACTIONS = (0.8, 0.9)

HUMAN, ASSISTANT = "Human", "Assistant"
_ROLE = {HUMAN: "user", ASSISTANT: "assistant"}
_MARKER = re.compile(r"\n\n(Human|Assistant):[ \t]?")


def is_hh_transcript(value: Any) -> bool:
    """Whether ``value`` looks like an HH-RLHF transcript (a string opening with a ``Human:`` turn)."""
    return isinstance(value, str) and value.lstrip(" \t\r\n").startswith(f"{HUMAN}:")


def split_turns(transcript: Any, field: str = "transcript") -> list[tuple[str, str]]:
    """``[(role, text), ...]`` of an HH-RLHF transcript, ``role`` ``Human`` or ``Assistant``, text stripped.

    The transcript must start (after optional leading whitespace) with a ``Human:`` turn. A reply may
    hold blank lines and words such as ``Humans:``; only ``\\n\\nHuman:`` and ``\\n\\nAssistant:`` start
    a turn.
    """
    if not isinstance(transcript, str):
        raise MalformedRecord(
            field, f"expected an HH-RLHF transcript (a string), got {type(transcript).__name__}"
        )
    text = transcript if transcript.startswith("\n\n") else "\n\n" + transcript.lstrip()
    parts = _MARKER.split(text)  # [before, role1, text1, role2, text2, ...]
    if parts[0].strip():
        raise MalformedRecord(field, f"text before the first 'Human:' turn: {parts[0].strip()[:60]!r}")
    turns = [(parts[i], parts[i + 1].strip()) for i in range(1, len(parts) - 1, 2)]
    if not turns:
        raise MalformedRecord(field, "no 'Human:' / 'Assistant:' turns")
    if turns[0][0] != HUMAN:
        raise MalformedRecord(field, "the first turn is not 'Human:'")
    return turns


def hh_record(chosen: Any, rejected: Any) -> dict[str, list[dict[str, str]]]:
    """TRL's conversational preference record from an HH-RLHF ``chosen``/``rejected`` pair of transcripts.

    ``{"prompt": [user, assistant, ..., user], "chosen": [assistant], "rejected": [assistant]}``; raises
    :class:`MalformedRecord` naming the field when a side does not end with an assistant reply or the
    sides differ before it.
    """
    sides = {"chosen": split_turns(chosen, "chosen"), "rejected": split_turns(rejected, "rejected")}
    for name, turns in sides.items():
        if len(turns) < 2 or turns[-1][0] != ASSISTANT:
            raise MalformedRecord(name, f"{name} does not end with an 'Assistant:' reply")
    context, other = sides["chosen"][:-1], sides["rejected"][:-1]
    if context != other:
        n = next((i for i, (a, b) in enumerate(zip(context, other)) if a != b), min(len(context), len(other)))
        raise MalformedRecord(
            "rejected",
            f"chosen and rejected differ before their final reply (turn {n + 1}); "
            "an HH pair shares every turn but the last 'Assistant:' reply",
        )
    return {
        "prompt": [{"role": _ROLE[r], "content": t} for r, t in context],
        "chosen": [{"role": "assistant", "content": sides["chosen"][-1][1]}],
        "rejected": [{"role": "assistant", "content": sides["rejected"][-1][1]}],
    }


def opening_turn(prompt: Any) -> str:
    """The text a record's split is keyed on: its first user turn (or its whole prompt, when plain text
    without HH markers), whitespace-normalized."""
    if isinstance(prompt, list):
        first = next(
            (m.get("content", "") for m in prompt if isinstance(m, dict) and m.get("role") == "user"), None
        )
        text = first if isinstance(first, str) else str(prompt[:1])
    elif isinstance(prompt, str) and is_hh_transcript(prompt):
        text = split_turns(prompt, "prompt")[0][1]
    else:
        text = str(prompt)
    return " ".join(text.split())


def hh_split(prompt: Any) -> SplitName:
    """The fixed split (``train``/``validation``/``test``, 80/10/10) of a record with this ``prompt``.

    A SHA-256 hash of ``SPLIT_SALT`` and the prompt's opening user turn (:func:`opening_turn`), read as a
    number in [0, 1): a function of the record alone, the same for every pair of one conversation.
    """
    digest = hashlib.sha256(f"{SPLIT_SALT}\0{opening_turn(prompt)}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    return "train" if u < SPLIT_FRACTIONS[0] else "validation" if u < SPLIT_FRACTIONS[1] else "test"
