"""``reward.cache_frozen`` (issue 17 section 2): the top layers of an encoder reward model fine-tuned from cached
hidden states of its frozen lower layers train to the same weights, and score raw text the same, as the same
training from tokens; the on-disk cache resumes and is keyed by the frozen weights. A tiny random 3-layer BERT."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from tokenizers import BertWordPieceTokenizer
from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

from rewardlab.config import RewardConfig
from rewardlab.feedback.records import Comparison
from rewardlab.rewards.head import (
    FrozenPrefixCache,
    collate_states,
    frozen_prefix_states,
    top_scores,
)
from rewardlab.rewards.model import RewardModel, collate_sequences, init_reward_backbone, member_scores
from rewardlab.rewards.train import RewardData, tokenize_pairs, train_reward_member
from rewardlab.runs import Run
from rewardlab.utils import RewardlabError

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "answer", "the", "is", "it", "?", ".",
         "human", "assistant", ":", "first", "second", "last", "turn", "hello"]  # fmt: skip


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, BertTokenizerFast]:
    """A 3-layer random BERT (dropout 0.1 everywhere, as BERT ships) with a WordPiece tokenizer."""
    d = tmp_path_factory.mktemp("bert")
    (d / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    wordpiece = BertWordPieceTokenizer(str(d / "vocab.txt"), lowercase=True)
    tok = BertTokenizerFast(tokenizer_object=wordpiece._tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                            cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]", model_max_length=64)  # fmt: skip
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)  # fmt: skip
    BertForMaskedLM(cfg).save_pretrained(d / "model")
    tok.save_pretrained(d / "model")
    return d / "model", tok


def _pairs(n: int, seed: int = 0) -> list[Comparison]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        filler = " ".join(
            rng.choice(["the", "answer", "is", "it", "first", "turn"]) for _ in range(rng.randint(1, 9))
        )
        out.append(
            Comparison(
                prompt=f"human : hello {filler} ?", chosen=f"{filler} good .", rejected=f"{filler} bad ."
            )
        )
    return out


def _train(bert: tuple[Path, BertTokenizerFast], tmp: Path, pooling: str, **over: object) -> torch.nn.Module:
    path, tok = bert
    model = init_reward_backbone(path, tok, seed=3, pooling=pooling)
    cfg = RewardConfig(**{"epochs": 2, "batch_size": 8, "optim": {"lr": 3e-3, "warmup_steps": 2}, "verifier": False,
                          "eval_every": 1000, "checkpoint_every": 0, **over})  # fmt: skip
    return train_reward_member(
        model, RewardData(tok, pairs=_pairs(32)), cfg, Run(tmp, "r", quiet=True), seed=0
    )


@pytest.mark.parametrize(("pooling", "train_layers"), [("cls", 1), ("mean", 2)])
def test_cached_and_uncached_training_give_the_same_weights(
    bert: tuple[Path, BertTokenizerFast], tmp_path: Path, pooling: str, train_layers: int
) -> None:
    plain = _train(bert, tmp_path / "a", pooling, train_layers=train_layers)
    cached = _train(
        bert, tmp_path / "b", pooling, train_layers=train_layers, cache_frozen=True, cache_dtype="float32"
    )
    init = init_reward_backbone(bert[0], bert[1], seed=3, pooling=pooling).state_dict()
    moved = 0
    for (name, a), (_, b) in zip(plain.state_dict().items(), cached.state_dict().items(), strict=True):
        # a few parameters have a gradient that is zero in exact arithmetic: an attention key bias (softmax ignores a
        # constant per query), the head's bias and, with mean pooling, the last LayerNorm's bias (both add the same
        # constant to r_chosen and r_rejected). Adam turns their rounding noise into steps, which differ between the
        # two paths by up to 1e-4 (far below the 8 steps of lr 3e-3 that noise could move them); every other weight
        # agrees to ~1e-6 (up to 7e-6 on some CPUs' kernels, measured 2026-12-01; a trained weight moves by ~1e-2).
        zero_grad = name.endswith(("key.bias", "classifier.bias")) or (
            pooling == "mean"
            and name == f"bert.encoder.layer.{len(plain.bert.encoder.layer) - 1}.output.LayerNorm.bias"
        )
        tol = 1e-3 if zero_grad else 2e-5
        assert torch.allclose(a, b, atol=tol, rtol=0), (name, float((a - b).abs().max()))
        moved += int(not torch.equal(a, init[name]))
    assert moved > 4  # the top layers, the pooler and the head were trained (8 steps), not left as they were
    pairs = _pairs(8, seed=1)  # both score raw text alike, through the plain transformers path
    s_a = RewardModel([plain], bert[1]).score([c.prompt for c in pairs], [c.chosen for c in pairs]).mean
    s_b = RewardModel([cached], bert[1]).score([c.prompt for c in pairs], [c.chosen for c in pairs]).mean
    # equal up to a constant shift (the zero-gradient head bias's Adam noise, above; a shift orders no pair differently)
    assert torch.allclose(s_a - s_a.mean(), s_b - s_b.mean(), atol=1e-5)
    assert float((s_a - s_b).abs().max()) < 1e-3


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_top_layers_on_cached_states_score_as_the_whole_model(
    bert: tuple[Path, BertTokenizerFast], pooling: str
) -> None:
    path, tok = bert
    model = init_reward_backbone(path, tok, seed=1, pooling=pooling).eval()
    seqs = tokenize_pairs(tok, _pairs(12), False, backbone="encoder").chosen
    whole = member_scores(model, **collate_sequences(seqs, 0))
    for frozen in (0, 2, 3):
        states = frozen_prefix_states(model, seqs, 0, frozen, batch_size=5, dtype=torch.float32)
        assert [len(s) for s in states] == [len(s) for s in seqs]
        hidden, mask = collate_states(states)
        assert torch.allclose(top_scores(model, hidden, mask, frozen), whole, atol=1e-5)
    half = frozen_prefix_states(model, seqs, 0, 2)  # fp16 storage: close, not equal
    assert half[0].dtype == torch.float16
    assert torch.allclose(top_scores(model, *collate_states(half), 2), whole, atol=1e-2)


def test_the_disk_cache_resumes_and_is_keyed_by_the_frozen_weights(
    bert: tuple[Path, BertTokenizerFast], tmp_path: Path
) -> None:
    path, tok = bert
    model = init_reward_backbone(path, tok, seed=1, pooling="cls")
    seqs = tokenize_pairs(tok, _pairs(20), False, backbone="encoder").chosen
    first = FrozenPrefixCache(model, 0, 2, folder=tmp_path / "c", chunk=8)
    got = first.states(seqs)
    assert first.computed == 20 and len(list((tmp_path / "c").glob("prefix-*.pt"))) == 3
    first.chunk_path(seqs[:8]).unlink()  # a stopped run: one chunk missing
    again = FrozenPrefixCache(model, 0, 2, folder=tmp_path / "c", chunk=8)
    back = again.states(seqs)
    assert again.computed == 8 and all(torch.equal(a, b) for a, b in zip(got, back, strict=True))
    with torch.no_grad():
        model.bert.encoder.layer[0].output.dense.weight.add_(0.1)  # other frozen weights: recomputed
    other = FrozenPrefixCache(model, 0, 2, folder=tmp_path / "c", chunk=8)
    other.states(seqs)
    assert other.computed == 20
    assert FrozenPrefixCache(model, 0, 1, folder=tmp_path / "c", chunk=8).key != other.key


def test_disable_dropout_trains_without_dropout_as_trl_does(
    bert: tuple[Path, BertTokenizerFast], tmp_path: Path
) -> None:
    off = [_train(bert, tmp_path / f"off{i}", "cls", train_layers=1, disable_dropout=True) for i in (0, 1)]
    on = _train(bert, tmp_path / "on", "cls", train_layers=1)
    assert all(m.p == 0.0 for m in off[0].modules() if isinstance(m, torch.nn.Dropout))
    assert any(m.p > 0.0 for m in on.modules() if isinstance(m, torch.nn.Dropout))
    w = [m.classifier.weight for m in (*off, on)]
    assert torch.allclose(w[0], w[1], atol=1e-7) and not torch.allclose(w[0], w[2], atol=1e-4)


@pytest.mark.parametrize("train_layers", [None, 0])
def test_cache_frozen_needs_top_layers_to_train(
    bert: tuple[Path, BertTokenizerFast], tmp_path: Path, train_layers: int | None
) -> None:
    with pytest.raises(RewardlabError, match=r"reward\.cache_frozen needs reward\.train_layers >= 1"):
        _train(bert, tmp_path, "cls", train_layers=train_layers, cache_frozen=True)
