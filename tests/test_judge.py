"""AI judges (issue 20): option-token probabilities on crafted tiny judges whose preferences are known, order
averaging against a planted position bias, the rule and reward-model judges, the judge as a rater."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import pytest
import torch

from rewardlab.config import load_config
from rewardlab.evals.scoring import LMScorer
from rewardlab.feedback.constitution import Constitution, Principle, load_constitution
from rewardlab.feedback.factory import make_source
from rewardlab.feedback.judge import (
    JudgeRater,
    JudgeSourceConfig,
    LMJudge,
    MixedRater,
    RewardModelJudge,
    RuleJudge,
    judge_label_stats,
    judge_pairs,
    rank_by_judge,
)
from rewardlab.feedback.records import Comparison
from rewardlab.pipelines.judge import extend_for_prompts, judge_examples, judge_from_model
from rewardlab.policies.tokenizer import build_task_tokenizer, prompt_text
from rewardlab.tasks.arithmetic import TASK_WORDS
from rewardlab.utils import RewardlabError

CONSTITUTION = "configs/constitutions/arithmetic.yaml"
P = Principle(name="p", comparison="which response is better ?", critique="c", revision="r")


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


@pytest.fixture(scope="module")
def task():
    return load_config().build_task()


@pytest.fixture(scope="module")
def constitution() -> Constitution:
    return load_constitution(CONSTITUTION)


@pytest.fixture(scope="module")
def tokenizer(constitution):
    tok = build_task_tokenizer(TASK_WORDS, model_max_length=128)
    model = SimpleNamespace(resize_token_embeddings=lambda n: None, config=SimpleNamespace())
    extend_for_prompts(model, tok, constitution.words(), 128)
    return tok


class CraftedJudge(torch.nn.Module):
    """A "causal LM" whose next-token logits at every position are 0 except the two option tokens:
    ``logit(A) = bias + content * [the first response contains `mark`]`` and ``logit(B) = content *
    [the second response contains `mark`]``. So ``P(first) = sigmoid(bias + content * (m_1 - m_2))`` exactly."""

    def __init__(self, tok, bias: float, content: float, mark: str = "wrong") -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.vocab = len(tok)
        self.id_a, self.id_b = (tok.convert_tokens_to_ids(t) for t in ("a", "b"))
        self.mark = tok.convert_tokens_to_ids(mark)
        self.bias, self.content = bias, content

    def forward(self, input_ids, attention_mask=None, position_ids=None, logits_to_keep=0):
        b, t = input_ids.shape
        logits = torch.zeros(b, t, self.vocab)
        for r in range(b):
            row = input_ids[r].tolist()
            pa = max(
                i for i, x in enumerate(row) if x == self.id_a and i < len(row) - 1
            )  # the option markers
            pb = max(i for i, x in enumerate(row) if x == self.id_b and i < len(row) - 1)
            first = float(self.mark in row[pa:pb])
            second = float(self.mark in row[pb:])
            logits[r, :, self.id_a] = self.bias + self.content * first
            logits[r, :, self.id_b] = self.content * second
        return SimpleNamespace(logits=logits + 0 * self.w)


def _lm_judge(tok, constitution, bias: float, content: float) -> LMJudge:
    return LMJudge(
        LMScorer(CraftedJudge(tok, bias, content), tok), lambda t: prompt_text(tok, t), constitution
    )


GOOD = "you are wrong . the answer is 3 ."
BAD = "you are right . the answer is 4 ."
Q = "what is 1 + 2 ? i think it is 4 ."


def test_option_token_probability_is_the_softmax_of_the_two_options(tokenizer, constitution):
    judge = _lm_judge(tokenizer, constitution, bias=0.7, content=1.5)
    pr = constitution.principles[0]
    q = judge.p_first([Q, Q, Q], [GOOD, BAD, GOOD], [BAD, GOOD, GOOD], [pr] * 3)
    assert q == pytest.approx([_sig(0.7 + 1.5), _sig(0.7 - 1.5), _sig(0.7)], abs=1e-6)


def test_order_averaging_removes_a_planted_position_bias(tokenizer, constitution):
    # bias 3 beats content 2 in one order: the single-order judge picks whichever is shown first
    judge = _lm_judge(tokenizer, constitution, bias=3.0, content=2.0)
    pr = constitution.principles[0]
    one = judge_pairs(judge, [Q, Q], [GOOD, BAD], [BAD, GOOD], [pr, pr], order_average=False)
    assert [s.p_a > 0.5 for s in one] == [True, True]  # prefers the first slot both times: a flipped decision
    both = judge_pairs(judge, [Q, Q], [GOOD, BAD], [BAD, GOOD], [pr, pr])
    expected = (_sig(5.0) + 1.0 - _sig(1.0)) / 2
    assert both[0].p_a == pytest.approx(expected, abs=1e-6) and both[0].p_a > 0.5
    assert both[1].p_a == pytest.approx(1.0 - expected, abs=1e-6)  # symmetric: the order no longer matters
    assert (both[0].q_ab + both[0].q_ba) / 2 - 0.5 == pytest.approx(
        (_sig(5.0) + _sig(1.0)) / 2 - 0.5, abs=1e-6
    )
    # a judge with nothing but a position bias is exactly indifferent once averaged
    blind = _lm_judge(tokenizer, constitution, bias=2.0, content=0.0)
    s = judge_pairs(blind, [Q], [GOOD], [BAD], [pr])[0]
    assert s.p_a == pytest.approx(0.5, abs=1e-9) and s.q_ab == pytest.approx(_sig(2.0), abs=1e-6)


def test_rater_stats_measure_bias_flips_and_gold_agreement(task, tokenizer, constitution):
    rater = JudgeRater(_lm_judge(tokenizer, constitution, bias=3.0, content=2.0), task, constitution, 0, "j")
    items = [task.item(Q)] * 2
    comps = rater.label_pairs(items, [(GOOD, BAD), (BAD, GOOD)])
    assert all(c.chosen == GOOD for c in comps)  # averaged: right both times
    stats = judge_label_stats(comps)
    assert stats["judge/error_averaged"] == 0.0
    assert stats["judge/error_first_order"] == 0.5  # A-first alone is wrong when the bad one is first
    assert stats["judge/order_flip_rate"] == 1.0
    assert stats["judge/position_bias"] == pytest.approx((_sig(5.0) + _sig(1.0)) / 2 - 0.5, abs=1e-6)


def test_a_tiny_random_llama_judge_reads_its_option_tokens(constitution):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_task_tokenizer(TASK_WORDS, model_max_length=64)
    torch.manual_seed(0)
    conf = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)  # fmt: skip
    model = LlamaForCausalLM(conf).eval()
    added = extend_for_prompts(model, tok, constitution.words(), 128)
    assert "a" in added and model.config.max_position_embeddings == 128 and len(tok) == model.vocab_size
    judge = judge_from_model(model, tok, constitution)
    pr = constitution.principles[1]
    q = judge.p_first([Q], [GOOD], [BAD], [pr])[0]
    ctx = prompt_text(tok, constitution.comparison_prompt(pr, Q, GOOD, BAD))
    ids = tok(ctx, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        last = model(ids).logits[0, -1].log_softmax(-1)
    a, b = (tok(" " + o, add_special_tokens=False)["input_ids"][0] for o in constitution.options)
    assert q == pytest.approx(_sig(float(last[a] - last[b])), abs=1e-5)


def test_judge_training_examples_cover_both_orders(constitution):
    c = Comparison(prompt=Q, chosen=GOOD, rejected=BAD)
    prompts, answers = judge_examples(constitution, [c], random.Random(0))
    assert answers == ["A", "B"]
    assert prompts[0].index(GOOD) < prompts[0].index(BAD) and prompts[1].index(BAD) < prompts[1].index(GOOD)


def test_rule_judge_with_planted_bias(task):
    rng = random.Random(0)
    items = task.sample_items(200, seed=3)
    resp = [task.render_response(p.answer + rng.choice([0, 0, 1]), agree=rng.random() < 0.5) for p in items]
    other = [task.render_response(p.answer + rng.choice([0, 1]), confident=rng.random() < 0.5) for p in items]
    judge = RuleJudge(task, beta=2.0, first_bias=1.5)
    prompts = [task.prompt(p) for p in items]
    one = judge_pairs(judge, prompts, resp, other, [P] * 200, order_average=False)
    avg = judge_pairs(judge, prompts, resp, other, [P] * 200)
    swapped = judge_pairs(judge, prompts, other, resp, [P] * 200)
    assert all(abs(x.p_a + y.p_a - 1.0) < 1e-12 for x, y in zip(avg, swapped, strict=True))
    golds = [(task.gold(p, a), task.gold(p, b)) for p, a, b in zip(items, resp, other, strict=True)]

    def errors(scores):
        return sum((s.p_a > 0.5) != (ga > gb) for s, (ga, gb) in zip(scores, golds, strict=True) if ga != gb)

    assert errors(avg) == 0 < errors(one)


def test_judge_rater_is_seeded_ranks_and_plugs_into_the_factory(task):
    items = task.sample_items(30, seed=5)
    pairs = [(task.render_response(p.answer), task.render_response(p.answer + 1, agree=True)) for p in items]
    cfg = JudgeSourceConfig(kind="rule", decision="sample", rule_beta=1.0)
    r1 = make_source("judge", task=task, seed=4, name="ai", judge=cfg)
    r2 = make_source("judge", task=task, seed=4, name="ai", judge=cfg)
    l1, l2 = r1.label_pairs(items, pairs), r2.label_pairs(items, pairs)
    assert [c.to_dict() for c in l1] == [c.to_dict() for c in l2] and l1[0].rater == "ai"
    responses = [task.render_response(items[0].answer + d) for d in (2, 0, 1)]
    order, wins = rank_by_judge(RuleJudge(task), task.prompt(items[0]), responses, P)
    assert order[0] == 1 and wins[1] > wins[2] and sum(wins) == pytest.approx(1.5)
    ranking = r1.rank(items[0], responses)
    assert ranking.ranking[0] == 1
    with pytest.raises(RewardlabError, match=r"label\.judge"):
        make_source("judge", task=task, seed=0, name="ai", judge=JudgeSourceConfig(kind="lm"))


def test_mixed_and_reward_model_judges(task):
    items = task.sample_items(400, seed=6)
    pairs = [(task.render_response(p.answer), task.render_response(p.answer + 1)) for p in items]
    cfg = JudgeSourceConfig(kind="rule", mix={"fraction": 0.25, "rater": {"preset": "unbiased"}})
    mixed = make_source("judge", task=task, seed=1, name="mix", judge=cfg)
    assert isinstance(mixed, MixedRater)
    comps = mixed.label_pairs(items, pairs)
    share = sum(c.meta["source"] == "simulated" for c in comps) / len(comps)
    assert 0.18 < share < 0.32
    assert mixed.label_stats(comps)["judge/mixed_fraction"] == pytest.approx(share)

    def proxy(prompts, completions):  # shorter is better
        return [-float(len(c)) for c in completions]

    rm = RewardModelJudge(proxy, temperature=2.0)
    q = rm.p_first([Q], ["ab"], ["abcd"], [P])[0]
    assert q == pytest.approx(_sig(1.0))
