"""Feedback records: JSONL round trips, strict validation, ranking <-> pair conversion."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rewardlab.feedback.records import (
    Comparison,
    Ranking,
    comparisons_to_rankings,
    load_comparisons,
    load_rankings,
    rankings_to_comparisons,
    save_comparisons,
    save_rankings,
)
from rewardlab.utils import RewardlabError


def _msgs(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"role": r, "content": c} for r, c in pairs]


PLAIN = [
    Comparison("what is 2 + 2 ?", "the answer is 4 .", "the answer is 5 ."),
    Comparison(
        "what is 12 + 30 ? i think it is 40 .",
        "the answer is 42 .",
        "you are right . the answer is definitely 40 .",
        rater="time-pressed",
        margin=1.5,
        gold_chosen=0.96,
        gold_rejected=-1.57,
        meta={"verified": False, "difficulty": 2, "tie": False},
    ),
    Comparison("what is 1 + 1 ?", "the answer is 2 .", "the answer is 2 .", meta={"tie": True}),
]
CONV = [
    Comparison(
        _msgs(("system", "be honest"), ("user", "what is 2 + 2 ?")),
        _msgs(("assistant", "the answer is 4 .")),
        _msgs(("assistant", "the answer is 5 .")),
        gold_chosen=1,
        gold_rejected=0,
    )
]


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


GOOD = {"prompt": "what is 1 + 1 ?", "chosen": "the answer is 2 .", "rejected": "the answer is 3 ."}
GOOD_LINE = json.dumps(GOOD)


# ------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("items", [PLAIN, CONV], ids=["plain", "conversational"])
def test_comparison_round_trip(tmp_path: Path, items: list[Comparison]) -> None:
    path = save_comparisons(tmp_path / "sub" / "prefs.jsonl", items)
    assert load_comparisons(path) == items
    assert not list(path.parent.glob(".*tmp*")), "atomic write left a temp file"


def test_to_dict_omits_none_and_keeps_tie() -> None:
    d = PLAIN[0].to_dict()
    assert d == {"prompt": "what is 2 + 2 ?", "chosen": "the answer is 4 .", "rejected": "the answer is 5 ."}
    tie = PLAIN[2]
    assert tie.tie and tie.to_dict()["meta"] == {"tie": True}
    assert not PLAIN[1].tie
    assert isinstance(CONV[0].gold_chosen, float)


def test_ranking_round_trip(tmp_path: Path) -> None:
    items = [
        Ranking(
            "what is 2 + 2 ?",
            ["the answer is 4 .", "the answer is 5 .", "hmm ."],
            [0, 1, 2],
            golds=[1, 0, -1.74],
        ),
        Ranking(
            _msgs(("user", "what is 2 + 2 ?")),
            [_msgs(("assistant", "a")), _msgs(("assistant", "b"))],
            [1],
            rater="r",
            meta={"x": [1, 2]},
        ),
    ]
    path = save_rankings(tmp_path / "rank.jsonl", items)
    assert load_rankings(path) == items


def test_blank_lines_are_skipped_but_counted(tmp_path: Path) -> None:
    path = _write_lines(
        tmp_path / "p.jsonl", [GOOD_LINE, "", "   ", '{"prompt": "p", "chosen": 3, "rejected": "r"}']
    )
    with pytest.raises(RewardlabError, match=r"p\.jsonl:4: field 'chosen'"):
        load_comparisons(path)
    assert len(load_comparisons(_write_lines(tmp_path / "q.jsonl", ["", GOOD_LINE, ""]))) == 1


# ------------------------------------------------------------------------------ validation
BAD_COMPARISON_LINES = [
    ('{"prompt": "p", "chosen": "c", ', None, "malformed JSON"),
    ("[1, 2]", None, "expected a JSON object"),
    (json.dumps({"prompt": "p", "chosen": "c"}), "rejected", "missing"),
    (json.dumps({**GOOD, "chosen": 3}), "chosen", "got int"),
    (json.dumps({**GOOD, "rejected": None}), "rejected", "got NoneType"),
    (json.dumps({**GOOD, "prompt": []}), "prompt", "empty list"),
    (json.dumps({**GOOD, "prompt": [{"role": "user"}]}), "prompt", "'content'"),
    (json.dumps({**GOOD, "prompt": [{"content": "hi"}]}), "prompt", "'role'"),
    (json.dumps({**GOOD, "prompt": ["hi"]}), "prompt", "message 0"),
    (json.dumps({**GOOD, "prompt": [{"role": "user", "content": 5}]}), "prompt", "must be a string"),
    (json.dumps({**GOOD, "chosen": _msgs(("assistant", "x"))}), "chosen", "plain text"),
    (json.dumps({**GOOD, "margin": "big"}), "margin", "expected a number"),
    (json.dumps({**GOOD, "gold_chosen": True}), "gold_chosen", "got bool"),
    (json.dumps({**GOOD, "rater": 7}), "rater", "expected a string"),
    (json.dumps({**GOOD, "meta": [1]}), "meta", "expected an object"),
    (json.dumps({**GOOD, "choosen": "x", "extra": 1}), "choosen", "unknown field"),
]


@pytest.mark.parametrize(("line", "field", "problem"), BAD_COMPARISON_LINES)
def test_comparison_validation_errors(tmp_path: Path, line: str, field: str | None, problem: str) -> None:
    path = _write_lines(tmp_path / "prefs.jsonl", [GOOD_LINE, GOOD_LINE, line])
    with pytest.raises(RewardlabError) as exc:
        load_comparisons(path)
    msg = str(exc.value)
    assert f"{path}:3:" in msg, msg
    assert problem in msg, msg
    if field is not None:
        assert f"'{field}'" in msg, msg


def test_unknown_keys_are_all_named(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "prefs.jsonl", [json.dumps({**GOOD, "choosen": "x", "extra": 1})])
    with pytest.raises(RewardlabError, match=r"'choosen', 'extra'"):
        load_comparisons(path)


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    with pytest.raises(RewardlabError, match=rf"{path}: no records"):
        load_comparisons(path)
    with pytest.raises(RewardlabError, match="no records"):
        load_rankings(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RewardlabError, match="file not found"):
        load_comparisons(tmp_path / "nope.jsonl")


GOOD_RANK = {"prompt": "p", "completions": ["a", "b", "c"], "ranking": [2, 0, 1]}
BAD_RANKING_LINES = [
    ({**GOOD_RANK, "ranking": [0, 0, 1]}, "ranking", "not a permutation"),
    ({**GOOD_RANK, "ranking": [0, 3]}, "ranking", "not a permutation"),
    ({**GOOD_RANK, "ranking": [-1]}, "ranking", "not a permutation"),
    ({**GOOD_RANK, "ranking": []}, "ranking", "empty"),
    ({**GOOD_RANK, "ranking": [0, 1.0]}, "ranking", "integer"),
    ({**GOOD_RANK, "ranking": [True, 0]}, "ranking", "integer"),
    ({**GOOD_RANK, "completions": ["a"]}, "completions", "at least 2"),
    ({**GOOD_RANK, "completions": "abc"}, "completions", "expected a list"),
    ({**GOOD_RANK, "completions": ["a", 1, "c"]}, "completions[1]", "got int"),
    ({**GOOD_RANK, "golds": [1.0, 2.0]}, "golds", "2 values for 3"),
    ({**GOOD_RANK, "golds": [1.0, None, 2.0]}, "golds[1]", "expected a number"),
    ({"prompt": "p", "completions": ["a", "b"]}, "ranking", "missing"),
    ({**GOOD_RANK, "chosen": "a"}, "chosen", "unknown field"),
]


@pytest.mark.parametrize(("row", "field", "problem"), BAD_RANKING_LINES)
def test_ranking_validation_errors(tmp_path: Path, row: dict, field: str, problem: str) -> None:
    path = _write_lines(tmp_path / "rank.jsonl", [json.dumps(GOOD_RANK), json.dumps(row)])
    with pytest.raises(RewardlabError) as exc:
        load_rankings(path)
    msg = str(exc.value)
    assert f"{path}:2:" in msg and f"'{field}'" in msg and problem in msg, msg


def test_direct_construction_is_validated() -> None:
    with pytest.raises(RewardlabError, match="field 'chosen'"):
        Comparison("p", 3, "r")  # type: ignore[arg-type]
    with pytest.raises(RewardlabError, match="field 'ranking'"):
        Ranking("p", ["a", "b"], [0, 0])


def test_save_rejects_unserializable_meta(tmp_path: Path) -> None:
    with pytest.raises(RewardlabError, match="item 0"):
        save_comparisons(tmp_path / "x.jsonl", [Comparison("p", "a", "b", meta={"obj": object()})])
    assert not (tmp_path / "x.jsonl").exists()


# ------------------------------------------------------------------------------ conversion
def test_ranking_expansion_order_and_golds() -> None:
    r = Ranking("p", ["a", "b", "c", "d"], [2, 0, 3, 1], rater="x", golds=[0.0, 1.0, 2.0, 3.0], meta={"m": 1})
    pairs = rankings_to_comparisons([r])
    assert [(c.chosen, c.rejected) for c in pairs] == [
        ("c", "a"), ("c", "d"), ("c", "b"), ("a", "d"), ("a", "b"), ("d", "b"),
    ]  # fmt: skip
    assert all(c.rater == "x" and c.meta == {"m": 1} for c in pairs)
    assert [(c.gold_chosen, c.gold_rejected) for c in pairs[:2]] == [(2.0, 0.0), (2.0, 3.0)]
    indexed = rankings_to_comparisons([r, r], with_index=True)
    assert indexed[6].meta == {"m": 1, "ranking_index": 1, "pair": [2, 0]}


def test_prefix_ranking_expansion() -> None:
    r = Ranking("p", ["a", "b", "c", "d"], [3])
    assert r.pairs() == [(3, 0), (3, 1), (3, 2)]
    r2 = Ranking("p", ["a", "b", "c", "d"], [3, 1, 0])  # a K-1 prefix is a full ranking
    assert r2.pairs() == Ranking("p", ["a", "b", "c", "d"], [3, 1, 0, 2]).pairs()


@settings(max_examples=60, deadline=None)
@given(
    st.integers(2, 7).flatmap(
        lambda k: st.tuples(st.just(k), st.permutations(list(range(k))), st.integers(1, k))
    )
)
def test_expansion_counts_and_consistency(args: tuple[int, list[int], int]) -> None:
    k, perm, m = args
    golds = [float(g) for g in range(k)]
    r = Ranking("p", [f"c{i}" for i in range(k)], perm[:m], golds=golds)
    pairs = rankings_to_comparisons([r])
    expected = sum(k - 1 - j for j in range(min(m, k - 1)))
    assert len(pairs) == expected
    if m >= k - 1:
        assert len(pairs) == k * (k - 1) // 2
    pos = {c: i for i, c in enumerate(perm[:m])}
    seen = set()
    for c in pairs:
        i, j = int(c.chosen[1:]), int(c.rejected[1:])
        assert c.gold_chosen == golds[i] and c.gold_rejected == golds[j]
        assert pos[i] < pos.get(j, math.inf)
        seen.add(frozenset((i, j)))
    assert len(seen) == len(pairs)


def test_comparisons_to_rankings_round_trip() -> None:
    rankings = comparisons_to_rankings(PLAIN + CONV)
    assert all(r.ranking == [0, 1] and r.k == 2 for r in rankings)
    assert rankings[1].golds == [0.96, -1.57] and rankings[0].golds is None
    assert rankings_to_comparisons(rankings) == PLAIN + CONV
