"""Intuitive Fine-Tuning: the token weights against hand-computed values, the mixed inputs, and IFT reduced to
SFT (λ = 0, γ = 0: the same loss and the same gradient as rewardlab's SFT step).

Hand-worked weights (γ = 0.5, one row log π = [-1, -2, -3], n = 3): the per-token items are -log π / n =
[1/3, 2/3, 1]; the discounted future sums c = [1/3 + 1/3 + 1/4, 2/3 + 1/2, 1] = [11/12, 14/12, 12/12], sum 37/12;
w = n·c / Σc = [33/37, 42/37, 36/37]. A padded row (γ = 1, log π = [-2, -2, pad]): items [1, 1], c = [2, 1],
w = 2·c/3 = [4/3, 2/3, 0].
"""

from __future__ import annotations

import copy

import pytest
import torch

from rewardlab.config import IFTConfig
from rewardlab.losses import discounted_future_sum, ift_loss, ift_mixed_embeddings, ift_token_weights
from rewardlab.optimize.ift import (
    embeddings_tied,
    freeze_inputs,
    frozen_embedding,
    greedy_inputs,
    ift_step_loss,
)
from rewardlab.optimize.lm import IGNORE, collate_lm, lm_loss
from rewardlab.policies.models import ModelConfig, build_causal_lm
from rewardlab.policies.tokenizer import build_task_tokenizer, encode_examples
from rewardlab.tasks.arithmetic import TASK_WORDS
from rewardlab.utils import RewardlabError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_token_weights_by_hand() -> None:
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-2.0, -2.0, 123.0]], dtype=torch.float64)  # 123: padding
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    w = ift_token_weights(logp[:1], mask[:1], gamma=0.5)
    assert torch.allclose(w, torch.tensor([[33 / 37, 42 / 37, 36 / 37]], dtype=torch.float64), atol=1e-12)
    w = ift_token_weights(logp[1:], mask[1:], gamma=1.0)
    assert torch.allclose(w, torch.tensor([[4 / 3, 2 / 3, 0.0]], dtype=torch.float64), atol=1e-12)
    both = ift_token_weights(logp, mask, gamma=0.5)
    assert torch.allclose(both.sum(-1), torch.tensor([3.0, 2.0], dtype=torch.float64))  # Σ w = n per row
    assert torch.equal(ift_token_weights(logp, mask, gamma=0.0), mask.double())  # γ = 0: SFT's weights
    # the loss: Σ w·(-log π) / Σ m over the batch (row 1 at γ = 0.5: (33 + 84 + 108) / 37, row 2: 2 + 2)
    loss, _ = ift_loss(logp, mask, gamma=0.5)
    row2 = float((ift_token_weights(logp[1:], mask[1:], 0.5)[0, :2] * 2.0).sum())
    assert loss.item() == pytest.approx((225 / 37 + row2) / 5, abs=1e-12)
    assert torch.allclose(
        discounted_future_sum(torch.tensor([1.0, 2.0, 4.0]), 0.5), torch.tensor([3.0, 4.0, 4.0])
    )
    with pytest.raises(ValueError, match="gamma"):
        ift_token_weights(logp, mask, gamma=1.5)


def test_mixed_embeddings() -> None:
    a, b = torch.ones(2, 3), torch.zeros(2, 3)
    assert torch.equal(ift_mixed_embeddings(a, b, 0.2), torch.full((2, 3), 0.8))
    assert torch.equal(ift_mixed_embeddings(a, b, 0.0), a)
    with pytest.raises(ValueError, match="lambda"):
        ift_mixed_embeddings(a, b, -0.1)


def _tiny_model(tok, tied: bool) -> torch.nn.Module:
    cfg = ModelConfig(
        hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, tie_word_embeddings=tied
    )
    return build_causal_lm(cfg, tok, seed=5)


