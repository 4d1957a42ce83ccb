"""Your own preference data without gold: the HH-RLHF converter, ``label.source: file``, the dataset task,
and the pipeline end to end on a 100-pair HH-RLHF sample (tests/data/hh-rlhf-sample.jsonl, MIT, Anthropic;
see tests/data/hh-rlhf-LICENSE). Nothing here reads /work/shared."""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from collections import Counter
from pathlib import Path

import pytest

from rewardlab.cli import main
from rewardlab.config import load_config
from rewardlab.feedback.factory import make_source
from rewardlab.feedback.file import FileLabels, FileSourceConfig
from rewardlab.tasks.dataset import DatasetTask, DatasetTaskConfig
from rewardlab.utils import RewardlabError

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "tests/data/hh-rlhf-sample.jsonl"
CONFIG = ROOT / "configs/hh-file.yaml"


def _load_converter():
    spec = importlib.util.spec_from_file_location("hh_rlhf_to_trl", ROOT / "scripts/hh_rlhf_to_trl.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


conv = _load_converter()


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------- the converter
def test_single_turn_prompt_is_the_shared_prefix():
    rec = conv.convert_pair(
        "\n\nHuman: How do I boil an egg?\n\nAssistant: Put it in boiling water for 8 minutes.",
        "\n\nHuman: How do I boil an egg?\n\nAssistant: Why?",
    )
    assert rec == {
        "prompt": "Human: How do I boil an egg?\n\nAssistant:",
        "chosen": "Put it in boiling water for 8 minutes.",
        "rejected": "Why?",
    }


def test_multi_turn_keeps_the_dialogue_and_takes_the_final_replies():
    ctx = "\n\nHuman: Hi\n\nAssistant: Hello! How can I help?\n\nHuman: Name a fruit.\n\nAssistant: Apple.\n\nHuman: Another?"
    rec = conv.convert_pair(ctx + "\n\nAssistant: Banana.", ctx + "\n\nAssistant:  No.  ")
    assert rec["prompt"] == (
        "Human: Hi\n\nAssistant: Hello! How can I help?\n\nHuman: Name a fruit.\n\nAssistant: Apple.\n\n"
        "Human: Another?\n\nAssistant:"
    )
    assert (rec["chosen"], rec["rejected"]) == ("Banana.", "No.")
    # a reply may hold blank lines and words like "Humans:" without starting a turn
    rec = conv.convert_pair(ctx + "\n\nAssistant: A list:\n\nHumans: like pears", ctx + "\n\nAssistant: x")
    assert rec["chosen"] == "A list:\n\nHumans: like pears"
    msgs = conv.convert_pair(ctx + "\n\nAssistant: Banana.", ctx + "\n\nAssistant: No.", fmt="messages")
    assert [m["role"] for m in msgs["prompt"]] == ["user", "assistant", "user", "assistant", "user"]
    assert msgs["chosen"] == [{"role": "assistant", "content": "Banana."}]


@pytest.mark.parametrize(
    ("chosen", "rejected", "problem"),
    [
        ("\n\nHuman: a\n\nAssistant: b", "\n\nHuman: a\n\nAssistant: b\n\nHuman: c", "rejected does not end"),
        ("\n\nHuman: a", "\n\nHuman: a\n\nAssistant: b", "chosen does not end"),
        ("intro\n\nHuman: a\n\nAssistant: b", "\n\nHuman: a\n\nAssistant: c", "before the first 'Human:'"),
        ("\n\nAssistant: a\n\nHuman: b\n\nAssistant: c", "\n\nHuman: b\n\nAssistant: d", "first turn"),
        ("\n\nHuman: a\n\nAssistant: b", "\n\nHuman: z\n\nAssistant: c", "differ before their final reply"),
    ],
)
def test_malformed_transcripts_are_errors_naming_the_line(chosen, rejected, problem):
    good = {"chosen": "\n\nHuman: q\n\nAssistant: yes", "rejected": "\n\nHuman: q\n\nAssistant: no"}
    lines = [json.dumps(good), "", json.dumps({"chosen": chosen, "rejected": rejected})]
    with pytest.raises(conv.MalformedTranscript, match=rf"^hh/test:3: .*{problem}"):
        list(conv.convert_lines(lines, "hh/test"))
    counts: Counter[str] = Counter()
    kept = list(conv.convert_lines(lines, "hh/test", skip_malformed=True, counts=counts))
    assert len(kept) == 1 and counts["malformed"] == 1
    assert kept[0]["meta"] == {"source": "hh/test", "line": 1}


def test_filters_and_cli(tmp_path, capsys):
    rows = [
        {"chosen": "\n\nHuman: q1\n\nAssistant: same", "rejected": "\n\nHuman: q1\n\nAssistant: same"},
        {
            "chosen": "\n\nHuman: q2\n\nAssistant: " + "long " * 50,
            "rejected": "\n\nHuman: q2\n\nAssistant: b",
        },
        {"chosen": "\n\nHuman: q3\n\nAssistant: good", "rejected": "\n\nHuman: q3\n\nAssistant: bad"},
        {"chosen": "\n\nHuman: q4\n\nAssistant: fine", "rejected": "\n\nHuman: q4\n\nAssistant: meh"},
    ]
    src = _jsonl(tmp_path / "test.jsonl", rows)
    out = tmp_path / "out" / "trl.jsonl"
    assert conv.main([str(src), "--max-chars", "100", "--limit", "1", "--out", str(out)]) == 0
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert got == [{"prompt": "Human: q3\n\nAssistant:", "chosen": "good", "rejected": "bad",
                    "meta": {"source": "test.jsonl", "line": 3}}]  # fmt: skip
    assert "1 identical" in capsys.readouterr().err
    bad = _jsonl(tmp_path / "bad.jsonl", [{"chosen": "no turns", "rejected": "x"}])
    assert conv.main([str(bad), "--out", str(out)]) == 1
    assert "bad.jsonl:1:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        conv.main(["--help"])
    assert "--max-chars" in capsys.readouterr().out


def test_sample_is_converted_trl_data():
    rows = [json.loads(x) for x in SAMPLE.read_text(encoding="utf-8").splitlines()]
    assert 0 < len(rows) <= 100
    for r in rows:
        assert r["prompt"].startswith("Human: ") and r["prompt"].endswith("\n\nAssistant:")
        assert r["chosen"] and r["rejected"] and r["chosen"] != r["rejected"]
    assert (ROOT / "tests/data/hh-rlhf-LICENSE").read_text().startswith("MIT License")


# ------------------------------------------------------------------------ label.source: file
def test_file_labels_with_a_column_mapping(tmp_path):
    path = _jsonl(tmp_path / "prefs.jsonl", [
        {"question": "Human: hi\n\nAssistant:", "good": "Hello!", "bad": "Go away.", "id": 7, "margin": 2.0},
        {"question": "Human: bye\n\nAssistant:", "good": "Bye!", "bad": "...", "meta": {"split": "x"}},
    ])  # fmt: skip
    task = DatasetTask(DatasetTaskConfig(path=str(path), prompt_field="question", response_field="good"))
    cfg = FileSourceConfig(
        path=str(path), columns={"question": "prompt", "good": "chosen", "bad": "rejected"}
    )
    source = make_source("file", task=task, seed=0, name="mine", file=cfg)
    assert isinstance(source, FileLabels)
    a, b = source.comparisons()
    assert (a.prompt, a.chosen, a.rejected, a.rater, a.margin) == ("Human: hi\n\nAssistant:", "Hello!", "Go away.",
                                                                   "mine", 2.0)  # fmt: skip
    assert a.meta == {"id": 7} and b.meta == {"split": "x"}
    assert a.gold_chosen is None and a.gold_rejected is None  # the task has no gold
    assert len(FileLabels(cfg.model_copy(update={"limit": 1}), task, "mine").comparisons()) == 1


def test_file_labels_missing_field_names_file_line_and_field(tmp_path):
    path = _jsonl(tmp_path / "prefs.jsonl", [
        {"question": "q1", "good": "a", "bad": "b"},
        {"question": "q2", "good": "a"},
    ])  # fmt: skip
    task = DatasetTask(DatasetTaskConfig(path=str(path), prompt_field="question"))
    cfg = FileSourceConfig(
        path=str(path), columns={"question": "prompt", "good": "chosen", "bad": "rejected"}
    )
    with pytest.raises(RewardlabError, match=r"prefs\.jsonl:2: .*'rejected'"):
        FileLabels(cfg, task, "mine").comparisons()
    with pytest.raises(RewardlabError, match=r"label\.file\.path: required"):
        make_source("file", task=task, seed=0, name="mine", file=FileSourceConfig())


# --------------------------------------------------------------------------------- dataset task
def test_dataset_task_splits_and_has_no_gold():
    cfg = load_config(CONFIG)
    task = cfg.build_task()
    assert isinstance(task, DatasetTask) and task.info.has_gold is False
    train, evals = set(task.sample_items(500, seed=0)), set(task.sample_items(500, seed=0, split="eval"))
    assert train and evals and not train & evals
    n_unique = len({json.loads(x)["prompt"] for x in SAMPLE.read_text().splitlines()})
    assert len(train) + len(evals) == n_unique and len(evals) == int(n_unique * 0.1)
    p = next(iter(evals))
    assert task.item(task.prompt(p)) == p
    q = next(iter(train))
    assert (task.split_of(p), task.split_of("  " + q + "\n"), task.split_of("not in the file")) == (
        "eval",
        "train",
        None,
    )
    assert task.gold(p, "anything") is None and task.gold_detail(p, "anything") is None
    assert {"refusal_rate", "empty_rate"} <= set(task.info.behaviors)
    assert task.behavior_flags(p, "I'm sorry, I can't help with that.")["refusal_rate"] == 1.0
    assert task.behavior_flags(p, "Sure: boil it.") == {"refusal_rate": 0.0, "empty_rate": 0.0}
    assert task.behavior_flags(p, "")["empty_rate"] == 1.0
    # corpus and demos are the chosen replies of training prompts only
    demo = task.demos({})
    assert demo(q, random.Random(0)) and demo(p, random.Random(0)) == ""


# ------------------------------------------------------------------------------- end to end (CLI)
TINY = [
    "pretrain.model={hidden_size: 32, num_layers: 1, num_heads: 2, intermediate_size: 64, max_position_embeddings: 256}",
    "pretrain.steps=6", "pretrain.batch_size=8", "pretrain.eval_every=6", "pretrain.eval_prompts=4",
    "sft.num_demos=64", "sft.steps=4", "sft.batch_size=8", "sft.eval_every=4", "sft.eval_prompts=4",
    "label.max_new_tokens=8",
    "reward.epochs=1", "reward.batch_size=16", "reward.normalize_prompts=32",
    "dpo.steps=4", "dpo.batch_size=8", "dpo.eval_every=2", "dpo.eval_prompts=4", "dpo.eval_pairs=16",
    "dpo.max_new_tokens=8", "dpo.samples_to_save=4",
]  # fmt: skip


def test_cli_end_to_end_without_gold(tmp_path):
    run_dir = tmp_path / "hh"
    args = [
        "run",
        str(CONFIG),
        "--run-dir",
        str(run_dir),
        "--quiet",
        "--stages",
        "pretrain,sft,label,reward,dpo",
    ]
    for s in [f"task.path={SAMPLE}", f"label.file.path={SAMPLE}", *TINY]:
        args += ["--set", s]
    assert main(args) == 0
    arm = run_dir / "hh-s0"
    n_train = len((arm / "label" / "train.jsonl").read_text().splitlines())
    n_eval = len((arm / "label" / "eval.jsonl").read_text().splitlines())
    assert n_train + n_eval == len(SAMPLE.read_text().splitlines())
    assert json.loads((arm / "arm.json").read_text())["source"] == "file"
    reward = json.loads((arm / "reward" / "summary.json").read_text())
    assert 0 <= reward["eval/accuracy_rater"] <= 1 and "eval/accuracy_gold" not in reward
    rows = [json.loads(x) for x in (arm / "dpo" / "audit.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 2, 4]
    for r in rows:
        assert {"proxy/mean", "kl/k1", "behavior/length", "behavior/refusal_rate"} <= set(r)
        assert not any(k.startswith("gold/") for k in r)
    assert json.loads((run_dir / "task.json").read_text())["has_gold"] is False
