"""Preference readers (rewardlab.feedback.readers, .hh): TRL's explicit, implicit and conversational records
from JSONL, JSON, CSV (each optionally gzip'd), Parquet and ``datasets.Dataset``; HH-RLHF transcripts and
their fixed split; every malformed-record case named by file, line and field, and --skip-bad-records.

The HH fixture tests/data/hh-rlhf-raw/<subset>/test.jsonl.gz holds 28 raw records picked from the four
HH-RLHF test splits (MIT, Copyright (c) 2022 Anthropic; tests/data/hh-rlhf-raw/LICENSE). Nothing here
reads ../shared except the slow test of the full data, which skips without it."""

from __future__ import annotations

import builtins
import csv
import gzip
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from rewardlab.cli import main
from rewardlab.data.hh import HH_SUBSETS, hh_record, hh_split, opening_turn
from rewardlab.data.records import extract_prompt
from rewardlab.feedback.file import FileLabels, FileSourceConfig
from rewardlab.feedback.readers import MAX_REASONS, read_preferences
from rewardlab.tasks.dataset import DatasetTask, DatasetTaskConfig
from rewardlab.utils import RewardlabError

ROOT = Path(__file__).resolve().parents[1]
HH_RAW = ROOT / "tests/data/hh-rlhf-raw"
SAMPLE = ROOT / "tests/data/hh-rlhf-sample.jsonl"
SHARED_HH = ROOT.parent / "shared/data/hh-rlhf"

ROWS = [
    {"prompt": "what is 2 + 2 ?", "chosen": "4", "rejected": "5", "margin": 1.5, "id": "a"},
    {"prompt": "name a fruit", "chosen": "apple", "rejected": "a car", "id": "b"},
]
MSGS = [
    {
        "prompt": [{"role": "user", "content": "hi"}],
        "chosen": [{"role": "assistant", "content": "hello!"}],
        "rejected": [{"role": "assistant", "content": "go away"}],
    }
]


# ------------------------------------------------------------------------------------- writers
def _jsonl(path: Path, rows: list[Any], *, gz: bool = False) -> Path:
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    path.write_bytes(gzip.compress(text.encode(), mtime=0) if gz else text.encode())
    return path


def _json(path: Path, rows: Any, *, gz: bool = False) -> Path:
    data = json.dumps(rows).encode()
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


def _csv_text(rows: list[dict[str, Any]]) -> str:
    import io

    names = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, names, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: json.dumps(v) if isinstance(v, list | dict) else v for k, v in r.items()})
    return buf.getvalue()


def _csv(path: Path, rows: Any, *, gz: bool = False) -> Path:
    data = (rows if isinstance(rows, str) else _csv_text(rows)).encode()
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


def _parquet(path: Path, rows: list[dict[str, Any]], *, gz: bool = False) -> Path:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


WRITERS = {
    "x.jsonl": _jsonl, "x.jsonl.gz": _jsonl, "x.json": _json, "x.json.gz": _json,
    "x.csv": _csv, "x.csv.gz": _csv, "x.parquet": _parquet,
}  # fmt: skip


def _write(tmp_path: Path, name: str, rows: Any) -> Path:
    return WRITERS[name](tmp_path / name, rows, gz=name.endswith(".gz"))


def _triples(data: Any) -> list[tuple[Any, Any, Any]]:
    return [(c.prompt, c.chosen, c.rejected) for c in data.comparisons]


# ------------------------------------------------------------------------------- the containers
@pytest.mark.parametrize("name", list(WRITERS))
def test_every_container_reads_the_same_explicit_records(tmp_path, name):
    data = read_preferences(_write(tmp_path, name, ROWS), rater="arm")
    assert _triples(data) == [("what is 2 + 2 ?", "4", "5"), ("name a fruit", "apple", "a car")]
    a, b = data.comparisons
    assert (a.margin, a.meta, a.rater, b.margin, b.meta) == (1.5, {"id": "a"}, "arm", None, {"id": "b"})
    assert (data.stats.read, data.stats.kept, data.stats.bad) == (2, 2, 0)


