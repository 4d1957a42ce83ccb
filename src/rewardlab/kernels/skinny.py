"""CPU kernels for decoding a few rows at a time (:mod:`rewardlab.kernels.fast_decoder`'s lean step when sampling):
fp32 ``y = add + x @ W`` for a few rows ``x`` against a weight packed once into column panels (:func:`matmul`), and
one step's RoPE, cache write and attention in one call (:func:`decode_attention`, replacing SDPA and four small ops:
~8% of a ~1M sampling call).

A decoding step multiplies the batch's rows (8 in an RL step) by each weight matrix: ~2 FLOPs per row per weight
read, so its speed is the speed at which the weights are read. MKL's SGEMM at 8 rows reads them at about half the
speed the cache delivers. The C kernel in ``skinny_gemm.c`` reads a packed panel (:class:`Panels`) front to back
with each loaded weight vector feeding every row's accumulator (registers), and can apply an RMSNorm's row scale
and SwiGLU inside the product. Measured on this project's Intel Xeon (one thread, 8 rows, the ~11M model's 17
matrices of a step, 40 MB): ~2.2-2.7 ms a step against MKL's 3.3-6.2 ms (``benchmarks/RESULTS.md``). Results equal
``torch.mm``'s up to rounding (the sum over k runs in order); they do not depend on the thread count (threads
split the columns).

The kernel is compiled at first use with the machine's C compiler (``$CC``, default ``cc``; ``-O3 -march=native``
with OpenMP, then without OpenMP, then plain ``-O3``) into ``REWARDLAB_CACHE_DIR`` (default
``~/.cache/rewardlab``)``/kernels``, one library per source, compiler and CPU (the CPU's model and flags are in the
name: a library built for one CPU is never loaded on another). Where no compiler works, :func:`available` is
``False`` and callers keep their ``torch.mm`` path; ``REWARDLAB_SKINNY_GEMM=0`` turns the kernel off.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from torch import Tensor

from rewardlab.utils import cache_dir, cpuinfo_field

_SOURCE = Path(__file__).with_name("skinny_gemm.c")
_FLAGS = (["-O3", "-march=native", "-fopenmp"], ["-O3", "-march=native"], ["-O3"])
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Panels:
    """A ``[k, n]`` weight matrix packed for :func:`matmul`: ``data[p, k, j] == W[k, p * width + j]``, zero past
    column ``n``. A GLU matrix (``glu``) holds a gate and an up matrix, each ``[k, n]``, half a panel of each:
    ``data[p, k, j] == gate[k, p * width / 2 + j]`` and ``data[p, k, width / 2 + j] == up[k, ...]``."""

    data: Tensor  # [panels, k, width], float32, contiguous
    k: int
    n: int
    glu: bool = False

    @property
    def shape(self) -> tuple[int, int]:
        return (self.k, self.n)


def available() -> bool:
    """Whether the kernel is compiled and loaded here (``REWARDLAB_SKINNY_GEMM=0``: never)."""
    return os.environ.get("REWARDLAB_SKINNY_GEMM", "1") != "0" and _library() is not None


def panel_width() -> int:
    """Columns per panel (3 vectors of the CPU's widest float vector: 48 with AVX-512)."""
    return int(_loaded().rl_panel_width())


def empty_panels(k: int, n: int, glu: bool = False) -> Panels:
    """Zeroed panels for a ``[k, n]`` matrix, or with ``glu`` for a gate and an up matrix of that shape (fill them
    with :func:`pack_into`)."""
    width = panel_width()
    per_panel = width // 2 if glu else width
    return Panels(torch.zeros((-(-n // per_panel), k, width)), k, n, glu)


def pack_into(panels: Panels, weight: Tensor, col: int = 0, transposed: bool = True, scale: Tensor | None = None,
              part: str | None = None) -> Panels:  # fmt: skip
    """Write ``weight`` into ``panels``' columns ``col..``: with ``transposed`` the weight is transformers'
    ``[out, in]`` (``W[k, col + c] = weight[c, k]``), else ``[in, out]``; each row ``k`` of ``W`` times
    ``scale[k]`` when given (an RMSNorm's weight folded into the matrix after it). A GLU matrix takes ``part``
    ``"gate"`` or ``"up"``. Returns ``panels``."""
    if (part is not None) != panels.glu or part not in (None, "gate", "up"):
        raise ValueError(f"part must be 'gate' or 'up' for a GLU matrix and None otherwise, got {part!r}")
    w = weight.detach()
    if w.dtype != torch.float32 or w.device.type != "cpu" or not _unit_last(w):
        raise ValueError(
            f"pack_into needs a float32 CPU weight with unit last stride, got {w.dtype} {w.stride()}"
        )
    cols, k = (w.shape[0], w.shape[1]) if transposed else (w.shape[1], w.shape[0])
    if k != panels.k or col < 0 or col + cols > panels.n:
        raise ValueError(f"a {tuple(w.shape)} weight (transposed={transposed}) does not fit columns {col}.. of "
                         f"a {panels.shape} matrix")  # fmt: skip
    s = None
    if scale is not None:
        s = scale.detach().to(torch.float32).contiguous()
        if s.shape != (k,):
            raise ValueError(f"scale has shape {tuple(s.shape)}, expected ({k},)")
    code = {None: 0, "gate": 1, "up": 2}[part]
    _loaded().rl_pack(w.data_ptr(), w.stride(0), int(transposed), s.data_ptr() if s is not None else None,
                      panels.data.data_ptr(), k, col, cols, code, torch.get_num_threads())  # fmt: skip
    return panels


def pack(weight: Tensor, transposed: bool = True, scale: Tensor | None = None) -> Panels:
    """``weight`` (``[out, in]`` when ``transposed``, else ``[in, out]``) packed as a ``[in, out]`` matrix."""
    k, n = (weight.shape[1], weight.shape[0]) if transposed else weight.shape
    return pack_into(empty_panels(int(k), int(n)), weight, 0, transposed, scale)


def matmul(x: Tensor, w: Panels, add: Tensor | None = None, rms_eps: float | None = None) -> Tensor:
    """``add + s * (x @ W)`` (``x``: ``[rows, k]`` float32 with unit last stride; ``add``: ``[rows, n]`` or
    ``None``) as a new ``[rows, n]`` tensor, where ``s`` is 1 or, with ``rms_eps``, each row's RMS scale
    ``1 / sqrt(mean(x_r^2) + rms_eps)`` (an RMSNorm before ``W``, its weight folded into ``W``). For a GLU matrix
    the product is ``silu(s * x @ gate) * (s * x @ up)``. No autograd: for inference (decoding) only."""
    if x.dim() != 2 or x.shape[1] != w.k or x.dtype != torch.float32 or not _unit_last(x):
        raise ValueError(f"matmul needs x [rows, {w.k}] float32 with unit last stride, got "
                         f"{tuple(x.shape)} {x.dtype} strides {x.stride()}")  # fmt: skip
    if x.requires_grad and torch.is_grad_enabled():
        raise ValueError("skinny.matmul has no backward: call it under torch.no_grad()")
    rows = x.shape[0]
    y = x.new_empty((rows, w.n))
    if add is not None and (add.shape != (rows, w.n) or add.dtype != torch.float32 or not _unit_last(add)):
        raise ValueError(f"add must be [{rows}, {w.n}] float32 with unit last stride, got {tuple(add.shape)}")
    if rms_eps is not None and not rms_eps >= 0:
        raise ValueError(f"rms_eps must be >= 0, got {rms_eps}")
    if rows == 0:
        return y
    status = _loaded().rl_gemm(
        rows, x.data_ptr(), x.stride(0), w.data.data_ptr(), w.k, w.n, y.data_ptr(), w.n,
        add.data_ptr() if add is not None else None, add.stride(0) if add is not None else 0,
        -1.0 if rms_eps is None else float(rms_eps), int(w.glu), torch.get_num_threads(),
    )  # fmt: skip
    if status != 0:
        raise MemoryError(f"skinny.matmul: no memory for {rows} row scales")
    return y


def decode_attention(qkv: Tensor, cos: Tensor, ssin: Tensor, keys: Tensor, values: Tensor, slot: int, mask: Tensor,
                     heads: int, scale: float) -> Tensor:  # fmt: skip
    """One decoding step's attention for ``b`` rows, in one call: RoPE on each row's q and k heads (``x * cos +
    swap_halves(x) * ssin``, ``ssin`` the sine with ``rotate_half``'s signs folded in), the rotated k and the v
    written to cache slot ``slot`` of ``keys``/``values`` (``[b, kv_heads, cache_len, head_dim]``, contiguous),
    then ``softmax(q K^T * scale + mask) V`` over the slots ``0..slot`` per query head (grouped-query heads share
    their kv head). ``qkv``: ``[b, (heads + 2 kv_heads) * head_dim]`` (q, k, v heads in that order); ``cos``,
    ``ssin``: ``[b, head_dim]``; ``mask``: additive, ``[b, >= slot + 1]`` (0 = attend). Returns ``[b, heads *
    head_dim]``: what SDPA over the written slots gives, up to rounding."""
    b, kv_heads, cache_len, head_dim = keys.shape
    tensors = {"qkv": qkv, "cos": cos, "ssin": ssin, "keys": keys, "values": values, "mask": mask}
    for name, t in tensors.items():
        if t.dtype != torch.float32 or t.device.type != "cpu" or not _unit_last(t):
            raise ValueError(f"decode_attention: {name} must be float32 on the CPU with unit last stride")
    if not (keys.is_contiguous() and values.is_contiguous() and values.shape == keys.shape):
        raise ValueError("decode_attention: keys and values must be contiguous caches of one shape")
    if (qkv.dim() != 2 or qkv.shape != (b, (heads + 2 * kv_heads) * head_dim) or cos.shape != (b, head_dim)
            or ssin.shape != cos.shape or ssin.stride(0) != cos.stride(0) or heads % kv_heads or head_dim % 2
            or not 0 <= slot < cache_len or mask.dim() != 2 or mask.shape[0] != b or mask.shape[1] <= slot):  # fmt: skip
        raise ValueError(f"decode_attention: inconsistent shapes: qkv {tuple(qkv.shape)}, cos {tuple(cos.shape)}, "
                         f"caches {tuple(keys.shape)}, mask {tuple(mask.shape)}, slot {slot}, heads {heads}")  # fmt: skip
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors.values()):
        raise ValueError("decode_attention has no backward: call it under torch.no_grad()")
    out = qkv.new_empty((b, heads * head_dim))
    status = _loaded().rl_decode_attention(
        b, qkv.data_ptr(), qkv.stride(0), cos.data_ptr(), ssin.data_ptr(), cos.stride(0),
        keys.data_ptr(), values.data_ptr(), cache_len, slot, mask.data_ptr(), mask.stride(0), heads,
        kv_heads, head_dim, float(scale), out.data_ptr(), out.stride(0),
    )  # fmt: skip
    if status != 0:
        raise MemoryError("decode_attention: no memory for the scores")
    return out


def _loaded() -> ctypes.CDLL:
    lib = _library()
    if lib is None:
        raise RuntimeError("the skinny GEMM kernel is not available (no working C compiler)")
    return lib


def _unit_last(t: Tensor) -> bool:
    """The last axis is contiguous (the kernel's assumption; any stride will do for a length-1 axis)."""
    return t.shape[-1] == 1 or t.stride(-1) == 1


def _compiler_id(cc: str) -> str:
    try:
        out = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else ""


@cache
def _library() -> ctypes.CDLL | None:
    """The compiled kernel, loaded (compiled first where this source, compiler and CPU have no library yet), or
    ``None`` where no compiler works."""
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        _log.info("skinny GEMM: no C compiler %r; decoding keeps torch.mm", cc)
        return None
    compiler = _compiler_id(cc)
    cpu = "|".join(str(x) for x in (platform.machine(), cpuinfo_field("model name"), cpuinfo_field("flags")))
    source = _SOURCE.read_bytes()
    for flags in _FLAGS:
        key = hashlib.sha256(b"\0".join([source, compiler.encode(), " ".join(flags).encode(), cpu.encode()]))
        path = cache_dir() / "kernels" / f"skinny_gemm-{key.hexdigest()[:20]}.so"
        if not path.exists() and not _compile(cc, flags, path):
            continue
        try:
            lib = ctypes.CDLL(str(path))
            _declare(lib)
            if _works(lib):
                return lib
        except OSError as error:
            _log.info("skinny GEMM: cannot load %s (%s)", path, error)
    _log.info("skinny GEMM: the kernel did not compile or failed its check here; decoding keeps torch.mm")
    return None


def _declare(lib: ctypes.CDLL) -> None:
    """The C functions' signatures: ctypes then converts (and checks) plain ints, floats and ``None`` itself."""
    i, f, p = ctypes.c_int, ctypes.c_float, ctypes.c_void_p
    lib.rl_panel_width.restype = i
    lib.rl_panel_width.argtypes = []
    lib.rl_pack.restype = None
    lib.rl_pack.argtypes = [p, i, i, p, p, i, i, i, i, i]
    lib.rl_gemm.restype = i
    lib.rl_gemm.argtypes = [i, p, i, p, i, i, p, i, p, i, f, i, i]
    lib.rl_decode_attention.restype = i
    lib.rl_decode_attention.argtypes = [i, p, i, p, p, i, p, p, i, i, p, i, i, i, i, f, p, i]


def _compile(cc: str, flags: list[str], path: Path) -> bool:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
    os.close(fd)
    try:
        run = subprocess.run([cc, *flags, "-shared", "-fPIC", "-o", tmp, str(_SOURCE)], capture_output=True,
                             text=True, timeout=120)  # fmt: skip
        if run.returncode != 0:
            _log.info("skinny GEMM: %s %s failed: %s", cc, " ".join(flags), run.stderr.strip()[-500:])
            return False
        os.replace(tmp, path)  # atomic: a concurrent process sees the whole library or none
        return True
    except (OSError, subprocess.SubprocessError) as error:
        _log.info("skinny GEMM: %s %s failed: %s", cc, " ".join(flags), error)
        return False
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _works(lib: ctypes.CDLL) -> bool:
    """A 5 x 7 by 7 x 61 product plus an addend against ``torch.mm`` (a partial panel, a partial row block)."""
    gen = torch.Generator().manual_seed(0)
    x, w, add = (
        torch.randn(5, 7, generator=gen),
        torch.randn(61, 7, generator=gen),
        torch.randn(5, 61, generator=gen),
    )
    width = int(lib.rl_panel_width())
    panels = torch.zeros((-(-61 // width), 7, width))
    lib.rl_pack(w.data_ptr(), 7, 1, None, panels.data_ptr(), 7, 0, 61, 0, 1)
    y = torch.empty(5, 61)
    status = lib.rl_gemm(5, x.data_ptr(), 7, panels.data_ptr(), 7, 61, y.data_ptr(), 61,
                         add.data_ptr(), 61, -1.0, 0, 1)  # fmt: skip
    return status == 0 and bool(torch.allclose(y, add + x @ w.t(), rtol=1e-5, atol=1e-5))
