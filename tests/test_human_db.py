"""The labeling database, the export to comparisons, the agreement statistics and ``label.source: human``."""

from __future__ import annotations

import json
import math
import sqlite3

import pytest

from rewardlab.cli import main
from rewardlab.config import load_config
from rewardlab.feedback.human.config import HumanSourceConfig
from rewardlab.feedback.human.db import SCHEMA_VERSION, LabelDB, LabelError
from rewardlab.feedback.human.source import HumanLabels
from rewardlab.feedback.human.stats import (
    annotator_stats,
    cohen_kappa,
    pairwise_kappa,
    pooled_kappa,
    to_comparisons,
)
from rewardlab.feedback.records import load_comparisons
from rewardlab.feedback.simulated import rater_error_rate
from rewardlab.pipelines.label import run_label
from rewardlab.utils import RewardlabError


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def items(n: int, **extra):
    return [{"prompt": f"what is {i} + 1 ?", "a": f"{i + 1}", "b": f"{i + 2}", "gold_a": 1.0, "gold_b": 0.0,
             "meta": {"difficulty": i % 3}, **extra} for i in range(n)]  # fmt: skip


@pytest.fixture
def db(tmp_path):
    d = LabelDB(tmp_path / "l.sqlite", clock=Clock())
    d.add_items("q", items(4))
    return d


def test_schema_is_versioned_wal_and_reopens(tmp_path, db):
    con = sqlite3.connect(db.path)
    assert con.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.execute("UPDATE schema_version SET version = 99")
    con.commit()
    with pytest.raises(RewardlabError, match="schema version 99"):
        LabelDB(db.path)
    con.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
    con.commit()
    assert LabelDB(db.path).item(1).prompt == "what is 0 + 1 ?"  # reopening migrates nothing, keeps data


def test_tokens_are_stored_hashed_and_checked(db):
    token = db.add_annotator("alice")
    assert db.authenticate(token)[1] == "alice"
    raw = sqlite3.connect(db.path).execute("SELECT salt, token_hash FROM annotators").fetchone()
    secret = token.split(".", 1)[1]
    assert secret.encode() not in raw[1] and len(raw[1]) == 32
    assert secret.encode() not in db.path.read_bytes() + db.path.with_name("l.sqlite-wal").read_bytes()
    for bad in (None, "", token + "x", "1." + "A" * 32, "abc", "999." + secret):
        assert db.authenticate(bad) is None
    with pytest.raises(RewardlabError, match="already exists"):
        db.add_annotator("alice")
    with pytest.raises(RewardlabError, match="annotator name"):
        db.add_annotator("<b>")


def test_an_item_is_leased_to_one_annotator_and_reoffered_after_expiry(db):
    a, b = (db.authenticate(db.add_annotator(n))[0] for n in ("a", "b"))
    first = db.next_item("q", a, lease_s=60)
    assert db.next_item("q", a, lease_s=60).id == first.id  # a reload shows the same item
    assert db.next_item("q", b, lease_s=60).id != first.id  # b never gets a's leased item
    with pytest.raises(LabelError, match="leased to another annotator") as e:
        db.submit(first.id, b, "a")
    assert e.value.status == 409
    db.clock.t += 61  # a's lease expires: the item goes to whoever asks next
    assert db.next_item("q", b, lease_s=60).id == first.id
    db.clock.t += 5
    assert db.submit(first.id, b, "b") > 0
    assert db.labels("q")[0].seconds == pytest.approx(5.0)  # seconds since the lease started
    with pytest.raises(LabelError, match="needs no more labels"):
        db.submit(first.id, a, "a")  # a's lease was taken over and the item is done


def test_submission_errors_are_clear_4xx(db):
    a = db.authenticate(db.add_annotator("a"))[0]
    it = db.next_item("q", a, 60)
    cases = [(999, "a", None, 404, "no such item"), (it.id, "left", None, 422, "choice"),
             (it.id, "a", "x" * 5000, 422, "reason")]  # fmt: skip
    for item_id, choice, reason, status, text in cases:
        with pytest.raises(LabelError, match=text) as e:
            db.submit(item_id, a, choice, reason)
        assert e.value.status == status
    with pytest.raises(LabelError, match="seconds"):
        db.submit(it.id, a, "a", seconds=float("nan"))
    db.submit(it.id, a, "a")
    with pytest.raises(LabelError, match="double submission") as e:
        db.submit(it.id, a, "b")
    assert e.value.status == 409
    assert len(db.labels("q")) == 1


