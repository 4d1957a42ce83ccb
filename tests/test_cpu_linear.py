"""oneDNN linears: the same values and gradients as ``F.linear`` (up to rounding), switched on and off cleanly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rewardlab.kernels import cpu_linear
from rewardlab.kernels.cpu_linear import OneDNNLinear, cpu_linear_backend, onednn_linears
from rewardlab.policies.models import ModelConfig, build_causal_lm
from rewardlab.policies.tokenizer import build_task_tokenizer
from rewardlab.tasks.arithmetic import TASK_WORDS

pytestmark = pytest.mark.skipif(not cpu_linear._onednn_ops_work(), reason="torch built without oneDNN")


@pytest.mark.parametrize("bias", [True, False])
def test_onednn_linear_matches_f_linear_and_its_gradients(bias: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 7, generator=gen, requires_grad=True)
    w = torch.randn(4, 7, generator=gen, requires_grad=True)
    b = torch.randn(4, generator=gen, requires_grad=True) if bias else None
    g = torch.randn(3, 5, 4, generator=gen)
    inputs = (x, w, b) if b is not None else (x, w)
    ref = torch.nn.functional.linear(x, w, b)
    ref_grads = torch.autograd.grad(ref, inputs, g)
    out = OneDNNLinear.apply(x, w, b)
    grads = torch.autograd.grad(out, inputs, g)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for a, e in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-5)


def test_row_padding_bounds_the_shapes_and_the_waste() -> None:
    sizes = {cpu_linear._padded_rows(m) for m in range(513, 1025)}  # one octave: 576, 640, ..., 1024
    assert len(sizes) == 2**cpu_linear._ROW_BITS  # a few GEMM shapes per octave of row counts
    for m in (1, 7, 100, 543, 1000, 4097):
        p = cpu_linear._padded_rows(m)
        assert m <= p <= max(16, m * (1 + 2**-cpu_linear._ROW_BITS))


def test_switch_is_scoped_and_leaves_the_model_as_it_was() -> None:
    tok = build_task_tokenizer(TASK_WORDS)
    model = build_causal_lm(ModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64), tok)
    ids = torch.randint(10, len(tok), (2, 9))
    keys = list(model.state_dict())
    ref = model(input_ids=ids).logits
    ref.sum().backward()
    ref_grad = model.model.layers[0].mlp.up_proj.weight.grad.clone()
    model.zero_grad()
    with onednn_linears(model, None, model.model, enabled=True) as n:
        assert n == 2 * 7 + 1  # 7 per layer and the LM head (tied or not), each once
        with onednn_linears(model, enabled=True) as inner:
            assert inner == 0  # already switched: the outer block owns them
        assert "forward" in model.model.layers[0].self_attn.q_proj.__dict__
        out = model(input_ids=ids).logits
        out.sum().backward()
    assert not any("forward" in m.__dict__ for m in model.modules())
    assert list(model.state_dict()) == keys
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(model.model.layers[0].mlp.up_proj.weight.grad, ref_grad, atol=1e-4, rtol=1e-4)
    with onednn_linears(model, enabled=False) as n:
        assert n == 0


def test_backend_choice_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        for value, expected in (("mkl", "mkl"), ("onednn", "onednn"), ("auto", None)):
            monkeypatch.setenv("REWARDLAB_CPU_LINEAR", value)
            cpu_linear_backend.cache_clear()
            assert cpu_linear_backend() in ((expected,) if expected else ("mkl", "onednn"))
        monkeypatch.setenv("REWARDLAB_CPU_LINEAR", "fast")
        cpu_linear_backend.cache_clear()
        with pytest.raises(ValueError, match="REWARDLAB_CPU_LINEAR"):
            cpu_linear_backend()
    finally:
        cpu_linear_backend.cache_clear()


def test_auto_decides_once_per_machine_and_keeps_the_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REWARDLAB_CPU_LINEAR", "auto")
    monkeypatch.setenv("REWARDLAB_CACHE_DIR", str(tmp_path))
    probes: list[str] = []

    def probe(answer: str) -> None:
        monkeypatch.setattr(cpu_linear, "_probe", lambda: probes.append(answer) or answer)

    try:
        probe("onednn")
        cpu_linear_backend.cache_clear()
        assert cpu_linear_backend() == "onednn" and probes == ["onednn"]
        kept = json.loads((tmp_path / "cpu_linear.json").read_text())
        assert kept == {cpu_linear.machine_key(): "onednn"}
        probe("mkl")  # a later process whose timing would say otherwise reads the kept answer
        cpu_linear_backend.cache_clear()
        assert cpu_linear_backend() == "onednn" and probes == ["onednn"]
        monkeypatch.setattr(cpu_linear, "machine_key", lambda: "another cpu")  # another machine probes anew
        cpu_linear_backend.cache_clear()
        assert cpu_linear_backend() == "mkl" and probes == ["onednn", "mkl"]
        assert set(json.loads((tmp_path / "cpu_linear.json").read_text()).values()) == {"onednn", "mkl"}
        (tmp_path / "cpu_linear.json").write_text("{not json")  # a damaged file: probe again
        cpu_linear_backend.cache_clear()
        assert cpu_linear_backend() == "mkl" and len(probes) == 3
    finally:
        cpu_linear_backend.cache_clear()
