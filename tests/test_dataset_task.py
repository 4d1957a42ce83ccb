"""The prompt-file task (``task.kind: dataset``) reads every container the preference readers read
(JSONL, JSON, CSV, Parquet, gzip'd, folders), implicit-prompt pairs and raw HH-RLHF transcripts, and
splits HH by the fixed split so the audit's prompts are the validation part of ``label.file.split``."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import pytest

from rewardlab.data.hh import hh_record, hh_split
from rewardlab.feedback.file import FileLabels, FileSourceConfig
from rewardlab.tasks.dataset import DatasetTask, DatasetTaskConfig
from rewardlab.utils import RewardlabError

ROOT = Path(__file__).resolve().parents[1]
HH_RAW = ROOT / "tests" / "data" / "hh-rlhf-raw"

RECORDS = [{"prompt": f"question {i}?", "chosen": f"answer {i}", "rejected": "no idea"} for i in range(10)]


def task(path: Path, **kw: object) -> DatasetTask:
    return DatasetTask(DatasetTaskConfig(path=str(path), **kw))  # type: ignore[arg-type]


def prompts_and_docs(t: DatasetTask) -> tuple[list[str], list[str]]:
    return t._splits["train"] + t._splits["eval"], [r for _, r, _ in t._records]


@pytest.mark.parametrize("container", ["jsonl", "jsonl.gz", "json", "json.gz", "csv", "csv.gz", "parquet"])
def test_every_container_gives_the_same_prompts(tmp_path, container):
    path = tmp_path / f"prefs.{container}"
    opener = gzip.open if container.endswith(".gz") else open
    if container.startswith("jsonl"):
        with opener(path, "wt", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in RECORDS)
    elif container.startswith("json"):
        with opener(path, "wt", encoding="utf-8") as f:
            json.dump(RECORDS, f)
    elif container.startswith("csv"):
        with opener(path, "wt", encoding="utf-8", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["prompt", "chosen", "rejected"])
            w.writeheader()
            w.writerows(RECORDS)
    else:
        pq = pytest.importorskip("pyarrow.parquet")
        import pyarrow as pa

        pq.write_table(pa.Table.from_pylist(RECORDS), path)
    t = task(path)
    prompts, docs = prompts_and_docs(t)
    assert prompts == [r["prompt"] for r in RECORDS]
    assert docs == [r["chosen"] for r in RECORDS]
    assert t._splits["eval"] == ["question 9?"]  # the last 10% in file order


def test_csv_cells_with_chat_messages_are_conversations(tmp_path):
    path = tmp_path / "chat.csv"
    msgs = [{"role": "user", "content": "Hi there"}]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["prompt", "chosen"])
        w.writeheader()
        w.writerow({"prompt": json.dumps(msgs), "chosen": "Hello"})
        w.writerow({"prompt": '[{"role": "user"', "chosen": "x"})
    with pytest.raises(RewardlabError, match=r"chat\.csv:3: field 'prompt': looks like a JSON list"):
        _ = task(path)._records
    t = task(path, skip_bad_records=True)
    assert t._records[0][:2] == ("user: Hi there", "Hello") and len(t.skipped) == 1


def test_implicit_prompt_records_use_the_shared_prefix(tmp_path):
    path = tmp_path / "implicit.jsonl"
    rows = [
        {"chosen": f"The sum of {i} and 2 is {i + 2}", "rejected": f"The sum of {i} and 2 is 7"}
        for i in range(3)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    t = task(path)
    assert [p for p, _, _ in t._records] == [f"The sum of {i} and 2 is" for i in range(3)]
    assert [r for _, r, _ in t._records] == [f" {i + 2}" for i in range(3)]


def test_missing_prompt_names_file_line_and_field(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        json.dumps({"prompt": "ok", "chosen": "a"}) + "\n" + json.dumps({"text": "no prompt"}) + "\n"
    )
    with pytest.raises(RewardlabError, match=r"bad\.jsonl:2: field 'prompt': missing"):
        _ = task(path)._records
    with pytest.raises(RewardlabError, match=r"bad\.jsonl:1: field 'prompt': expected a string"):
        path.write_text(json.dumps({"prompt": 3}) + "\n")
        _ = task(path)._records


def test_raw_hh_folder_with_the_fixed_split_matches_the_label_files_split():
    t = task(HH_RAW, split="hh", skip_bad_records=True)
    assert (
        len(t._records) == 25
        and len(t.skipped) == 3
        and all("differ before their final reply" in s or "field" in s for s in t.skipped)
    )
    train, held = set(t._splits["train"]), set(t._splits["eval"])
    assert train and held and not train & held
    source = FileLabels(FileSourceConfig(path=str(HH_RAW), split="train", skip_bad_records=True), t, "hh")
    # every pair the reward model trains on has a train prompt of the task; every held-out pair an eval one
    assert {t.split_of(c.prompt) for c in source.comparisons()} == {"train"}
    assert {t.split_of(c.prompt) for c in source.held_out() or []} == {"eval"}
    # the reference response is the chosen final reply, the prompt the shared dialogue
    with gzip.open(next(HH_RAW.glob("harmless-base/*.gz")), "rt") as f:
        first = json.loads(f.readline())
    rec = hh_record(first["chosen"], first["rejected"])
    prompt = "\n".join(f"{m['role']}: {m['content']}" for m in rec["prompt"])
    row = next(r for r in t._records if r[0] == prompt)
    assert row[1] == "assistant: " + rec["chosen"][0]["content"] and row[2] == hh_split(rec["prompt"])


def test_hh_split_needs_both_parts(tmp_path):
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps({"prompt": "only one", "chosen": "a"}) + "\n")
    with pytest.raises(RewardlabError, match="no prompt falls in HH's"):
        _ = task(path, split="hh")._splits


@pytest.mark.slow
def test_full_hh_test_splits_read_as_prompts():
    data = ROOT.parent / "shared" / "data" / "hh-rlhf"
    if not data.is_dir():
        pytest.skip("../shared/data/hh-rlhf is not here")
    t = task(data, split="hh", skip_bad_records=True)
    assert len(t._records) == 8533 and len(t.skipped) == 19
    assert len(t._splits["train"]) > 6000 and len(t._splits["eval"]) > 800