def test_overlap_items_go_to_two_annotators_and_skips_are_not_answers(tmp_path):
    db = LabelDB(tmp_path / "o.sqlite")
    db.add_items("q", items(1, wanted=2))
    a, b, c = (db.authenticate(db.add_annotator(n))[0] for n in "abc")
    db.submit(db.next_item("q", a, 60).id, a, "skip")
    assert db.next_item("q", a, 60) is None  # a skipped it: not shown to a again
    assert db.progress("q") == {"items": 1, "done": 0, "remaining": 2}
    db.submit(db.next_item("q", b, 60).id, b, "a")
    db.submit(db.next_item("q", c, 60).id, c, "tie")
    assert db.next_item("q", a, 60) is None and db.progress("q")["remaining"] == 0
    assert [lab.choice for lab in db.labels("q")] == ["a", "tie"]


def test_export_keeps_annotator_seconds_reason_and_gold(db):
    a = db.authenticate(db.add_annotator("ann"))[0]
    for choice in ("a", "b", "tie", "cant_tell"):
        it = db.next_item("q", a, 60)
        db.submit(it.id, a, choice, reason="<i>why</i>" if choice == "b" else None, seconds=2.5)
    comps = to_comparisons(db.labels("q"))
    assert len(comps) == 3  # can't tell is no comparison
    first, flipped, tie = comps
    assert (first.chosen, first.gold_chosen, first.gold_rejected) == ("1", 1.0, 0.0)
    assert (flipped.chosen, flipped.rejected, flipped.gold_chosen) == ("3", "2", 0.0)
    assert flipped.meta["reason"] == "<i>why</i>" and flipped.meta["annotator"] == "ann"
    assert flipped.meta["seconds"] == 2.5 and flipped.meta["difficulty"] == 1 and flipped.rater == "ann"
    assert tie.tie and "reason" not in tie.meta


def test_cohen_kappa_matches_hand_computation():
    # 10 items: both "a" on 4, both "b" on 3, disagree on 3 -> p_o = .7; marginals r1 a=6 b=4, r2 a=5 b=5
    r1 = ["a"] * 4 + ["b"] * 3 + ["a", "a", "b"]
    r2 = ["a"] * 4 + ["b"] * 3 + ["b", "b", "a"]
    p_e = (6 * 5 + 4 * 5) / 100
    assert cohen_kappa(r1, r2) == pytest.approx((0.7 - p_e) / (1 - p_e))
    assert cohen_kappa(["a", "b"], ["a", "b"]) == 1.0
    assert cohen_kappa(["a", "b"], ["b", "a"]) == pytest.approx(-1.0)
    assert math.isnan(cohen_kappa([], []))


def test_agreement_statistics_per_annotator_and_pair(tmp_path):
    db = LabelDB(tmp_path / "k.sqlite")
    db.add_items("q", items(4, wanted=2))
    x, y = (db.authenticate(db.add_annotator(n))[0] for n in "xy")
    for who, answers in ((x, "aaba"), (y, "abba")):
        for choice in answers:
            db.submit(db.next_item("q", who, 60).id, who, choice)
    labels = db.labels("q")
    (pair,) = pairwise_kappa(labels)
    assert pair["n"] == 4 and pair["agreement"] == 0.75
    assert pair["kappa"] == pytest.approx(cohen_kappa(list("aaba"), list("abba")))
    assert pooled_kappa(labels)["n"] == 4
    rows = {r["annotator"]: r for r in annotator_stats(labels)}
    assert rows["x"]["gold_error_rate"] == 0.25 and rows["y"]["gold_error_rate"] == 0.5  # gold says "a"
    assert rows["x"]["peer_agreement"] == 0.75


