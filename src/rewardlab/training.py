"""Training-loop pieces every trainer shares: length-bucketed batch orders and the optimizer with its schedule.

Core layer: trainers in ``rewards/`` and ``optimize/`` import these; this module imports nothing above core.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from rewardlab.checkpoint import load_state
from rewardlab.utils import check_finite

if TYPE_CHECKING:
    from rewardlab.config import OptimConfig


def bucket_batches(
    lengths: Sequence[int], batch_size: int, rng: random.Random, window: int = 64
) -> list[list[int]]:
    """Length bucketing: shuffle, sort within windows of ``window`` batches, cut batches, shuffle batches.

    Batches hold sequences of similar length, so little compute is spent on padding.
    """
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = batch_size * window
    batches: list[list[int]] = []
    for i in range(0, len(order), chunk):
        part = sorted(order[i : i + chunk], key=lambda j: lengths[j])
        batches.extend(part[k : k + batch_size] for k in range(0, len(part), batch_size))
    rng.shuffle(batches)
    return batches


class BatchOrder:
    """Batches of example indices, epoch after epoch, in a resumable order.

    Whenever the current epoch is used up, ``make_epoch(rng)`` draws the next epoch's list of
    batches; :meth:`next` hands them out front to back. :meth:`state_dict` (the RNG state and the
    batches left in the epoch) lets a resumed run see exactly the batches it would have seen.
    """

    def __init__(self, make_epoch: Callable[[random.Random], list[list[int]]], rng: random.Random) -> None:
        self.make_epoch, self.rng = make_epoch, rng
        self.batches: list[list[int]] = []
        self.pos = 0

    def next(self) -> list[int]:
        if self.pos >= len(self.batches):
            self.batches, self.pos = self.make_epoch(self.rng), 0
        self.pos += 1
        return self.batches[self.pos - 1]

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.getstate(), "batches": self.batches[self.pos :]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_state(self.rng, state["rng"])
        self.batches, self.pos = [list(b) for b in state["batches"]], 0


def shuffled_batches(n: int, batch_size: int, rng: random.Random) -> list[list[int]]:
    """One epoch: a random permutation of ``range(n)`` cut into consecutive batches."""
    order = list(range(n))
    rng.shuffle(order)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def make_optimizer(
    model: torch.nn.Module, cfg: OptimConfig, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (no decay on biases/norms) with linear warmup then cosine, linear or constant.

    The fused AdamW kernel is used where it exists (floating-point parameters on CPU or CUDA): the
    same update, one kernel for all parameters instead of a loop of small ops per parameter (on
    CPU, one step of the 1M-param model: 4.1 -> 1.1 ms; 11M: 77 -> 12 ms).
    """
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "norm" in n else decay).append(p)
    params = decay + no_decay
    fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=cfg.betas,
        fused=fused or None,
    )

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        progress = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
        progress = min(1.0, progress)
        if cfg.schedule == "linear":
            return max(0.0, 1.0 - progress)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


@dataclass
class Trainee:
    """What a training loop updates: the prepared model, its optimizer and schedule, and the accelerator."""

    model: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: Any
    acc: Any  # accelerate.Accelerator

    def update(self, loss: torch.Tensor, max_grad_norm: float, step: int, stage: str) -> float:
        """One optimizer step on ``loss``: a NaN/inf check naming the step, backward, clipping, the step,
        the schedule, zeroed gradients. Returns the gradient norm before clipping."""
        check_finite(loss, "loss", step, stage)
        self.acc.backward(loss)
        return self.apply(max_grad_norm)

    def apply(self, max_grad_norm: float) -> float:
        """The step after a backward already done (e.g. chunk by chunk): clip, step, schedule, zero grads."""
        gnorm = self.acc.clip_grad_norm_(self.model.parameters(), max_grad_norm)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        return float(gnorm)


@dataclass
class Cadence:
    """When a loop stops, evaluates and checkpoints.

    Steps ``start + 1 .. steps`` run; step ``s`` is logged as ``step_offset + s`` with ``log_extra``. ``evaluate(global step)``
    runs every ``eval_every`` steps and after the last one (then the model goes back to train mode);
    ``checkpoint.end_step`` runs after every step with the loop's counters and ``checkpoint_extra()``.
    """

    steps: int
    start: int = 0
    eval_every: int = 0
    evaluate: Callable[[int], object] | None = None
    checkpoint: Any = None  # rewardlab.checkpoint.Checkpointer
    checkpoint_extra: Callable[[], dict[str, Any]] | None = None
    step_offset: int = 0
    log_extra: dict[str, Any] = field(default_factory=dict)

    def range(self) -> range:
        return range(self.start + 1, self.steps + 1)

    def global_step(self, step: int) -> int:
        return self.step_offset + step

    def after_step(self, step: int, model: torch.nn.Module, **counters: float) -> None:
        """Evaluate when due, then write the training-state checkpoint."""
        if (
            self.evaluate is not None
            and self.eval_every
            and (step % self.eval_every == 0 or step == self.steps)
        ):
            self.evaluate(self.global_step(step))
            model.train()
        if self.checkpoint is not None:
            extra = self.checkpoint_extra() if self.checkpoint_extra else {}
            self.checkpoint.end_step(self.global_step(step), **counters, **extra)
