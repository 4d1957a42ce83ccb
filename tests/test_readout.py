"""``kernels.readout.hidden_at``: a decoder's final hidden states at a few positions, its last layer run there only,
equal to the full forward's (values and gradients) on every layout a reward model reads."""

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2Model,
    LlamaConfig,
    LlamaForSequenceClassification,
    LlamaModel,
    Qwen2Config,
    Qwen2Model,
    Qwen3Config,
    Qwen3Model,
)

from rewardlab.kernels.readout import hidden_at, unsupported
from rewardlab.policies.packing import pack_shared_prefix
from rewardlab.rewards.model import member_scores

ARCHS = {
    "llama": (LlamaConfig, LlamaModel, {}),
    "qwen2": (Qwen2Config, Qwen2Model, {}),  # q/k/v biases
    "qwen3": (Qwen3Config, Qwen3Model, {"head_dim": 16}),  # per-head q/k norms
}


def _decoder(arch: str, impl: str, layers: int = 3) -> torch.nn.Module:
    cfg_cls, model_cls, extra = ARCHS[arch]
    torch.manual_seed(0)
    cfg = cfg_cls(vocab_size=50, hidden_size=64, num_hidden_layers=layers, num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=96, max_position_embeddings=64, **extra)  # fmt: skip
    cfg._attn_implementation = impl
    model = model_cls(cfg)
    with torch.no_grad():  # q/k/v biases and norms away from their init, so that they matter
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model.train()


def _layouts() -> dict[str, tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """Inputs and read positions: right-padded rows (2D mask), no mask, and packed shared-prefix rows (4D mask)."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 50, (3, 12), generator=g)
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, 7:] = 0
    mask[2, 10:] = 0
    read = torch.tensor([[11, 3, 0], [6, 6, 2], [9, 4, 8]])
    packed = pack_shared_prefix(
        [([1, 2, 3], [4, 5], [6, 7, 8]), ([1, 9], [4], [5, 6, 7, 8]), ([], [3], [4])], 0
    )
    return {
        "padded": ({"input_ids": ids, "attention_mask": mask}, read),
        "no mask": ({"input_ids": ids}, read),
        "packed": (
            {
                "input_ids": packed.input_ids,
                "attention_mask": packed.attention_mask,
                "position_ids": packed.position_ids,
            },
            torch.stack([packed.first_last, packed.second_last], dim=1),
        ),
    }


def _full(decoder: torch.nn.Module, inputs: dict[str, torch.Tensor], read: torch.Tensor) -> torch.Tensor:
    hidden = decoder(**inputs, use_cache=False).last_hidden_state
    return hidden[torch.arange(read.shape[0])[:, None], read]


def _grads(decoder: torch.nn.Module, out: torch.Tensor) -> dict[str, torch.Tensor]:
    decoder.zero_grad()
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).square().sum().backward()
    return {k: p.grad.clone() for k, p in decoder.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_hidden_at_equals_the_full_forward_values_and_gradients(arch, impl):
    decoder = _decoder(arch, impl)
    assert unsupported(decoder) is None
    for name, (inputs, read) in _layouts().items():
        ref = _full(decoder, inputs, read)
        ref_grads = _grads(decoder, ref)
        got = hidden_at(decoder, read, **inputs)
        got_grads = _grads(decoder, got)
        torch.testing.assert_close(got, ref, atol=2e-6, rtol=1e-5, msg=name)
        assert got_grads.keys() == ref_grads.keys()
        for k, g in ref_grads.items():
            scale = float(g.abs().max()) + 1e-12
            assert float((got_grads[k] - g).abs().max()) <= 1e-4 * scale, (name, k)


def test_only_the_read_positions_reach_the_last_layers_mlp_and_no_hook_is_left():
    decoder = _decoder("llama", "sdpa")
    seen: list[tuple[int, ...]] = []
    for layer in decoder.layers:
        layer.mlp.register_forward_hook(lambda _m, args, _o: seen.append(tuple(args[0].shape)))
    inputs, read = _layouts()["padded"]
    hidden_at(decoder, read, **inputs)
    # the lower layers at every position, the last one at the 3 read positions of each row
    assert seen == [(3, 12, 64), (3, 12, 64), (3, 3, 64)]
    assert all(not layer._forward_pre_hooks for layer in decoder.layers)


def test_unsupported_decoders_run_the_full_forward():
    drop = _decoder("llama", "sdpa")
    drop.config.attention_dropout = 0.5
    for layer in drop.layers:
        layer.self_attn.attention_dropout = 0.5
    assert "dropout" in (unsupported(drop) or "")
    assert unsupported(drop.eval()) is None  # dropout only matters in training
    gpt2 = GPT2Model(GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=2, n_positions=64)).eval()
    assert "gpt2" in (unsupported(gpt2) or "")
    inputs, read = _layouts()["padded"]
    torch.testing.assert_close(hidden_at(gpt2, read, **inputs), _full(gpt2, inputs, read))


def test_member_scores_equal_the_sequence_classifiers_logits_and_gradients():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=50, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, intermediate_size=96, num_labels=1, pad_token_id=0)  # fmt: skip
    model = LlamaForSequenceClassification(cfg).train()
    ids = torch.randint(1, 50, (4, 9))
    mask = torch.ones_like(ids)
    ids[1, 6:], mask[1, 6:] = 0, 0  # right padding
    ids[2, 8] = 0  # a pad id as the last real token: the classifier reads the token before it
    ref = model(input_ids=ids, attention_mask=mask).logits[:, 0]
    ref_grads = _grads(model, ref)
    got = member_scores(model, ids, mask)
    got_grads = _grads(model, got)
    torch.testing.assert_close(got, ref, atol=2e-6, rtol=1e-5)
    for k, g in ref_grads.items():
        assert float((got_grads[k] - g).abs().max()) <= 1e-4 * (float(g.abs().max()) + 1e-12), k
