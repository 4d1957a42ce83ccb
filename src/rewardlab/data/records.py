"""Record-level pieces shared by every reader of preference data: the error a malformed record raises,
and the implicit prompt of a record whose ``chosen`` and ``rejected`` share a prefix (TRL's ``extract_prompt``)."""

from __future__ import annotations

from typing import Any

__all__ = ["MalformedRecord", "extract_prompt"]


class MalformedRecord(ValueError):
    """A record that cannot be read; ``field`` names the field at fault (or ``None``)."""

    def __init__(self, field: str | None, problem: str) -> None:
        super().__init__(f"field '{field}': {problem}" if field else problem)
        self.field, self.problem = field, problem


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