def test_human_source_waits_for_labels_with_a_progress_bar(tmp_path):
    db = LabelDB(tmp_path / "w.sqlite")
    db.add_items("q", items(3))
    a = db.authenticate(db.add_annotator("a"))[0]
    cfg = HumanSourceConfig(db=str(db.path), queue="q", min_labels=2, wait=False)
    with pytest.raises(RewardlabError, match="has 0 of the 2 comparisons"):
        HumanLabels(cfg, task=None, name="human").comparisons()  # type: ignore[arg-type]

    def someone_labels(_: float) -> None:  # each poll, one more answer arrives
        db.submit(db.next_item("q", a, 60).id, a, "a")

    waiting = HumanLabels(
        cfg.model_copy(update={"wait": True}), task=None, name="human", sleep=someone_labels
    )  # type: ignore[arg-type]
    assert len(waiting.comparisons()) == 2
    slow = cfg.model_copy(update={"wait": True, "min_labels": 3, "timeout_s": 0.01, "poll_s": 0.02})
    with pytest.raises(RewardlabError, match="timeout_s"):
        HumanLabels(slow, task=None, name="human", sleep=lambda s: None).comparisons()  # type: ignore[arg-type]
    with pytest.raises(RewardlabError, match="does not exist"):
        HumanLabels(cfg.model_copy(update={"db": str(tmp_path / "none")}), None, "h").comparisons()  # type: ignore[arg-type]


def test_label_stage_reads_the_database_and_measures_error_against_gold(tmp_path):
    db = LabelDB(tmp_path / "s.sqlite")
    rows = items(20)
    for i, r in enumerate(rows):  # gold from the arithmetic task is filled in when an item carries none
        if i % 2:
            r.pop("gold_a"), r.pop("gold_b")
    db.add_items("q", rows)
    a = db.authenticate(db.add_annotator("a"))[0]
    for i in range(20):
        db.submit(db.next_item("q", a, 60).id, a, "b" if i < 5 else "a", seconds=1.0)
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", "label.source=human", f"label.human.db={db.path}",
                             "label.human.queue=q", "label.human.min_labels=20"])  # fmt: skip
    assert cfg.arm == "human-s0"
    out = run_label(cfg, quiet=True)
    comps = load_comparisons(out / "train.jsonl") + load_comparisons(out / "eval.jsonl")
    assert len(comps) == 20 and all(c.meta["annotator"] == "a" and c.meta["seconds"] == 1.0 for c in comps)
    task = cfg.build_task()
    for c in comps:
        if c.meta["item_id"] % 2 == 0:  # these items carried no gold: the task scored them
            assert c.gold_chosen == task.gold(task.item(c.prompt), c.chosen) is not None
        else:
            assert (c.gold_chosen, c.gold_rejected) in ((1.0, 0.0), (0.0, 1.0))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rater/error_rate"] == pytest.approx(rater_error_rate(comps)["error_rate"])
    assert summary["rater/n"] == rater_error_rate(comps)["n"] >= 10
    assert summary["sources"] == {f"{db.path}#q": 20}


def test_cli_add_annotator_enqueue_file_and_export(tmp_path, capsys):
    dbp = tmp_path / "c.sqlite"
    items_file = tmp_path / "items.jsonl"
    items_file.write_text("\n".join(json.dumps(r) for r in items(3)) + "\n")
    assert (
        main(["label", "enqueue", str(items_file), "--db", str(dbp), "--queue", "q", "--overlap", "0.34"])
        == 0
    )
    assert main(["label", "add-annotator", "bob", "--db", str(dbp)]) == 0
    token = capsys.readouterr().out.strip()
    db = LabelDB(dbp)
    assert sorted(db.item(i).wanted for i in (1, 2, 3)) == [1, 1, 2]
    bob = db.authenticate(token)[0]
    db.submit(db.next_item("q", bob, 60).id, bob, "b")
    assert (
        main(["label", "export", "--db", str(dbp), "--queue", "q", "--out", str(tmp_path / "x.jsonl")]) == 0
    )
    (c,) = load_comparisons(tmp_path / "x.jsonl")
    assert (c.chosen, c.rater) == ("2", "bob")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**items(1)[0], "images_a": ["../../etc/passwd.png"]}) + "\n")
    assert main(["label", "enqueue", str(bad), "--db", str(dbp)]) == 2
    assert "inside media_dir" in capsys.readouterr().err