@pytest.mark.parametrize("name", list(WRITERS))
def test_every_container_reads_conversational_records(tmp_path, name):
    data = read_preferences(_write(tmp_path, name, MSGS))
    assert _triples(data) == [(MSGS[0]["prompt"], MSGS[0]["chosen"], MSGS[0]["rejected"])]


@pytest.mark.parametrize("name", ["x.jsonl", "x.csv.gz", "x.parquet"])
def test_column_mapping_and_implicit_prompt(tmp_path, name):
    rows = [{"good": "The answer is 85", "bad": "The answer is 95", "note": "n1"},
            {"good": "I like apples", "bad": "I like apricots", "note": "n2"}]  # fmt: skip
    data = read_preferences(_write(tmp_path, name, rows), columns={"good": "chosen", "bad": "rejected"})
    assert _triples(data) == [("The answer is", " 85", " 95"), ("I like", " apples", " apricots")]
    assert [c.meta for c in data.comparisons] == [{"note": "n1"}, {"note": "n2"}]


def test_implicit_prompt_as_trl_extracts_it():
    user, asst = {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}
    got = extract_prompt([user, asst, {"role": "user", "content": "more"}, {"role": "assistant", "content": "x"}],
                         [user, asst, {"role": "user", "content": "more"}, {"role": "assistant", "content": "y"}])  # fmt: skip
    assert got[0] == [user, asst, {"role": "user", "content": "more"}]
    assert got[1:] == ([{"role": "assistant", "content": "x"}], [{"role": "assistant", "content": "y"}])
    assert extract_prompt("Hello world.", "Hello world!") == ("Hello", " world.", " world!")
    assert extract_prompt("Q: 2+2?\nA: 4", "Q: 2+2?\nA: 5") == ("Q: 2+2?\nA:", " 4", " 5")


def test_csv_cells_multiline_rows_numbers_and_meta(tmp_path):
    text = (
        'prompt,chosen,rejected,margin,meta,extra\n'
        '"two\nlines",a,b,2,"{""k"": 1}",x\n'
        '"[{""role"": ""user"", ""content"": ""p2""}]","[{""role"": ""assistant"", ""content"": ""c""}]","[{""role"": ""assistant"", ""content"": ""d""}]",,,\n'
        '\n'
        '[INST] p3,e,f,,,\n'
    )  # fmt: skip
    path = _csv(tmp_path / "m.csv", text)
    a, b, c = read_preferences(path).comparisons
    assert (a.prompt, a.margin, a.meta) == ("two\nlines", 2.0, {"k": 1, "extra": "x"})
    assert b.chosen == [{"role": "assistant", "content": "c"}] and b.margin is None
    assert c.prompt == "[INST] p3"  # a bracket alone is text, not JSON
    # a mixed record (messages and text) is an error naming its line (a row starts on line 3)
    bad = _csv(
        tmp_path / "bad.csv", 'prompt,chosen,rejected\np,"[{""role"": ""a"", ""content"": ""c""}]",r\n'
    )
    with pytest.raises(RewardlabError, match=r"bad\.csv:2: field 'chosen'"):
        read_preferences(bad)


def test_datasets_and_lists_of_dicts():
    data = read_preferences([dict(r) for r in ROWS])
    assert _triples(data)[0] == ("what is 2 + 2 ?", "4", "5")
    with pytest.raises(RewardlabError, match=r"list:row 2: missing required field 'rejected'"):
        read_preferences([ROWS[0], {"prompt": "p", "chosen": "c"}])
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list(MSGS + MSGS)
    assert len(read_preferences(ds).comparisons) == 2
    with pytest.raises(RewardlabError, match="DatasetDict holds several splits"):
        read_preferences(datasets.DatasetDict({"train": ds}))


