"""Session-wide test settings.

The CPU linear backend (``REWARDLAB_CPU_LINEAR=auto``) is chosen by timing one GEMM both ways; on a loaded
machine that probe can choose differently in two processes, and the bitwise comparisons (resume after a
kill, 2 processes = 1, parallel arms = sequential arms) would then differ in the last bits. The tests pin
the choice (subprocesses inherit it); ``tests/test_cpu_linear.py`` still tests ``auto`` explicitly.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from rewardlab.kernels import cpu_linear

if "REWARDLAB_CPU_LINEAR" not in os.environ:
    os.environ["REWARDLAB_CPU_LINEAR"] = "onednn" if cpu_linear._onednn_ops_work() else "mkl"


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Torch on one thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): tiny models run
    fastest on one thread, two spin-wait on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama (hidden 32, 2 layers) with the arithmetic task's tokenizer, saved as a local folder."""
    from rewardlab.policies.models import ModelConfig, build_causal_lm
    from rewardlab.policies.tokenizer import build_task_tokenizer
    from rewardlab.tasks.arithmetic import TASK_WORDS

    tok = build_task_tokenizer(TASK_WORDS)
    d = tmp_path_factory.mktemp("lm")
    build_causal_lm(
        ModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64), tok, seed=0
    ).save_pretrained(d)
    tok.save_pretrained(d)
    return d
