"""From database labels to the pipeline's comparisons, and the agreement statistics of the admin page.

Every answer ``a`` / ``b`` / ``tie`` becomes one :class:`~rewardlab.feedback.records.Comparison` (a tie keeps
the shown order with ``meta["tie"] = True``); ``cant_tell`` and ``skip`` are not comparisons. ``meta`` keeps
the annotator, the seconds taken, the reason, the item and label ids and the item's own meta, and the
golds of the two sides travel as ``gold_chosen``/``gold_rejected`` so an annotator's error rate against
gold is measured with the same :func:`~rewardlab.feedback.simulated.rater_error_rate` as a simulated
rater's.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from itertools import combinations
from typing import Any

from rewardlab.feedback.human.db import Label
from rewardlab.feedback.records import Comparison
from rewardlab.feedback.simulated import rater_error_rate

EXPORTED = ("a", "b", "tie")


def to_comparison(label: Label) -> Comparison | None:
    """The comparison one answer states, or ``None`` for ``cant_tell`` / ``skip``."""
    if label.choice not in EXPORTED:
        return None
    it = label.item
    flip = label.choice == "b"
    chosen, rejected = (it.b, it.a) if flip else (it.a, it.b)
    gold_c, gold_r = (it.gold_b, it.gold_a) if flip else (it.gold_a, it.gold_b)
    meta: dict[str, Any] = {**it.meta, "annotator": label.annotator, "seconds": label.seconds,
                            "item_id": it.id, "label_id": label.label_id, "queue": it.queue}  # fmt: skip
    if label.reason:
        meta["reason"] = label.reason
    if label.choice == "tie":
        meta["tie"] = True
    return Comparison(prompt=it.prompt, chosen=chosen, rejected=rejected, rater=label.annotator,
                      gold_chosen=gold_c, gold_rejected=gold_r, meta=meta)  # fmt: skip


def to_comparisons(labels: Iterable[Label]) -> list[Comparison]:
    return [c for c in map(to_comparison, labels) if c is not None]


def cohen_kappa(first: Sequence[str], second: Sequence[str]) -> float:
    """Cohen's kappa of two raters' categorical answers on the same items (Cohen 1960).

    ``kappa = (p_o - p_e) / (1 - p_e)`` with ``p_o`` the observed agreement and
    ``p_e = sum_k p1(k) p2(k)`` the agreement expected by chance from each rater's marginals.
    NaN with no items; 1 when both always give the same single answer (``p_e = p_o = 1``).
    """
    if len(first) != len(second):
        raise ValueError("cohen_kappa: the two raters must answer the same items")
    n = len(first)
    if n == 0:
        return math.nan
    p_o = sum(x == y for x, y in zip(first, second, strict=True)) / n
    c1, c2 = Counter(first), Counter(second)
    p_e = sum(c1[k] * c2[k] for k in c1) / (n * n)
    if p_e >= 1.0:
        return 1.0 if p_o >= 1.0 else math.nan
    return (p_o - p_e) / (1.0 - p_e)


def _answers_by_item(labels: Iterable[Label]) -> dict[int, dict[str, str]]:
    out: dict[int, dict[str, str]] = defaultdict(dict)
    for lab in labels:
        if lab.choice != "skip":
            out[lab.item.id][lab.annotator] = lab.choice
    return out


def pairwise_kappa(labels: Sequence[Label]) -> list[dict[str, Any]]:
    """Cohen's kappa and raw agreement for every pair of annotators with items in common."""
    by_item = _answers_by_item(labels)
    names = sorted({lab.annotator for lab in labels})
    rows = []
    for x, y in combinations(names, 2):
        shared = [(v[x], v[y]) for v in by_item.values() if x in v and y in v]
        if not shared:
            continue
        fx, fy = [s[0] for s in shared], [s[1] for s in shared]
        rows.append({"a": x, "b": y, "n": len(shared), "agreement": sum(p == q for p, q in shared) / len(shared),
                     "kappa": cohen_kappa(fx, fy)})  # fmt: skip
    return rows


def pooled_kappa(labels: Sequence[Label]) -> dict[str, Any]:
    """Kappa over every doubly-labeled item (its first two answers as rater 1 and rater 2)."""
    firsts, seconds = [], []
    for answers in _answers_by_item(labels).values():
        if len(answers) >= 2:
            v = list(answers.values())
            firsts.append(v[0])
            seconds.append(v[1])
    return {"n": len(firsts), "kappa": cohen_kappa(firsts, seconds)}


def annotator_stats(labels: Sequence[Label]) -> list[dict[str, Any]]:
    """Per annotator: answers, ties, can't-tells, median seconds, and error rate against gold (where known)."""
    by_name: dict[str, list[Label]] = defaultdict(list)
    for lab in labels:
        if lab.choice != "skip":
            by_name[lab.annotator].append(lab)
    by_item = _answers_by_item(labels)
    rows = []
    for name in sorted(by_name):
        mine = by_name[name]
        secs = sorted(lab.seconds for lab in mine if lab.seconds is not None)
        err = rater_error_rate(to_comparisons(mine), by=None)
        others = [(v[name], o) for v in by_item.values() if name in v for k, o in v.items() if k != name]
        rows.append({
            "annotator": name,
            "answers": len(mine),
            "ties": sum(lab.choice == "tie" for lab in mine),
            "cant_tell": sum(lab.choice == "cant_tell" for lab in mine),
            "median_seconds": secs[len(secs) // 2] if secs else math.nan,
            "gold_n": err["n"],
            "gold_error_rate": err["error_rate"],
            "peer_n": len(others),
            "peer_agreement": sum(p == q for p, q in others) / len(others) if others else math.nan,
        })  # fmt: skip
    return rows