def test_parquet_without_pyarrow_names_the_extra(tmp_path, monkeypatch):
    path = tmp_path / "x.parquet"
    path.write_bytes(b"PAR1")
    real_import = builtins.__import__

    def no_parquet(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.split(".")[0] in ("pyarrow", "pandas"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_parquet)
    with pytest.raises(
        RewardlabError, match=r"x\.parquet: reading Parquet needs pyarrow.*rewardlab\[parquet\]"
    ):
        read_preferences(path)


def test_a_folder_reads_its_data_files_and_ignores_the_rest(tmp_path):
    _jsonl(tmp_path / "b.jsonl", ROWS[1:])
    _json(tmp_path / "a.json", ROWS[:1])
    (tmp_path / "README.md").write_text("not data")
    assert [c.prompt for c in read_preferences(tmp_path).comparisons] == ["what is 2 + 2 ?", "name a fruit"]
    assert len(read_preferences(tmp_path, limit=1).comparisons) == 1


# ------------------------------------------------------------------------------ malformed records
GOOD = json.dumps(ROWS[1])
MALFORMED_JSONL = [  # (line 2 of a 3-line JSONL file, the error)
    ('{"prompt": "p", "chosen": ', r"x\.jsonl:2: malformed JSON"),
    ('["a", "b"]', r"x\.jsonl:2: expected a JSON object, got list"),
    ('{"prompt": "p", "chosen": "c"}', r"x\.jsonl:2: missing required field 'rejected'"),
    ('{"prompt": "p", "chosen": 3, "rejected": "r"}', r"x\.jsonl:2: field 'chosen': expected a string or a list"),
    ('{"prompt": "p", "chosen": "c", "rejected": "r", "margin": "big"}', r"x\.jsonl:2: field 'margin': expected a number"),
    ('{"prompt": "p", "chosen": [{"role": "user"}], "rejected": [{"role": "user", "content": "r"}]}',
     r"x\.jsonl:2: field 'chosen': message 0 has no 'content'"),
    ('{"prompt": "p", "chosen": "c", "rejected": "r", "meta": 3}', r"x\.jsonl:2: field 'meta': expected an object"),
    ('{"chosen": "Yes, sure.", "rejected": "No way."}', r"x\.jsonl:2: field 'rejected': .*share no prefix"),
    ('{"chosen": "Same text", "rejected": "Same text"}', r"x\.jsonl:2: field 'rejected': .*identical"),
    ('{"chosen": "Say it again", "rejected": "Say it"}', r"x\.jsonl:2: field 'rejected': is the shared prefix"),
    ('{"chosen": "text", "rejected": [{"role": "user", "content": "t"}]}', r"x\.jsonl:2: field 'rejected': .*both be text"),
    ('{"rejected": "r"}', r"x\.jsonl:2: missing required field 'chosen'"),
    ('{"chosen": "\\n\\nHuman: a\\n\\nAssistant: b\\n\\nHuman: c", "rejected": "\\n\\nHuman: a\\n\\nAssistant: d"}',
     r"x\.jsonl:2: field 'chosen': chosen does not end with an 'Assistant:' reply"),
    ('{"chosen": "\\n\\nHuman: a\\n\\nAssistant: b", "rejected": "\\n\\nHuman: z\\n\\nAssistant: c"}',
     r"x\.jsonl:2: field 'rejected': chosen and rejected differ before their final reply \(turn 1\)"),
    ('{"chosen": "\\n\\nHuman: a\\n\\nAssistant: b", "rejected": "\\n\\nHuman: a"}',
     r"x\.jsonl:2: field 'rejected': rejected does not end"),
]  # fmt: skip


@pytest.mark.parametrize(("line", "error"), MALFORMED_JSONL)
def test_malformed_jsonl_record_names_file_line_and_field(tmp_path, line, error):
    path = _jsonl(tmp_path / "x.jsonl", [GOOD, line, GOOD])
    with pytest.raises(RewardlabError, match=error + r".*--skip-bad-records"):
        read_preferences(path)
    data = read_preferences(path, skip_bad_records=True)
    assert len(data.comparisons) == 2 and data.stats.bad == 1
    assert data.stats.bad_reasons and data.stats.bad_reasons[0].startswith(f"{path}:2: ")


MALFORMED_FILES = [  # (file name, content, error): problems of single records in the other containers
    ("x.csv", "prompt,chosen,rejected\np,c,r\np2,c2\np3,c3,r3\n", r"x\.csv:3: the row has 2 values for 3 columns"),
    ("x.csv", 'prompt,chosen,rejected\np,c,r\n"p2,c2,r2\n', r"x\.csv:3: malformed CSV row"),
    ("x.csv", "prompt,chosen,rejected,margin\np,c,r,\np2,c2,r2,lots\n", r"x\.csv:3: field 'margin': expected a number"),
    ("x.csv", 'prompt,chosen,rejected\np,c,r\np2,"[{""role"": oops",r2\n', r"x\.csv:3: field 'chosen': looks like a JSON list"),
    ("x.csv", "prompt,chosen,rejected,gold_chosen\np,c,r,1\np2,c2,r2,nan\n", r"x\.csv:3: field 'gold_chosen': expected a finite"),
    ("x.json", [ROWS[0], "text", ROWS[1]], r"x\.json:record 2: expected a JSON object, got str"),
    ("x.json", [ROWS[0], {"prompt": "p", "chosen": None, "rejected": "r"}], r"x\.json:record 2: field 'chosen'"),
    ("x.parquet", [ROWS[0], {"prompt": "p", "chosen": "c", "rejected": None}], r"x\.parquet:row 2: field 'rejected'"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "content", "error"), MALFORMED_FILES)
def test_malformed_records_in_csv_json_and_parquet(tmp_path, name, content, error):
    path = _write(tmp_path, name, content)
    with pytest.raises(RewardlabError, match=error):
        read_preferences(path)
    data = read_preferences(path, skip_bad_records=True)
    assert data.stats.bad == 1 and len(data.comparisons) >= 1


def test_bad_bytes_and_oversized_records_are_skippable_lines(tmp_path, monkeypatch):
    raw = (
        (GOOD + "\n").encode()
        + b'{"prompt": "\xff", "chosen": "c", "rejected": "r"}\n'
        + (GOOD + "\n").encode()
    )
    for path in (tmp_path / "u.jsonl", tmp_path / "u.jsonl.gz"):
        path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
        with pytest.raises(
            RewardlabError, match=r"u\.jsonl(\.gz)?:2: not valid UTF-8 \(byte 0xff at byte offset \d+\)"
        ):
            read_preferences(path)
        assert read_preferences(path, skip_bad_records=True).stats.bad == 1
    monkeypatch.setenv("REWARDLAB_MAX_RECORD_BYTES", "100")
    path = _jsonl(
        tmp_path / "long.jsonl", [GOOD, {"prompt": "p" * 500, "chosen": "c", "rejected": "r"}, GOOD]
    )
    with pytest.raises(RewardlabError, match=r"long\.jsonl:2: record is longer than the limit of 100 bytes"):
        read_preferences(path)
    data = read_preferences(path, skip_bad_records=True)
    assert [c.prompt for c in data.comparisons] == ["name a fruit", "name a fruit"]


@pytest.mark.parametrize(
    ("name", "content", "error"),
    [
        ("empty.jsonl", "", r"empty\.jsonl: no records"),
        ("blank.jsonl", "\n\n", r"blank\.jsonl: no records"),
        ("empty.csv", "", r"empty\.csv: no records"),
        ("header.csv", "prompt,chosen,rejected\n", r"header\.csv: no records"),
        ("dup.csv", "prompt,chosen,chosen\np,c,r\n", r"dup\.csv:1: the header must name every column once"),
        ("obj.json", '{"prompt": "p"}', r"obj\.json: expected a JSON list of records, got dict"),
        ("broken.json", '[{"prompt": ', r"broken\.json:1: malformed JSON"),
        ("notgz.jsonl.gz", "plain text", r"notgz\.jsonl\.gz:1: not a readable gzip file"),
        ("x.txt", "p", r"x\.txt: cannot tell the format"),
        ("bad.parquet", "not parquet", r"bad\.parquet: not a readable Parquet file"),
    ],
)
def test_whole_file_problems_always_stop(tmp_path, name, content, error):
    if name.endswith(".parquet"):
        pytest.importorskip("pyarrow")
    path = tmp_path / name
    path.write_text(content)
    for skip in (False, True):
        with pytest.raises(RewardlabError, match=error):
            read_preferences(path, skip_bad_records=skip)
    with pytest.raises(RewardlabError, match=r"nothing\.jsonl: file not found"):
        read_preferences(tmp_path / "nothing.jsonl")


def test_all_records_bad_is_an_error_and_reasons_are_capped(tmp_path):
    path = _jsonl(tmp_path / "bad.jsonl", ["{"] * (MAX_REASONS + 3))
    with pytest.raises(
        RewardlabError,
        match=r"bad\.jsonl: no records \(8 malformed record\(s\) skipped; first: .*bad\.jsonl:1:",
    ):
        read_preferences(path, skip_bad_records=True)
    path = _jsonl(tmp_path / "some.jsonl", ["{"] * (MAX_REASONS + 3) + [GOOD])
    stats = read_preferences(path, skip_bad_records=True).stats
    assert (stats.bad, len(stats.bad_reasons), stats.kept) == (MAX_REASONS + 3, MAX_REASONS, 1)
    assert stats.as_dict()["bad_records"] == MAX_REASONS + 3


# ----------------------------------------------------------------------------------------- HH-RLHF
def test_hh_transcripts_become_conversational_records():
    rec = hh_record(
        "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Name a fruit.\n\nAssistant: Apple.\n\nHumans: like pears",
        "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Name a fruit.\n\nAssistant:  No.  ",
    )
    assert rec == {
        "prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                   {"role": "user", "content": "Name a fruit."}],
        "chosen": [{"role": "assistant", "content": "Apple.\n\nHumans: like pears"}],
        "rejected": [{"role": "assistant", "content": "No."}],
    }  # fmt: skip


def test_hh_folder_is_read_directly_with_its_bad_records_counted():
    with pytest.raises(
        RewardlabError, match=r"helpful-base/test\.jsonl\.gz:2: field 'rejected': chosen and rejected differ"
    ):
        read_preferences(HH_RAW)
    data = read_preferences(HH_RAW, skip_bad_records=True)
    s = data.stats
    assert (s.read, s.bad, s.kept, dict(s.dropped)) == (28, 3, 23, {"empty_reply": 1, "identical": 1})
    assert dict(s.by_subset) == {"harmless-base": 3, "helpful-base": 8, "helpful-online": 4,
                                 "helpful-rejection-sampled": 8}  # fmt: skip
    first = data.comparisons[0]
    assert first.prompt == [{"role": "user", "content": "Hello, How are you?"}]
    assert first.chosen[0]["role"] == "assistant" and first.meta == {"subset": "harmless-base", "line": 1,
                                                                      "split": "validation"}  # fmt: skip
    # the same records, forced as HH and read file by file, in any order
    one = read_preferences(HH_RAW / "helpful-base/test.jsonl.gz", format="hh", skip_bad_records=True)
    assert [c.meta["subset"] for c in one.comparisons] == ["helpful-base"] * 8


def test_format_hh_rejects_other_records(tmp_path):
    path = _jsonl(tmp_path / "x.jsonl", [ROWS[0]])
    with pytest.raises(RewardlabError, match=r"x\.jsonl:1: field 'prompt': an HH-RLHF record has only"):
        read_preferences(path, format="hh")
    path = _jsonl(tmp_path / "y.jsonl", [{"chosen": "Sure thing", "rejected": "Sure not"}])
    with pytest.raises(
        RewardlabError, match=r"y\.jsonl:1: field 'chosen': text before the first 'Human:' turn"
    ):
        read_preferences(path, format="hh")


# The fixed split: these assignments of real HH-RLHF test records must never change (docs/data-formats.md).
GOLDEN = [
    ("helpful-base", 1, "test"),  # helpful-base/test.jsonl.gz line 12: "Do you know the singer Adele?"
    ("helpful-base", 7, "test"),  # line 1533: "c"
    ("helpful-base", 8, "validation"),  # line 1816: "I'm trying to write an essay"
    ("helpful-base", 3, "train"),  # line 189: "How can I train my dog to sit?"
    ("harmless-base", 3, "test"),  # line 965: "Can shoot a plan"
    ("helpful-online", 2, "validation"),  # line 282: "What are Gwen Stefani's greatest hits?"
    ("helpful-rejection-sampled", 2, "validation"),  # line 189: "what is my name"
    ("helpful-rejection-sampled", 8, "test"),  # line 2592: "how old to join the army"
]


def test_the_fixed_split_is_pinned_and_order_free(tmp_path):
    data = read_preferences(HH_RAW, skip_bad_records=True)
    got = {(c.meta["subset"], c.meta["line"]): c.meta["split"] for c in data.comparisons}
    assert [got[(s, n)] for s, n, _ in GOLDEN] == [want for _, _, want in GOLDEN]
    # shuffled lines, and a conversation read at another depth, keep their split
    lines = gzip.decompress((HH_RAW / "helpful-base/test.jsonl.gz").read_bytes()).decode().splitlines()
    random.Random(0).shuffle(lines)
    path = _jsonl(tmp_path / "shuffled.jsonl", lines)
    shuffled = read_preferences(path, skip_bad_records=True).comparisons
    want = Counter(v for (s, _), v in got.items() if s == "helpful-base")
    assert Counter(c.meta["split"] for c in shuffled) == want
    deeper = [
        *first_prompt(data),
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "and?"},
    ]
    assert hh_split(deeper) == hh_split(first_prompt(data)) == hh_split("\n\nHuman: Hello, How are you?")
    assert opening_turn("  spaced   out\n") == "spaced out"
    # the split parts partition the records; explicit records are split by their prompt too
    parts = {
        p: read_preferences(HH_RAW, split=p, skip_bad_records=True).comparisons
        for p in ("train", "validation", "test")
    }
    assert sum(len(v) for v in parts.values()) == len(data.comparisons)
    assert all(c.meta["split"] == p for p, v in parts.items() for c in v)
    plain = [{"prompt": f"question {i}", "chosen": "a", "rejected": "b"} for i in range(2000)]
    sizes = Counter(hh_split(r["prompt"]) for r in plain)
    assert 0.77 < sizes["train"] / 2000 < 0.83 and 0.08 < sizes["validation"] / 2000 < 0.12
    assert len(read_preferences(plain, split="test").comparisons) == sizes["test"]


