"""Direct Preference Heads: the two losses on a crafted 2-pair case (hand-computed), training the head leaves the
language model's logits bitwise unchanged, reranking keeps the head's favourite, and the recipes (DPH and IFT)
end to end on the micro config with the report drawing them on the gold-vs-sqrt(KL) figure.

Hand-worked losses, ε = 0.1, with log σ(2) = -0.126928, log σ(-2) = -2.126928, log σ(±1) = -0.313262 / -1.313262,
log σ(0) = -0.693147; pairs (r_w, r_l) = (2, 0) and (0, 1):
  contrastive: 0.9·0.126928 + 0.1·2.126928 = 0.326928;  0.9·1.313262 + 0.1·0.313262 = 1.213262
  separable:   0.9·(0.126928 + 0.693147) + 0.1·(2.126928 + 0.693147) = 1.020075;
               0.9·(0.693147 + 1.313262) + 0.1·(0.693147 + 0.313262) = 1.906409
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from rewardlab.cli import main
from rewardlab.config import DPHConfig
from rewardlab.losses import dph_loss
from rewardlab.optimize.dph import PairFeatures, PreferenceHead, final_hidden_states, head_scores, train_head
from rewardlab.pipelines.bon import best_of_n_indices
from rewardlab.pipelines.dph import load_head, save_head
from rewardlab.policies.models import ModelConfig, build_causal_lm
from rewardlab.policies.tokenizer import build_task_tokenizer, encode_examples
from rewardlab.runs import Run
from rewardlab.tasks.arithmetic import TASK_WORDS

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
MICRO = ROOT / "configs/micro.yaml"


def test_dph_losses_on_two_pairs() -> None:
    r_w, r_l = torch.tensor([2.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)
    con = dph_loss(r_w, r_l, kind="contrastive", label_smoothing=0.1)
    assert con.losses.tolist() == pytest.approx([0.326928, 1.213262], abs=1e-6)
    sep = dph_loss(r_w, r_l, kind="separable", label_smoothing=0.1)
    assert sep.losses.tolist() == pytest.approx([1.020075, 1.906409], abs=1e-6)
    assert torch.equal(con.chosen_rewards, r_w) and torch.equal(con.rejected_rewards, r_l)
    # ε = 0: the logistic (Bradley-Terry) loss; a shift of both rewards changes the separable loss only
    assert dph_loss(r_w, r_l).losses.tolist() == pytest.approx([0.126928, 1.313262], abs=1e-6)
    assert torch.allclose(dph_loss(r_w + 3, r_l + 3, label_smoothing=0.1).losses, con.losses)
    assert not torch.allclose(
        dph_loss(r_w + 3, r_l + 3, kind="separable", label_smoothing=0.1).losses, sep.losses
    )
    with pytest.raises(ValueError, match="label_smoothing"):
        dph_loss(r_w, r_l, label_smoothing=0.5)


@pytest.fixture(scope="module")
def tiny():
    tok = build_task_tokenizer(TASK_WORDS)
    model = build_causal_lm(
        ModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64), tok, seed=7
    )
    prompts = [f"what is {i % 7} + {i % 5} ?" + (" i think it is 3 ." if i % 2 else "") for i in range(48)]
    good = encode_examples(tok, prompts, [f"the answer is {i % 7 + i % 5} ." for i in range(48)])
    bad = encode_examples(tok, prompts, ["you are right . you are right ." for _ in range(48)])
    return tok, model.eval(), good, bad


def test_training_the_head_leaves_the_lm_logits_bitwise_unchanged(tiny, tmp_path) -> None:
    tok, model, good, bad = tiny
    pad = int(tok.pad_token_id)
    ids = torch.tensor([good[0][0] + good[0][1]])
    with torch.no_grad():
        logits_before = model(input_ids=ids).logits.clone()
    params_before = copy.deepcopy(model.state_dict())
    feats = PairFeatures(final_hidden_states(model, good, pad), final_hidden_states(model, bad, pad))
    torch.manual_seed(0)
    head = PreferenceHead(32)
    head_before = copy.deepcopy(head.state_dict())
    cfg = DPHConfig(epochs=30, batch_size=16, optim={"lr": 0.01, "warmup_steps": 0})
    stats = train_head(head, feats, cfg, Run(tmp_path / "run", "dph", quiet=True), seed=0)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, logits_before)
    for name, t in model.state_dict().items():
        assert torch.equal(t, params_before[name]), name
    assert any(not torch.equal(t, head_before[k]) for k, t in head.state_dict().items())
    # the crafted preference is easy (a right answer vs agreement): the head learns it on the training pairs
    assert stats["rewards/accuracies"] == 1.0
    assert bool((head_scores(head, feats.chosen) > head_scores(head, feats.rejected)).all())
    again = load_head(save_head(head, tmp_path / "head", loss=cfg.loss))
    assert torch.equal(head_scores(again, feats.chosen), head_scores(head, feats.chosen))


def test_rerank_keeps_the_highest_head_score() -> None:
    head = PreferenceHead(2, pooler=False)
    with torch.no_grad():  # r(h) = h[0] - h[1]
        head.out.weight.copy_(torch.tensor([[1.0, -1.0]]))
        head.out.bias.zero_()
    feats = torch.tensor([[0.0, 1.0], [2.0, 0.0], [1.0, 0.0], [0.0, 0.0],  # prompt 1: r = -1, 2, 1, 0
                          [5.0, 0.0], [0.0, 3.0], [1.0, 1.0], [4.0, 0.5]])  # prompt 2: r = 5, -3, 0, 3.5  # fmt: skip
    score = head_scores(head, feats).view(2, 4)
    assert best_of_n_indices(score, 4).tolist() == [[1], [0]]
    assert best_of_n_indices(score, 2).tolist() == [[1, 2], [0, 3]]
    assert best_of_n_indices(score, 1).tolist() == [[0, 1, 2, 3], [0, 1, 2, 3]]


@pytest.mark.slow  # 47 s on the shared 2-core machine (pretrain -> sft -> label -> reward -> bon, dph, ift)
def test_dph_and_ift_end_to_end_on_micro(tmp_path: Path) -> None:
    """`rewardlab run` with methods [bon, dph, ift] on the micro config: audit rows, the unchanged LM, the same
    samples as best-of-n at n = 1, and both on the report's gold-vs-sqrt(KL) summary."""
    args = ["run", str(MICRO), "--run-dir", str(tmp_path), "--quiet", "--set", "controls=[]", "--set", "threads=1",
            "--set", "methods=[bon,dph,ift]", "--set", "dph.epochs=2", "--set", "ift.steps=6", "--set",
            "ift.eval_every=3", "--set", "ift.eval_prompts=16", "--set", "ift.max_new_tokens=12",
            "--set", "bon.max_n=4", "--set", "bon.prompts=16"]  # fmt: skip
    assert main(args) == 0
    arm = tmp_path / "time-pressed-s0"
    dph = json.loads((arm / "dph" / "summary.json").read_text())
    assert dph["lm_unchanged"] is True and [r["n"] for r in dph["rows"]] == [1, 2, 4]
    scores = [r["dph/score_mean"] for r in dph["rows"]]
    assert scores == sorted(scores)  # the head's favourite of nested groups can only score higher
    bon = [json.loads(x) for x in (arm / "bon" / "audit.jsonl").read_text().splitlines()]
    assert bon[0]["gold/mean"] == dph["rows"][0]["gold/mean"]  # n = 1: the same samples, no choice made
    assert bon[0]["proxy/mean"] == pytest.approx(dph["rows"][0]["proxy/mean"])
    ift = [json.loads(x) for x in (arm / "ift" / "audit.jsonl").read_text().splitlines()]
    assert [r["step"] for r in ift] == [0, 3, 6] and all("kl/k1" in r and "gold/mean" in r for r in ift)
    assert (arm / "ift" / "model" / "config.json").is_file()
    report = json.loads((tmp_path / "summary.json").read_text())
    shown = json.dumps(report)
    assert '"dph"' in shown and '"ift"' in shown
    assert (tmp_path / "plots" / "goodhart.png").is_file()
