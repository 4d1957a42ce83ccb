"""The skinny GEMM kernel (kernels/skinny.py, skinny_gemm.c): packing, products, its compile cache and fallback."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rewardlab.kernels import skinny

pytestmark = pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler")


@pytest.fixture(autouse=True)
def _kernel_built() -> None:
    assert skinny.available(), "a C compiler is here, so the kernel must compile and pass its check"


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 19),
    k=st.integers(1, 70),
    n=st.integers(1, 130),
    transposed=st.booleans(),
    with_add=st.sampled_from(["none", "full", "bias"]),
    with_scale=st.booleans(),
    rms=st.booleans(),
    threads=st.sampled_from([1, 2]),
    seed=st.integers(0, 2**16),
)
def test_matmul_is_add_plus_x_times_w(rows: int, k: int, n: int, transposed: bool, with_add: str,
                                      with_scale: bool, rms: bool, threads: int, seed: int) -> None:  # fmt: skip
    """Every row count (whole row blocks and remainders), partial panels, both weight layouts, a folded row
    scale, a full or broadcast addend, an RMS row scale, one or two threads: ``add + rms(x) @ (diag(scale) W)``
    up to rounding."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(k, n, generator=gen)  # [in, out]
    x = torch.randn(rows, k, generator=gen)
    scale = torch.rand(k, generator=gen) + 0.5 if with_scale else None
    add = {"none": None, "full": torch.randn(rows, n, generator=gen),
           "bias": torch.randn(n, generator=gen).expand(rows, n)}[with_add]  # fmt: skip
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        panels = skinny.pack(w.t().contiguous() if transposed else w, transposed=transposed, scale=scale)
        y = skinny.matmul(x, panels, add, rms_eps=1e-5 if rms else None)
    finally:
        torch.set_num_threads(before)
    xd = x.double()
    if rms:
        xd = xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + 1e-5)
    expected = xd @ (w.double() if scale is None else w.double() * scale.double()[:, None])
    if add is not None:
        expected = expected + add.double()
    assert y.shape == (rows, n) and y.dtype == torch.float32
    torch.testing.assert_close(y.double(), expected, atol=1e-4 * (k**0.5), rtol=1e-5)
    width = skinny.panel_width()
    assert panels.data.shape == (-(-n // width), k, width)
    assert (
        panels.data.reshape(-1, k, width).transpose(0, 1).reshape(k, -1)[:, n:].eq(0).all()
    )  # padding: zero


def test_results_do_not_depend_on_the_thread_count() -> None:
    """Threads split the panels (columns), never a sum: one and two threads give the same bits, so a run's metrics
    do not change with ``threads``."""
    gen = torch.Generator().manual_seed(3)
    w, x = torch.randn(300, 200, generator=gen), torch.randn(8, 200, generator=gen)
    add, scale = torch.randn(8, 300, generator=gen), torch.rand(200, generator=gen)
    before = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            outs.append(skinny.matmul(x, skinny.pack(w, scale=scale), add, rms_eps=1e-6))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(outs[0], outs[1])


def test_pack_into_stacks_weights_by_column() -> None:
    """q/k/v (or gate/up) packed side by side into one matrix: columns ``col..`` of each, a panel boundary inside
    one of them, the shared row scale applied to each; the product is the product with the concatenation."""
    gen = torch.Generator().manual_seed(0)
    parts = [torch.randn(n, 40, generator=gen) for n in (50, 17, 33)]  # [out, in], transformers' layout
    scale = torch.rand(40, generator=gen)
    panels = skinny.empty_panels(40, 100)
    col = 0
    for part in parts:
        skinny.pack_into(panels, part, col, transposed=True, scale=scale)
        col += part.shape[0]
    x = torch.randn(8, 40, generator=gen)
    expected = (x * scale) @ torch.cat(parts).t()
    torch.testing.assert_close(skinny.matmul(x, panels), expected, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("rows", [1, 8, 11])
@pytest.mark.parametrize("n", [24, 40, 97])
def test_a_glu_matrix_gives_swiglu_of_the_normed_rows(rows: int, n: int) -> None:
    """Gate and up packed as one GLU matrix (half a panel of each): the product is ``silu(rms(x) @ gate) *
    (rms(x) @ up)`` (SwiGLU after an RMSNorm whose weight is folded into both), plus the addend; ``n`` below, at
    and past a half panel's width."""
    gen = torch.Generator().manual_seed(n)
    gate, up = torch.randn(n, 32, generator=gen), torch.randn(n, 32, generator=gen)  # [out, in]
    norm = torch.rand(32, generator=gen) + 0.5
    panels = skinny.empty_panels(32, n, glu=True)
    skinny.pack_into(panels, gate, scale=norm, part="gate")
    skinny.pack_into(panels, up, scale=norm, part="up")
    x, add = torch.randn(rows, 32, generator=gen), torch.randn(rows, n, generator=gen)
    normed = torch.nn.functional.rms_norm(x, (32,), norm, 1e-6)
    expected = add + torch.nn.functional.silu(normed @ gate.t()) * (normed @ up.t())
    torch.testing.assert_close(skinny.matmul(x, panels, add, rms_eps=1e-6), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="part must be"):
        skinny.pack_into(panels, gate)


@pytest.mark.parametrize(("heads", "kv_heads", "head_dim"), [(6, 6, 64), (4, 2, 16), (3, 1, 10)])
def test_decode_attention_is_rope_cache_write_and_sdpa(heads: int, kv_heads: int, head_dim: int) -> None:
    """One call: RoPE on q and k (the lean step's swapped halves times a signed sine), k and v written to the slot,
    then SDPA over slots 0..slot with an additive mask (padding masked) and grouped-query heads; slots past
    ``slot`` are neither read nor written."""
    gen = torch.Generator().manual_seed(heads * 100 + head_dim)
    b, cache_len, slot, half = 5, 12, 7, head_dim // 2
    qkv = torch.randn(b, (heads + 2 * kv_heads) * head_dim, generator=gen)
    angle = torch.rand(b, half, generator=gen) * 6
    cos = torch.cat([angle.cos(), angle.cos()], -1)
    sin = torch.cat([angle.sin(), angle.sin()], -1)
    ssin = torch.cat([-angle.sin(), angle.sin()], -1)
    keys = torch.randn(b, kv_heads, cache_len, head_dim, generator=gen)
    values = torch.randn(b, kv_heads, cache_len, head_dim, generator=gen)
    mask = torch.zeros(b, cache_len)
    mask[1, :3] = torch.finfo(torch.float32).min  # a left-padded row
    mask[3, 2] = torch.finfo(torch.float32).min
    ref_keys, ref_values = keys.clone(), values.clone()

    def rope(x: torch.Tensor) -> torch.Tensor:  # transformers' apply_rotary_pos_emb
        return x * cos[:, None] + torch.cat([-x[..., half:], x[..., :half]], -1) * sin[:, None]

    q = rope(qkv[:, : heads * head_dim].view(b, heads, head_dim))
    k = rope(qkv[:, heads * head_dim : (heads + kv_heads) * head_dim].view(b, kv_heads, head_dim))
    ref_keys[:, :, slot] = k
    ref_values[:, :, slot] = qkv[:, (heads + kv_heads) * head_dim :].view(b, kv_heads, head_dim)
    expected = torch.nn.functional.scaled_dot_product_attention(
        q[:, :, None], ref_keys[:, :, : slot + 1], ref_values[:, :, : slot + 1],
        attn_mask=mask[:, None, None, : slot + 1], scale=0.3, enable_gqa=heads != kv_heads,
    ).reshape(b, -1)  # fmt: skip
    out = skinny.decode_attention(qkv, cos, ssin, keys, values, slot, mask, heads, 0.3)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(keys, ref_keys, atol=1e-6, rtol=1e-6)
    assert torch.equal(values, ref_values)
    with pytest.raises(ValueError, match="inconsistent shapes"):
        skinny.decode_attention(qkv, cos, ssin, keys, values, cache_len, mask, heads, 0.3)
    with pytest.raises(ValueError, match="contiguous caches"):
        skinny.decode_attention(qkv, cos, ssin, keys.transpose(1, 2), values, slot, mask, heads, 0.3)


def test_matmul_reads_strided_rows_and_writes_a_fresh_tensor() -> None:
    gen = torch.Generator().manual_seed(1)
    big = torch.randn(9, 64, generator=gen)
    x = big[::2, :30]  # row stride 128 elements, unit last stride
    w = torch.randn(30, 20, generator=gen)
    add = torch.randn(5, 20, generator=gen)
    y = skinny.matmul(x, skinny.pack(w, transposed=False), add)
    torch.testing.assert_close(y, add + x @ w, atol=1e-5, rtol=1e-5)
    assert y.data_ptr() != add.data_ptr() and y.is_contiguous()
    assert skinny.matmul(x[:0], skinny.pack(w, transposed=False)).shape == (0, 20)


def test_bad_inputs_are_refused_with_the_reason() -> None:
    panels = skinny.pack(torch.randn(16, 8))  # [out=16, in=8]
    with pytest.raises(ValueError, match=r"x \[rows, 8\]"):
        skinny.matmul(torch.randn(3, 9), panels)
    with pytest.raises(ValueError, match="float32"):
        skinny.matmul(torch.randn(3, 8, dtype=torch.float64), panels)
    with pytest.raises(ValueError, match="unit last stride"):
        skinny.matmul(torch.randn(8, 3).t(), panels)
    with pytest.raises(ValueError, match="add must be"):
        skinny.matmul(torch.randn(3, 8), panels, torch.randn(3, 15))
    with pytest.raises(ValueError, match="no backward"):
        skinny.matmul(torch.randn(3, 8, requires_grad=True), panels)
    with pytest.raises(ValueError, match="does not fit"):
        skinny.pack_into(skinny.empty_panels(8, 16), torch.randn(10, 8), col=8)
    with pytest.raises(ValueError, match="rms_eps"):
        skinny.matmul(torch.randn(3, 8), panels, rms_eps=-1.0)
    with pytest.raises(ValueError, match="scale has shape"):
        skinny.pack(torch.randn(16, 8), scale=torch.ones(7))


@pytest.fixture
def fresh_library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A kernel cache of its own and no loaded library: the next call compiles (or fails to) from scratch."""
    monkeypatch.setenv("REWARDLAB_CACHE_DIR", str(tmp_path))
    skinny._library.cache_clear()
    yield tmp_path / "kernels"
    skinny._library.cache_clear()


def test_the_library_is_compiled_once_per_source_compiler_and_cpu(
    fresh_library: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert skinny.available()
    built = sorted(fresh_library.glob("skinny_gemm-*.so"))
    assert len(built) == 1 and not list(fresh_library.glob("*.tmp*"))  # no temp file left
    mtime = built[0].stat().st_mtime_ns
    skinny._library.cache_clear()
    assert skinny.available() and built[0].stat().st_mtime_ns == mtime  # loaded from the cache, not rebuilt
    skinny._library.cache_clear()
    monkeypatch.setattr(skinny, "cpuinfo_field", lambda *keys: "another cpu")
    assert skinny.available()
    assert len(list(fresh_library.glob("skinny_gemm-*.so"))) == 2  # another CPU: its own library


def test_without_a_compiler_callers_keep_torch(fresh_library: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC", "no-such-compiler-here")
    assert not skinny.available()
    with pytest.raises(RuntimeError, match="not available"):
        skinny.panel_width()
    skinny._library.cache_clear()
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails: every flag set is tried, none loads
    assert not skinny.available() and not list(fresh_library.glob("*.so"))


def test_the_environment_switch_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REWARDLAB_SKINNY_GEMM", "0")
    assert not skinny.available()