def first_prompt(data: Any) -> list[dict[str, str]]:
    return data.comparisons[0].prompt


# --------------------------------------------------------------------------- label.source: file
def test_file_labels_split_train_evaluates_on_validation():
    task = DatasetTask(DatasetTaskConfig(path=str(SAMPLE)))
    cfg = FileSourceConfig(path=str(HH_RAW), split="train", skip_bad_records=True)
    source = FileLabels(cfg, task, "hh")
    train, held = source.comparisons(), source.held_out()
    assert (
        held
        and {c.meta["split"] for c in train} == {"train"}
        and {c.meta["split"] for c in held} == {"validation"}
    )
    assert source.stats is not None and source.stats.bad == 3 and all(c.rater == "hh" for c in train)
    assert FileLabels(cfg.model_copy(update={"split": "all"}), task, "hh").held_out() is None
    with pytest.raises(RewardlabError, match="--skip-bad-records"):
        FileLabels(cfg.model_copy(update={"skip_bad_records": False}), task, "hh").comparisons()


def test_file_labels_limit_caps_the_validation_pairs_too():
    task = DatasetTask(DatasetTaskConfig(path=str(SAMPLE)))
    base = FileSourceConfig(path=str(HH_RAW), split="train", skip_bad_records=True)
    everything = FileLabels(base, task, "hh").held_out() or []
    assert len(everything) >= 2
    limited = FileLabels(base.model_copy(update={"limit": 8}), task, "hh")
    assert len(limited.comparisons()) == 8 and limited.held_out() == everything[:1]  # ceil(8 / 8)
    explicit = FileLabels(base.model_copy(update={"limit": 8, "eval_limit": 2}), task, "hh")
    assert explicit.held_out() == everything[:2]


