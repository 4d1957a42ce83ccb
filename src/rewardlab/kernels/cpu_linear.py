"""fp32 ``nn.Linear`` layers through oneDNN on CPU, forward and backward, for the duration of a block.

PyTorch computes an fp32 ``nn.Linear`` on CPU with MKL's SGEMM. On some CPUs MKL does not pick its
fastest kernels: on this project's AMD EPYC machine (AVX-512) it ran the GEMMs of a training step at
~45 GFLOP/s on one core where oneDNN (also bundled with PyTorch, the library ``torch.compile`` uses
for CPU linears) ran the same products at ~95 GFLOP/s. A reward-model step (16 sequences x 77
tokens) took 149 ms with MKL and 118 ms with oneDNN at 1M params, 1813 ms and 1102 ms at 11M.

:func:`onednn_linears` gives the ``nn.Linear`` layers of some modules an instance-level ``forward``
that calls :class:`OneDNNLinear` (forward ``x W^T + b``, backward ``dX = dY W`` and ``dW = dY^T X``,
all three through oneDNN), and removes it on exit: checkpoints, ``state_dict`` and module types are
untouched. Results equal MKL's up to float rounding (~1e-6 relative), not bit for bit, so a block
uses one backend throughout. Whether to use it is decided once per process by
:func:`cpu_linear_backend`: the ``REWARDLAB_CPU_LINEAR`` environment variable (``onednn``, ``mkl``
or ``auto``, the default), where ``auto`` times one training-sized GEMM both ways and keeps oneDNN
only if it is clearly faster (on CPUs where MKL is at its best nothing changes). The two backends round
differently, so ``auto`` decides once per machine: the answer is kept in ``cpu_linear.json`` under
``REWARDLAB_CACHE_DIR`` (default ``~/.cache/rewardlab``), keyed by CPU model, core count and torch version,
and every later process on that machine reads it. Without that, a CPU where the two are close (an AVX512-BF16
EPYC: 100 vs 107 GFLOP/s) could pick either from one timing to the next, and the same seed would give
different metrics. Delete the file to probe again.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rewardlab.utils import atomic_write_text, cache_dir, cpuinfo_field

_ENV = "REWARDLAB_CPU_LINEAR"
#: ``auto`` keeps oneDNN only when it is at least this much faster than MKL on the probe GEMM.
_AUTO_MIN_SPEEDUP = 1.15


def _onednn_ops_work() -> bool:
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        y = torch.ops.mkldnn._linear_pointwise(torch.ones(1, 3), torch.ones(2, 3), None, "none", [], "")
    except (AttributeError, RuntimeError):  # pragma: no cover - a torch build without the op
        return False
    return bool(torch.equal(y, torch.full((1, 2), 3.0)))


def _mm(a: Tensor, b_t: Tensor, bias: Tensor | None = None) -> Tensor:
    """``a @ b_t.T (+ bias)`` for 2-D fp32 tensors through oneDNN (strided inputs are fine)."""
    return torch.ops.mkldnn._linear_pointwise(a, b_t, bias, "none", [], "")


@cache
def cpu_linear_backend() -> str:
    """``"onednn"`` or ``"mkl"``: from ``REWARDLAB_CPU_LINEAR``, or (``auto``) the machine's kept choice, made
    by a one-off ~0.1 s probe the first time (:func:`machine_key`, ``cpu_linear.json``)."""
    choice = os.environ.get(_ENV, "auto").strip().lower()
    if choice not in ("auto", "onednn", "mkl"):
        raise ValueError(f"{_ENV} must be auto, onednn or mkl, got {choice!r}")
    if choice == "mkl" or not _onednn_ops_work():
        return "mkl"
    if choice == "onednn":
        return "onednn"
    path, key = _choice_file(), machine_key()
    known = _read_choices(path)
    if known.get(key) in ("mkl", "onednn"):
        return str(known[key])
    chosen = _probe()
    # atomically, so that concurrent first runs never read a half-written file; a read-only home: keep the probe
    with contextlib.suppress(OSError):
        atomic_write_text(path, json.dumps({**_read_choices(path), key: chosen}, indent=1) + "\n")
    return chosen


def machine_key() -> str:
    """CPU model, logical cores and torch version: what the backend choice is kept for."""
    model = cpuinfo_field("model name") or platform.processor() or platform.machine()
    return f"{model}|{os.cpu_count()} cpus|torch {torch.__version__}"


def _choice_file() -> Path:
    return cache_dir() / "cpu_linear.json"


def _read_choices(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _probe() -> str:
    """Time one training-sized GEMM both ways (best of 5, interleaved); oneDNN only if clearly faster."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(512, 256, generator=gen)
    w = torch.randn(768, 256, generator=gen)
    best = {"mkl": float("inf"), "onednn": float("inf")}
    with torch.no_grad():
        for _ in range(5):  # interleaved, best of 5: robust to a busy machine
            for name in best:
                t0 = time.perf_counter()
                for _ in range(3):
                    torch.nn.functional.linear(x, w) if name == "mkl" else _mm(x, w)
                best[name] = min(best[name], time.perf_counter() - t0)
    return "onednn" if best["mkl"] >= _AUTO_MIN_SPEEDUP * best["onednn"] else "mkl"


