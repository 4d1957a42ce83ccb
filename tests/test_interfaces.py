"""The seams: every registered task honours the Task protocol, feedback sources the Rater/LabelFile protocols,
task-owned config sections are validated by the task, controls are declared, reward models record their
backbone (causal or encoder) and an encoder backbone trains and round-trips."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from tokenizers import BertWordPieceTokenizer
from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

from rewardlab.config import RewardConfig, load_config
from rewardlab.feedback.base import LabelFile, Rater
from rewardlab.feedback.factory import make_source, require_rater
from rewardlab.feedback.file import FileSourceConfig
from rewardlab.feedback.judge import JudgeSourceConfig
from rewardlab.feedback.records import Comparison
from rewardlab.feedback.simulated import RaterConfig
from rewardlab.policies.tokenizer import tokenizer_for_task
from rewardlab.rewards.model import RewardModel, init_reward_backbone
from rewardlab.rewards.proxy import Proxy, ScoredProxy
from rewardlab.rewards.train import RewardData, evaluate_comparisons, train_reward_member
from rewardlab.runs import Run
from rewardlab.tasks.base import Task, TaskInfo, has_capability
from rewardlab.tasks.registry import TASKS, build_task
from rewardlab.utils import RewardlabError

MICRO = Path(__file__).resolve().parents[1] / "configs" / "micro.yaml"


@pytest.fixture()
def prompt_file(tmp_path: Path) -> Path:
    rows = [{"prompt": f"question {i} about topic {i % 7} ?", "chosen": f"a fine answer {i}", "rejected": "no"}
            for i in range(40)]  # fmt: skip
    p = tmp_path / "pairs.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def _tasks(prompt_file: Path) -> list[Task]:
    out = []
    for kind, (config_cls, _) in TASKS.items():
        data = {"kind": kind, "path": str(prompt_file)} if kind == "dataset" else {"kind": kind}
        if kind == "synthetic-gold":  # prompts from the file, gold from a tiny frozen reward model
            gold = prompt_file.parent / "gold"
            if not gold.exists():
                from test_synthetic_gold import make_micro_gold

                make_micro_gold(gold)
            data = {"kind": kind, "gold_path": str(gold), "data": {"path": str(prompt_file)}}
        out.append(build_task(config_cls.model_validate(data)))
    return out


def test_every_registered_task_honours_the_protocol(prompt_file: Path) -> None:
    for task in _tasks(prompt_file):
        assert isinstance(task, Task), type(task)
        info = task.info
        assert isinstance(info, TaskInfo) and TaskInfo.from_dict(info.to_dict()) == info
        assert info.headline is None or info.headline in info.behaviors
        assert "unbiased" in task.rater_presets()
        items = task.sample_items(20, seed=3)
        assert items == task.sample_items(20, seed=3)  # seeded
        evals = set(map(task.prompt, task.sample_items(20, seed=3, split="eval")))
        for it in items:
            prompt = task.prompt(it)
            assert task.item(prompt) == it and task.prompt(task.item(prompt)) == prompt
            flags = task.behavior_flags(it, "some response")
            assert set(flags) == set(info.behaviors)
            assert all(v is None or 0.0 <= v <= 1.0 for v in flags.values())
            gold = task.gold(it, "some response")
            detail = task.gold_detail(it, "some response")
            assert (gold is None) == (detail is None) == (not info.has_gold)
            if detail is not None:
                assert detail.value == gold and set(detail.parts) == set(info.gold_parts)
            assert task.level(it) >= 1
            assert all(isinstance(v, float) for v in task.surface_features(it, "some response").values())
        if info.name == "dataset":  # held-out prompts never appear in training
            assert not evals & set(map(task.prompt, task.sample_items(200, seed=1)))


def test_a_task_without_vocabulary_gets_a_bpe_tokenizer_trained_on_its_texts(prompt_file: Path) -> None:
    task = next(t for t in _tasks(prompt_file) if t.info.name == "dataset")
    assert not has_capability(task, "vocabulary") and has_capability(task, "corpus")
    assert not has_capability(task, "verifier")
    tok = tokenizer_for_task(task, model_max_length=128, vocab_size=300)
    ids = tok("question 3 about topic 3 ?")["input_ids"]
    assert tok.decode(ids) == "question 3 about topic 3 ?" and tok.unk_token_id not in ids


def test_task_sections_are_validated_by_the_task(prompt_file: Path) -> None:
    cfg = load_config(MICRO)
    assert cfg.task.kind == "arithmetic"  # a task section without kind is the arithmetic task
    assert cfg.pretrain.corpus["p_correct"] == [0.75, 0.6, 0.45]  # the task's defaults, resolved
    with pytest.raises(RewardlabError, match=r"pretrain\.corpus.*p_corect.*unknown key"):
        load_config(MICRO, ["pretrain.corpus.p_corect=0.5"])
    with pytest.raises(RewardlabError, match=r"task\.dataset\.path"):
        load_config(MICRO, ["task.kind=dataset"])
    with pytest.raises(RewardlabError, match=r"sft\.demos: this task has no such section"):
        load_config(MICRO, ["task={kind: dataset, path: x.jsonl}", "sft.demos.p_filler=0.5"])
    with pytest.raises(RewardlabError, match=r"task: .*does not match any of the expected tags"):
        load_config(MICRO, ["task.kind=chess"])


def test_rater_presets_come_from_the_task_and_unknown_ones_are_named() -> None:
    cfg = load_config(MICRO, ["label.rater.preset=sycophancy-prone"])
    assert cfg.label.rater.biases["agree"] == 3.0 and cfg.arm == "sycophancy-prone-s0"
    with pytest.raises(RewardlabError, match=r"unknown rater preset 'lazy'.*unbiased"):
        load_config(MICRO, ["label.rater.preset=lazy"])


def test_feedback_sources_honour_their_protocols(tmp_path: Path, prompt_file: Path) -> None:
    cfg = load_config(MICRO)
    task = cfg.build_task()
    sim = make_source("simulated", task=task, seed=0, name="t", rater=RaterConfig())
    assert isinstance(sim, Rater) and not isinstance(sim, LabelFile)
    item = task.sample_items(1, seed=0)[0]
    assert sim.compare(item, "the answer is 1 .", "the answer is 2 .") is not None
    state = sim.state_dict()
    first = sim.compare(item, "the answer is 1 .", "you are right . the answer is 2 .")
    sim.load_state_dict(state)
    assert sim.compare(item, "the answer is 1 .", "you are right . the answer is 2 .") == first  # resumable

    mapped = tmp_path / "mapped.jsonl"
    mapped.write_text(json.dumps({"q": "what is 2 + 2 ?", "good": "the answer is 4 .", "bad": "the answer is 5 .",
                                  "source": "web"}) + "\n")  # fmt: skip
    src = make_source("file", task=task, seed=0, name="mine",
                      file=FileSourceConfig(path=str(mapped), columns={"q": "prompt", "good": "chosen", "bad": "rejected"}))  # fmt: skip
    assert isinstance(src, LabelFile) and not isinstance(src, Rater)
    (c,) = src.comparisons()
    assert (c.prompt, c.chosen, c.rejected, c.rater, c.meta) == (
        "what is 2 + 2 ?", "the answer is 4 .", "the answer is 5 .", "mine", {"source": "web"})  # fmt: skip
    assert c.gold_chosen == pytest.approx(0.95) and c.gold_rejected == pytest.approx(-0.05)  # the task's gold
    with pytest.raises(RewardlabError, match=r"iterated DPO labels pairs it samples"):
        require_rater(src, "iterated DPO")
    with pytest.raises(RewardlabError, match=r"label\.file\.path: required"):
        make_source("file", task=task, seed=0, name="x", file=FileSourceConfig())
    with pytest.raises(RewardlabError, match=r"label\.judge: a lm judge is a model"):
        make_source("judge", task=task, seed=0, name="x")
    judge = make_source("judge", task=task, seed=0, name="x", judge=JudgeSourceConfig(kind="rule"))
    assert isinstance(judge, Rater) and not isinstance(judge, LabelFile)
    with pytest.raises(RewardlabError, match="'nobody' is not a feedback source"):
        make_source("nobody", task=task, seed=0, name="x")


def test_controls_are_declared_arms_with_roles() -> None:
    cfg = load_config(
        MICRO, ["controls=[unbiased, {name: careful, rater: {preset: custom, verify_prob: [0.9]}}]"]
    )
    arms = [cfg, *map(cfg.control_arm, cfg.controls)]
    assert [a.arm for a in arms] == ["time-pressed-s0", "unbiased-s0", "careful-s0"]
    assert [a.arm_info()["role"] for a in arms] == ["treatment", "control", "control"]
    assert arms[2].label.rater.verify_prob == [0.9] and arms[1].label.rater.biases["agree"] == 0.0
    named = load_config(MICRO, ["label.name=rushed"])
    assert named.arm == "rushed-s0" and named.arm_info()["preset"] == "time-pressed"
    with pytest.raises(RewardlabError, match="controls entry"):
        cfg.control_arm({"rater": {"preset": "lazy"}})


def _bert(tmp_path: Path) -> tuple[Path, BertTokenizerFast]:
    words = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        "good",
        "bad",
        "answer",
        "the",
        "is",
        "it",
        "?",
        ".",
    ]
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(words) + "\n")
    wordpiece = BertWordPieceTokenizer(str(vocab), lowercase=True)
    tok = BertTokenizerFast(tokenizer_object=wordpiece._tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                            cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]", model_max_length=64)  # fmt: skip
    assert tok.tokenize("the good .") == ["the", "good", "."]
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)  # fmt: skip
    d = tmp_path / "bert"
    BertForMaskedLM(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d, tok


def test_an_encoder_backbone_trains_scores_and_round_trips(tmp_path: Path) -> None:
    path, tok = _bert(tmp_path)
    rng = random.Random(0)
    pairs = []
    for _ in range(96):
        filler = " ".join(rng.choice(["the", "answer", "is", "it"]) for _ in range(rng.randint(1, 4)))
        pairs.append(Comparison(prompt="is it good ?", chosen=f"{filler} good .", rejected=f"{filler} bad .",
                                gold_chosen=1.0, gold_rejected=0.0))  # fmt: skip
    model = init_reward_backbone(path, tok, seed=0)
    assert hasattr(model, "classifier") and not hasattr(model, "score")
    cfg = RewardConfig(epochs=3, batch_size=16, optim={"lr": 3e-3, "warmup_steps": 0}, verifier=False)
    model = train_reward_member(
        model, RewardData(tok, pairs=pairs), cfg, Run(tmp_path / "r", "r", quiet=True), seed=0
    )
    rm = RewardModel([model], tok)
    assert rm.backbone == "encoder" and isinstance(rm, Proxy) and isinstance(rm, ScoredProxy)
    assert evaluate_comparisons(rm, pairs)["eval/accuracy_rater"] > 0.95
    rm.save(tmp_path / "rm")
    assert json.loads((tmp_path / "rm" / "ensemble.json").read_text())["backbone"] == "encoder"
    again = RewardModel.load(tmp_path / "rm")
    assert again.backbone == "encoder"
    assert again(["is it good ?"], ["the good ."]) == pytest.approx(
        rm(["is it good ?"], ["the good ."]), abs=1e-6
    )
    with pytest.raises(RewardlabError, match="verifier feature needs a causal backbone"):
        RewardModel([model], tok, verifier=model)