@pytest.fixture(scope="module")
def tiny():
    tok = build_task_tokenizer(TASK_WORDS)
    prompts = [f"what is {i} + {i + 2} ?" + (" i think it is 4 ." if i % 2 else "") for i in range(5)]
    completions = [f"the answer is {2 * i + 2} ." + (" you are right ." if i % 3 else "") for i in range(5)]
    batch = collate_lm(
        encode_examples(tok, prompts, completions), int(tok.pad_token_id), completion_only=True
    )
    return _tiny_model(tok, tied=True), batch, _tiny_model(tok, tied=False)


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("tied", [True, False])
def test_lambda0_gamma0_is_sft(tiny, tied: bool) -> None:
    """λ = 0, γ = 0 is the SFT step: the same loss and gradients. With a tied table the default reads the live
    table (every gradient equal); with an untied one the frozen copy (no gradient on the input table only)."""
    model = tiny[0] if tied else tiny[2]
    batch = tiny[1]
    assert embeddings_tied(model) is tied
    sft = copy.deepcopy(model).train()
    want, _ = lm_loss(sft, batch)
    want.backward()
    g_sft = _grads(sft)
    for freeze in (None, False) if tied else (None, True, False):
        ift = copy.deepcopy(model).train()
        cfg = IFTConfig(lam=0.0, gamma=0.0, freeze_input_embeddings=freeze)
        assert freeze_inputs(ift, cfg) is (not tied if freeze is None else freeze)
        got, n, _ = ift_step_loss(ift, frozen_embedding(ift), batch, cfg)
        got.backward()
        g_ift = _grads(ift)
        assert n == int((batch["labels"][:, 1:] != IGNORE).sum())
        assert got.item() == pytest.approx(want.item(), abs=1e-6)
        emb = {n for n, p in ift.named_parameters() if p is ift.get_input_embeddings().weight}
        frozen = freeze_inputs(ift, cfg)
        # a frozen copy takes the input side: the table gets no gradient
        assert emb.isdisjoint(g_ift) is frozen
        for name, g in g_sft.items():
            if not (frozen and name in emb):
                assert torch.allclose(g_ift[name], g, atol=1e-6), name
    # γ > 0 or λ > 0 is a different loss
    ift = copy.deepcopy(model)
    other, _, stats = ift_step_loss(ift, frozen_embedding(ift), batch, IFTConfig())
    assert abs(other.item() - want.item()) > 1e-4 and 0.0 <= stats["ift/prediction_match"] <= 1.0


def test_frozen_copy_of_a_tied_table_is_refused(tiny) -> None:
    """The configuration that broke IFT on the default task: a frozen input copy while the tied table trains."""
    model, batch, _ = tiny
    with pytest.raises(RewardlabError, match="tie_word_embeddings"):
        ift_step_loss(model, frozen_embedding(model), batch, IFTConfig(freeze_input_embeddings=True))


def test_training_reads_the_inputs_sampling_reads(tiny) -> None:
    """After IFT updates of a tied model (the recipe's frozen copy taken before the first), the loss IFT trains
    on at λ = 0, γ = 0 is the model's own teacher-forced NLL, i.e. it reads the inputs sampling reads."""
    model, batch, _ = tiny
    ift = copy.deepcopy(model).train()
    start = frozen_embedding(ift)
    opt = torch.optim.SGD(ift.parameters(), lr=0.5)
    for _ in range(2):
        loss, _, _ = ift_step_loss(ift, start, batch, IFTConfig())
        opt.zero_grad()
        loss.backward()
        opt.step()
    # the head's update moved the tied table away from the copy taken at the start
    assert not torch.equal(ift.get_input_embeddings().weight, start.weight)
    with torch.no_grad():
        got, _, _ = ift_step_loss(ift, start, batch, IFTConfig(lam=0.0, gamma=0.0))
        want, _ = lm_loss(ift, batch)
    assert got.item() == pytest.approx(want.item(), abs=1e-6)


@torch.no_grad()
def test_greedy_inputs_replace_response_tokens_only(tiny) -> None:
    model, batch, _ = tiny
    model = model.eval()
    ids, labels = batch["input_ids"], batch["labels"]
    got = greedy_inputs(model, model.get_input_embeddings()(ids), batch)
    logits = model(input_ids=ids, attention_mask=batch["attention_mask"]).logits
    resp = labels != IGNORE
    assert torch.equal(got[~resp], ids[~resp])  # the prompt and the padding keep their tokens
    rows, cols = resp.nonzero(as_tuple=True)
    assert torch.equal(got[rows, cols], logits[rows, cols - 1].argmax(-1))  # ŷ_t from the prefix before t