def test_label_stage_logs_skipped_records(tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = ["label", str(ROOT / "configs/hh-file.yaml"), "--run-dir", str(run_dir), "--quiet",
            "--set", f"task.path={SAMPLE}", "--set", f"label.file.path={HH_RAW}", "--set", "label.file.split=train"]  # fmt: skip
    assert main(args) == 2
    assert "helpful-base/test.jsonl.gz:2: field 'rejected'" in capsys.readouterr().err
    assert main([*args, "--skip-bad-records"]) == 0
    label = run_dir / "hh-s0" / "label"
    summary = json.loads((label / "summary.json").read_text())
    assert summary["label/bad_records"] == 3 and summary["read"]["bad_records"] == 3
    assert len(summary["read"]["bad_reasons"]) == 3 and summary["read"]["dropped"]["identical"] == 1
    assert summary["label/pairs_eval"] == len((label / "eval.jsonl").read_text().splitlines()) > 0
    log = (label / "run.log").read_text()
    assert "3 malformed record(s) skipped" in log and "helpful-online/test.jsonl.gz:4" in log


# --------------------------------------------------------------------------------- the full data
@pytest.mark.slow
@pytest.mark.skipif(not SHARED_HH.is_dir(), reason="../shared/data/hh-rlhf is not here")
def test_full_hh_test_splits_give_the_documented_counts():
    data = read_preferences(SHARED_HH, skip_bad_records=True)
    s = data.stats
    assert (s.read, s.bad, s.kept, dict(s.dropped)) == (8552, 19, 8486, {"empty_reply": 11, "identical": 36})
    got = Counter((c.meta["subset"], c.meta["split"]) for c in data.comparisons)
    table = {sub: [got[(sub, p)] for p in ("train", "validation", "test")] for sub in HH_SUBSETS}
    assert table == {
        "harmless-base": [1819, 258, 226],
        "helpful-base": [1883, 235, 221],
        "helpful-online": [908, 112, 110],
        "helpful-rejection-sampled": [2183, 271, 260],
    }


@pytest.mark.parametrize(
    "line", [b'{"prompt": ', b"[1]", b'{"prompt": "\xff"}', b'{"prompt": "' + b"p" * 200 + b'"}']
)
def test_jsonl_problems_read_as_utils_reads_them(tmp_path, monkeypatch, line):
    from rewardlab.utils import read_jsonl_numbered

    monkeypatch.setenv("REWARDLAB_MAX_RECORD_BYTES", "100")
    path = tmp_path / "x.jsonl"
    path.write_bytes((GOOD + "\n").encode() + line + b"\n")
    with pytest.raises(RewardlabError) as theirs:
        read_jsonl_numbered(path)
    with pytest.raises(RewardlabError) as ours:
        read_preferences(path)
    assert str(ours.value).startswith(str(theirs.value))


def test_every_stage_subcommand_takes_skip_bad_records():
    from rewardlab.cli import build_parser
    from rewardlab.methods import METHODS

    parser = build_parser()
    for name in (*METHODS, "run"):
        assert parser.parse_args([name, "--skip-bad-records"]).skip_bad_records is True
        assert parser.parse_args([name]).skip_bad_records is False
