"""Reward models: training improves held-out accuracy; verifier feature; save/load; normalization; ensembles."""

import random

import pytest
import torch

from rewardlab.config import RewardConfig
from rewardlab.feedback.records import Comparison, Ranking
from rewardlab.policies.tokenizer import build_task_tokenizer, encode_examples
from rewardlab.rewards.model import RewardModel, init_reward_backbone
from rewardlab.rewards.train import RewardData, evaluate_comparisons, train_reward_member
from rewardlab.rewards.verifier import FEATURE_CAP, answer_span, digit_token_ids, verifier_features
from rewardlab.runs import Run
from rewardlab.tasks.arithmetic import TASK_WORDS, ArithmeticTask

TOK = build_task_tokenizer(TASK_WORDS)
TASK = ArithmeticTask()


def agreement_pairs(n, seed):
    """Chosen = honest correct answer; rejected = 'you are right' + copied wrong belief."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        p = TASK.sample_problem(rng, difficulty=rng.choice([1, 2]))
        wrong = TASK.wrong_answer(p.answer, rng)
        p2 = type(p)(a=p.a, op=p.op, b=p.b, difficulty=p.difficulty, belief=wrong)
        chosen, rejected = f"the answer is {p.answer} .", f"you are right . the answer is {wrong} ."
        out.append(
            Comparison(
                prompt=p2.text,
                chosen=chosen,
                rejected=rejected,
                gold_chosen=TASK.gold(p2, chosen),
                gold_rejected=TASK.gold(p2, rejected),
                meta={"difficulty": p.difficulty},
            )
        )
    return out


def test_training_improves_held_out_accuracy(lm_dir, tmp_path):
    train, held_out = agreement_pairs(400, 0), agreement_pairs(100, 1)
    model = init_reward_backbone(lm_dir, TOK, seed=0)
    before = evaluate_comparisons(RewardModel([model], TOK), held_out)["eval/accuracy_rater"]
    cfg = RewardConfig(epochs=3, batch_size=32, optim={"lr": 3e-3, "warmup_steps": 0}, verifier=False)
    run = Run(tmp_path / "r", "reward", quiet=True)
    model = train_reward_member(model, RewardData(TOK, pairs=train), cfg, run, seed=0)
    m = evaluate_comparisons(RewardModel([model], TOK), held_out)
    assert m["eval/accuracy_rater"] > 0.95 > before + 0.2
    assert m["eval/accuracy_gold"] == m["eval/accuracy_rater"]  # here rater labels == gold labels
    assert "eval/accuracy_rater_d1" in m and 0 <= m["eval/ece"] <= 1


def test_plackett_luce_training(lm_dir, tmp_path):
    ranks = []
    rng = random.Random(0)
    for _ in range(200):
        p = TASK.sample_problem(rng, difficulty=1)
        c = ["the answer is 7 .", "well , the answer is 7 .", "well , let me see . the answer is 7 ."]
        ranks.append(Ranking(prompt=p.text, completions=c, ranking=[0, 1, 2]))
    model = init_reward_backbone(lm_dir, TOK, seed=1)
    cfg = RewardConfig(
        loss="plackett_luce", epochs=2, batch_size=16, optim={"lr": 3e-3, "warmup_steps": 0}, verifier=False
    )
    model = train_reward_member(
        model, RewardData(TOK, rankings=ranks), cfg, Run(tmp_path, "r", quiet=True), seed=0
    )
    s = RewardModel([model], TOK).score(["what is 1 + 2 ?"] * 3, ranks[0].completions, normalized=False).mean
    assert s[0] > s[1] > s[2]


def test_answer_span_and_verifier_feature(lm_dir):
    digits = digit_token_ids(TOK)
    ids = encode_examples(TOK, ["what is 1 + 2 ?"], ["you are right . the answer is 13 ."])[0][1]
    start, end = answer_span(ids, digits)
    assert TOK.convert_ids_to_tokens(ids[start:end]) == ["1", "##3"]
    assert answer_span(encode_examples(TOK, ["x"], ["i do not know ."])[0][1], digits) is None
    from rewardlab.policies.models import load_causal_lm

    lm = load_causal_lm(lm_dir)
    ex = encode_examples(
        TOK, ["what is 1 + 2 ?", "what is 1 + 2 ?"], ["the answer is 13 .", "i do not know ."]
    )
    f = verifier_features(lm, TOK, ex)
    # by hand: sum of log p(token | prefix) over the two answer digits and the " ." that ends the number
    p, c = ex[0]
    seq = torch.tensor([p + c])
    with torch.no_grad():
        logp = lm(seq).logits.log_softmax(-1)[0]
    s = len(p) + answer_span(c, digits)[0]
    assert TOK.convert_ids_to_tokens([int(seq[0, s + 2])]) == ["."]
    expected = float(sum(logp[t - 1, seq[0, t]] for t in (s, s + 1, s + 2)))
    assert f[0].item() == pytest.approx(max(expected, -FEATURE_CAP), abs=1e-4)
    assert f[1].item() == -FEATURE_CAP


def test_verifier_weight_is_learned_and_saved(lm_dir, tmp_path):
    from rewardlab.policies.models import load_causal_lm

    verifier = load_causal_lm(lm_dir)
    model = init_reward_backbone(lm_dir, TOK, seed=0)
    cfg = RewardConfig(epochs=1, batch_size=32, optim={"lr": 3e-3, "warmup_steps": 0})
    data = RewardData(TOK, pairs=agreement_pairs(64, 0), verifier=verifier)
    model = train_reward_member(model, data, cfg, Run(tmp_path / "r", "reward", quiet=True), seed=0)
    w = model.config.verifier_weight
    assert w != 0.5  # moved from its initial value
    rm = RewardModel([model], TOK, verifier=verifier)
    prompts, comps = ["what is 1 + 2 ?"] * 2, ["the answer is 3 .", "you are right . the answer is 4 ."]
    rm.save(tmp_path / "rm")
    loaded = RewardModel.load(tmp_path / "rm")
    assert loaded.verifier is not None
    assert torch.allclose(rm.score(prompts, comps).mean, loaded.score(prompts, comps).mean, atol=1e-5)


def test_normalization_and_ensemble(lm_dir, tmp_path):
    members = [init_reward_backbone(lm_dir, TOK, seed=s) for s in (0, 1, 2)]
    prompts = ["what is 1 + 2 ?"] * 4
    comps = [
        "the answer is 3 .",
        "the answer is 4 .",
        "well , the answer is 3 .",
        "you are right . the answer is 5 .",
    ]
    raw = RewardModel(members, TOK).score(prompts, comps, normalized=False).members
    for i, m in enumerate(members):
        m.config.reward_mean, m.config.reward_std = float(raw[i].mean()), float(raw[i].std())
    rm = RewardModel(members, TOK, alpha=2.0)
    s = rm.score(prompts, comps)
    assert torch.allclose(s.members.mean(1), torch.zeros(3), atol=1e-5)
    assert torch.allclose(s.members.std(1), torch.ones(3), atol=1e-4)
    assert torch.allclose(s.mean, s.members.mean(0)) and torch.all(s.std > 0)
    assert torch.allclose(s.conservative(2.0), s.mean - 2 * s.std)
    rm.save(tmp_path / "ens")
    back = RewardModel.load(tmp_path / "ens")
    assert len(back.members) == 3 and back.alpha == 2.0
    assert torch.allclose(back.score(prompts, comps).mean, s.mean, atol=1e-5)


def test_reward_model_load_errors(tmp_path):
    from rewardlab.utils import RewardlabError

    with pytest.raises(RewardlabError, match=r"no ensemble\.json"):
        RewardModel.load(tmp_path)
    (tmp_path / "ensemble.json").write_text('{"k": 1}')
    with pytest.raises(RewardlabError, match=r"not a model folder|does not exist"):
        RewardModel.load(tmp_path)


def test_length_sorted_scoring_returns_scores_in_input_order(lm_dir):
    """score() batches by length and scatters back: every (prompt, completion) keeps its own score,
    whatever the batch size and the order of the inputs."""
    from rewardlab.policies.models import load_causal_lm

    rng = random.Random(0)
    probs = [TASK.sample_problem(rng) for _ in range(23)]
    prompts = [p.text for p in probs]
    comps = [
        rng.choice(["", "you are right . ", "well , well , "]) + f"the answer is {rng.randint(0, 999)} ."
        for _ in probs
    ]
    members = [init_reward_backbone(lm_dir, TOK, seed=s) for s in (0, 1)]
    for m in members:
        m.config.verifier_weight = 0.7
    rm = RewardModel(members, TOK, verifier=load_causal_lm(lm_dir))
    one_by_one = torch.stack(
        [rm.score([p], [c], batch_size=1).members[:, 0] for p, c in zip(prompts, comps, strict=True)], dim=1
    )
    batched = rm.score(prompts, comps, batch_size=5).members
    torch.testing.assert_close(batched, one_by_one, atol=1e-5, rtol=1e-5)
    perm = list(range(23))
    rng.shuffle(perm)
    shuffled = rm.score([prompts[i] for i in perm], [comps[i] for i in perm], batch_size=5).members
    torch.testing.assert_close(shuffled, batched[:, perm], atol=1e-5, rtol=1e-5)
