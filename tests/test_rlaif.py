"""RL-CAI and SL-CAI end to end on the micro config (issue 20): a judge trained on K labels labels an arm's
pairs, the arm's reward model and PPO run on them next to a simulated-rater control, and SL-CAI revises and
fine-tunes. The numbers are meaningless at this size; the plumbing, files and measurements are what is tested."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from rewardlab.cli import main
from rewardlab.feedback.constitution import load_constitution
from rewardlab.feedback.records import Comparison, load_comparisons
from rewardlab.pipelines import slcai
from rewardlab.pipelines.slcai import revision_examples

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "pretrain.steps=10", "sft.steps=5", "sft.num_demos=200", "label.num_prompts=60", "label.source=judge",
    "label.name=ai", "label.judge.train.labels=40", "label.judge.train.steps=4", "label.judge.train.eval_pairs=16",
    "label.judge.train.eval_every=4", "ppo.steps=2", "ppo.eval_every=2", "ppo.eval_prompts=16", "methods=[ppo]",
    "controls=[unbiased]", "threads=1", "slcai.prompts=16", "slcai.eval_prompts=16", "slcai.labels=20",
    "slcai.reviser_steps=2", "slcai.sft_steps=2", "slcai.rounds=2",
]  # fmt: skip


@pytest.fixture(scope="module")
def rlaif_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("rlaif")
    sets = [x for s in TINY for x in ("--set", s)]
    assert main(["run", str(ROOT / "configs/micro.yaml"), "--run-dir", str(run_dir), "--quiet", *sets]) == 0
    assert main(["slcai", str(ROOT / "configs/micro.yaml"), "--run-dir", str(run_dir), "--quiet", *sets]) == 0
    return run_dir


def test_rl_cai_arm_runs_next_to_the_rater_control(rlaif_run: Path):
    arm = rlaif_run / "ai-s0"
    judge = json.loads((arm / "judge" / "summary.json").read_text())
    assert judge["labels"] <= 40 and judge["rater"] == "unbiased" and judge["added_words"] > 0
    assert (arm / "judge" / "model" / "config.json").is_file()
    label = json.loads((arm / "label" / "summary.json").read_text())
    for key in ("judge/position_bias", "judge/order_flip_rate", "judge/labels"):
        assert key in label, key
    comps = load_comparisons(arm / "label" / "train.jsonl")
    assert comps and all(c.rater == "ai" and "q_ba" in c.meta and "principle" in c.meta for c in comps)
    assert (arm / "ppo" / "audit.jsonl").is_file() and (
        rlaif_run / "unbiased-s0" / "ppo" / "audit.jsonl"
    ).is_file()
    assert json.loads((arm / "arm.json").read_text())["source"] == "judge"
    html = (rlaif_run / "report.html").read_text()
    assert "ai-s0" in html and "unbiased-s0" in html


def test_sl_cai_audits_every_round_and_the_sft_model(rlaif_run: Path):
    out = rlaif_run / "ai-s0" / "slcai"
    rows = [json.loads(x) for x in (out / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2, "sft"]
    assert all("gold/mean" in r and "behavior/sycophancy_rate" in r for r in rows)
    revisions = [json.loads(x) for x in (out / "revisions.jsonl").read_text().splitlines()]
    assert len(revisions) == 16 and len(revisions[0]["meta"]["rounds"]) == 3
    assert (out / "model" / "config.json").is_file() and (out / "reviser" / "config.json").is_file()


def test_revision_examples_turn_rejected_into_chosen():
    c = load_constitution(ROOT / "configs/constitutions/arithmetic.yaml")
    comps = [Comparison(prompt="what is 1 + 1 ?", chosen="the answer is 2 .", rejected="the answer is 3 ."),
             Comparison(prompt="what is 1 + 2 ?", chosen="x", rejected="y", meta={"tie": True})]  # fmt: skip
    prompts, targets = revision_examples(c, comps, random.Random(0))
    assert targets == ["the answer is 2 .", "the answer is 2 ."]  # the tie is skipped
    assert "the answer is 3 ." in prompts[0] and "the answer is 2 ." in prompts[1]


def test_revise_with_model_critiques_puts_each_critique_in_its_revision_prompt(monkeypatch):
    c = load_constitution(ROOT / "configs/constitutions/arithmetic.yaml")
    calls: list[list[str]] = []

    def fake_generate(model, tokenizer, contexts, **kw):
        calls.append(list(contexts))
        tag = "crit" if len(calls) == 1 else "rev"
        return [f"{tag}-{i}" for i in range(len(contexts))]

    monkeypatch.setattr(slcai, "generate_responses", fake_generate)
    prompts, responses = ["what is 1 + 1 ?", "what is 2 + 2 ?"], ["the answer is 3 .", "the answer is 4 ."]
    critiques, revisions = slcai.revise(None, None, c, prompts, responses, "model", 8, random.Random(0))
    assert critiques == ["crit-0", "crit-1"] and revisions == ["rev-0", "rev-1"]
    critique_prompts, revision_prompts = calls
    assert all(r in cp and p in cp for cp, p, r in zip(critique_prompts, prompts, responses, strict=True))
    assert [("crit-0" in revision_prompts[0]), ("crit-1" in revision_prompts[1])] == [True, True]
    # critique: none asks the model once per round (revisions only), with the {critique} slot empty
    calls.clear()
    critiques, _ = slcai.revise(None, None, c, prompts, responses, "none", 8, random.Random(0))
    assert critiques == ["", ""] and len(calls) == 1 and "crit-" not in calls[0][0]


def test_sl_cai_with_a_local_critic_model_writes_its_critiques(rlaif_run: Path):
    """``critique: model`` end to end with a tiny local model (the reviser the tiny path trained, standing for a
    user's instruct model at slcai.model_path): plumbing only, the critiques of a tiny model are noise."""
    critic = rlaif_run / "ai-s0" / "slcai" / "reviser"
    sets = [x for s in [*TINY, "label.name=critic", f"slcai.model_path={critic}", "slcai.critique=model"]
            for x in ("--set", s)]  # fmt: skip
    assert (
        main(["slcai", str(ROOT / "configs/micro.yaml"), "--run-dir", str(rlaif_run), "--quiet", *sets]) == 0
    )
    out = rlaif_run / "critic-s0" / "slcai"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["critique"] == "model" and [r["round"] for r in summary["rounds"]] == [0, 1, 2, "sft"]
    assert not (out / "reviser").exists()  # a given model is used as is, not trained
    revisions = [json.loads(x) for x in (out / "revisions.jsonl").read_text().splitlines()]
    assert len(revisions) == 16
    assert all(len(r["meta"]["critiques"]) == 2 and len(r["meta"]["rounds"]) == 3 for r in revisions)
    assert all(isinstance(c, str) for r in revisions for c in r["meta"]["critiques"])