def _padded_rows(m: int) -> int:
    """``m`` rounded up to ``k * 2**j`` with ``k`` in ``[2**_ROW_BITS, 2**(_ROW_BITS + 1))``: at most
    ``2**_ROW_BITS`` sizes per octave, at most ``2**-_ROW_BITS`` extra rows (and never below 16)."""
    step = max(16, 1 << max(0, m.bit_length() - 1 - _ROW_BITS))
    return -(-m // step) * step


def _pad_rows(x: Tensor) -> Tensor:
    """``x`` ``[M, K]`` with zero rows appended up to :func:`_padded_rows` ``(M)``.

    oneDNN builds (JIT-compiles) and caches a primitive per GEMM shape, ~0.6-1 MB each; training
    batches of varying sequence width give a new row count M at almost every step, which grew a
    reward-model run by ~270 MB (RM, 1M params: 753 MiB peak RSS against 488 with MKL). Rounding
    M up bounds the number of shapes (RM run: 536 MiB) for ~6% more rows on average.
    """
    extra = _padded_rows(x.shape[0]) - x.shape[0]
    return torch.nn.functional.pad(x, (0, 0, 0, extra)) if extra else x


_ROW_BITS = 3


class OneDNNLinear(torch.autograd.Function):
    """``y = x W^T + b`` with forward and backward GEMMs through oneDNN (fp32, CPU)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        y = _mm(_pad_rows(x2), weight, bias)[: x2.shape[0]]
        return y.reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])
        m = g.shape[0]
        grad_x = grad_w = grad_b = None
        gp = _pad_rows(g.contiguous())
        if ctx.needs_input_grad[0]:
            grad_x = _mm(gp, weight.t())[:m].reshape(x.shape)
        if ctx.needs_input_grad[1]:  # zero rows add nothing to the sum over rows
            grad_w = _mm(gp.t(), _pad_rows(x.reshape(-1, x.shape[-1])).t())
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum(0)
        return grad_x, grad_w, grad_b


def _onednn_forward(self: nn.Linear, x: Tensor) -> Tensor:
    if x.dtype != torch.float32 or x.device.type != "cpu" or self.weight.dtype != torch.float32:
        return torch.nn.functional.linear(x, self.weight, self.bias)
    return OneDNNLinear.apply(x, self.weight, self.bias)


@contextmanager
def onednn_linears(*modules: nn.Module | None, enabled: bool | None = None) -> Iterator[int]:
    """Within the block, the fp32 CPU ``nn.Linear`` layers of ``modules`` compute through oneDNN.

    ``enabled=None`` follows :func:`cpu_linear_backend`. Yields the number of layers switched (0 when
    disabled). Only exact ``nn.Linear`` instances without an instance-level ``forward`` of their own
    are switched; on exit they get their class ``forward`` back.
    """
    if enabled is None:
        enabled = cpu_linear_backend() == "onednn"
    switched: list[nn.Linear] = []
    if enabled:
        seen: set[int] = set()
        for module in modules:
            if module is None:
                continue
            for m in module.modules():
                if type(m) is nn.Linear and id(m) not in seen and "forward" not in m.__dict__:
                    seen.add(id(m))
                    if m.weight.device.type == "cpu" and m.weight.dtype == torch.float32:
                        m.forward = _onednn_forward.__get__(m, nn.Linear)  # type: ignore[method-assign]
                        switched.append(m)
    try:
        yield len(switched)
    finally:
        for m in switched:
            m.__dict__.pop("forward", None)
