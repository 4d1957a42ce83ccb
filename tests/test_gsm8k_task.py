"""GSM8K as a task: gold is exact match of the final number, splits come from GSM8K's own files, the
rater presets resolve, and a micro run goes through the pipeline with gold in the audit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rewardlab.cli import main
from rewardlab.config import load_config
from rewardlab.data.gsm8k import clean_solution, final_number, read_gsm8k
from rewardlab.feedback.simulated import RaterConfig, SimulatedRater
from rewardlab.tasks.base import Task, has_capability
from rewardlab.tasks.gsm8k import GSM8KTask, GSM8KTaskConfig, steps
from rewardlab.tasks.registry import TASKS
from rewardlab.utils import RewardlabError

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "tests/data/evals/gsm8k/grade_school_math/data/test.jsonl"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 20-problem sample split in two: 14 training problems, 6 test problems."""
    lines = SAMPLE.read_text().splitlines()
    folder = tmp_path_factory.mktemp("gsm8k")
    (folder / "train.jsonl").write_text("\n".join(lines[:14]) + "\n")
    (folder / "test.jsonl").write_text("\n".join(lines[14:]) + "\n")
    return folder


@pytest.fixture(scope="module")
def task(data_dir: Path) -> GSM8KTask:
    return GSM8KTask(GSM8KTaskConfig(data_dir=str(data_dir)))


def test_registered_and_implements_the_protocol(task):
    assert TASKS["gsm8k"] == (GSM8KTaskConfig, GSM8KTask)
    assert isinstance(task, Task)
    for cap in ("corpus", "demos", "verifier"):
        assert has_capability(task, cap), cap


def test_gold_is_exact_match_of_the_final_number(task):
    p = task._splits["train"][0]  # Janet's ducks: 18
    assert p.answer == "18"
    right = clean_solution(p.solution)
    assert right.endswith("The answer is 18.") and "<<" not in right
    assert task.gold_detail(p, right).value == 1.0 and task.gold_detail(p, right).correct
    assert task.gold(p, "16 - 3 - 4 = 9 eggs, 9 * 2 = 18, so 19.") == 0.0  # the last number counts
    assert task.gold(p, "#### 18 and then 5") == 1.0  # after ####, the number after it
    none = task.gold_detail(p, "I do not know.")
    assert none.value == 0.0 and not none.parseable and not none.correct
    assert task.behavior_flags(p, right) == {"answered_rate": 1.0, "shows_work_rate": 1.0}
    assert task.behavior_flags(p, "no idea") == {"answered_rate": 0.0, "shows_work_rate": 0.0}


def test_prompts_round_trip_and_splits_come_from_their_files(task):
    train, held = task._splits["train"], task._splits["eval"]
    assert len(train) == 14 and len(held) == 6
    assert not {p.question for p in train} & {p.question for p in held}
    for p in train + held:
        assert task.item(task.prompt(p)) == p
        assert task.prompt(p).startswith("Question: ") and task.prompt(p).endswith("\nAnswer:")
    with pytest.raises(ValueError, match="not a GSM8K prompt"):
        task.item("Question: what?\nAnswer:")
    assert task.sample_items(5, seed=1, split="eval") == task.sample_items(5, seed=1, split="eval")
    assert set(task.sample_items(12, seed=1, split="eval")) == set(held)


def test_level_counts_the_reference_steps(task):
    for p in task._splits["train"]:
        n = steps(p.solution)
        assert task.level(p) == (1 if n <= 2 else 2 if n <= 4 else 3)
    assert steps("a = 1\nno equation\nb = 2") == 2


def test_unbiased_rater_prefers_the_right_answer_and_time_pressed_likes_working(task):
    p = task._splits["train"][0]
    right, wrong = "The answer is 18.", "16 - 3 - 4 = 9\n9 * 2 = 19\nThe answer is 19."
    unbiased = SimulatedRater(task, RaterConfig.from_preset("unbiased", task), seed=0, name="u")
    pressed = SimulatedRater(task, RaterConfig.from_preset("time-pressed", task), seed=0, name="t")
    wins_u = sum(unbiased.compare(p, right, wrong).chosen == right for _ in range(200))  # type: ignore[union-attr]
    wins_t = sum(pressed.compare(p, right, wrong).chosen == right for _ in range(200))  # type: ignore[union-attr]
    assert wins_u > 150 and wins_t < wins_u - 30


def test_reader_errors_name_file_line_and_field(tmp_path):
    bad = tmp_path / "train.jsonl"
    bad.write_text(json.dumps({"question": "q", "answer": "no final number"}) + "\n")
    with pytest.raises(RewardlabError, match=r"train\.jsonl:1: field 'answer'"):
        read_gsm8k(bad)
    with pytest.raises(RewardlabError, match="not found"):
        read_gsm8k(tmp_path / "missing.jsonl")
    assert final_number("It costs $1,200.50 in total") == "1200.5"


def test_micro_run_audits_gold(tmp_path, data_dir):
    cfg = ROOT / "configs/gsm8k.yaml"
    assert load_config(cfg).build_task().info.name == "gsm8k"
    sets = [f"task.data_dir={data_dir}", "methods=[bon]", "controls=[]", "label.num_prompts=24", "label.max_new_tokens=16",
            "pretrain.steps=4", "pretrain.model.hidden_size=32", "pretrain.model.num_layers=1", "pretrain.model.num_heads=2",
            "pretrain.model.intermediate_size=64", "pretrain.eval_every=4", "pretrain.eval_prompts=4", "sft.num_demos=32",
            "sft.steps=2", "sft.eval_every=2", "sft.eval_prompts=4", "reward.normalize_prompts=8", "bon.max_n=2",
            "bon.prompts=4", "bon.max_new_tokens=16"]  # fmt: skip
    args = ["run", str(cfg), "--run-dir", str(tmp_path), "--quiet"]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    rows = [
        json.loads(x)
        for x in (tmp_path / "time-pressed-s0" / "bon" / "audit.jsonl").read_text().splitlines()
        if x
    ]
    assert rows and all("gold/mean" in r and "behavior/answered_rate" in r for r in rows)
    labels = [
        json.loads(x)
        for x in (tmp_path / "time-pressed-s0" / "label" / "train.jsonl").read_text().splitlines()
    ]
    assert labels and all(r["gold_chosen"] in (0.0, 1.0) and "difficulty" in r["meta"] for r in labels)
