"""Training-state checkpoints: kill a run at any moment, restart it with ``--resume``, get the same run.

A :class:`Checkpointer` saves, every ``checkpoint_every`` steps and at the last step, everything a
trainer needs to continue as if it had never stopped, into ``<stage_dir>/checkpoint/``:

* ``<name>.safetensors``: the weights of each tracked ``nn.Module`` (policy, critic, reward member); for a
  model with LoRA adapters (peft) only the adapter's tensors (the frozen base is the stage's input model);
* ``state.pt``: the ``state_dict`` of each tracked optimizer, scheduler or data order, the state of
  each tracked ``torch.Generator`` / ``random.Random`` / numpy ``Generator``, per-process states
  (:meth:`Checkpointer.track_local`, e.g. one process's rollout generators) and every process's
  global Python / numpy / torch RNG state;
* ``trainer_state.json``: the step, the seconds elapsed, the number of processes and the trainer's
  own ``extra`` values (a token count, the KL coefficient, the audit rows so far);
* ``files/``: copies of the stage's append-only logs (``metrics.jsonl`` and, for RL, ``audit.jsonl``),
  put back on resume so that the rows logged after the checkpoint and before the kill are dropped
  and none is duplicated.

The folder is written to a temporary name and renamed (:func:`rewardlab.utils.atomic_dir`), so a
crash leaves the previous checkpoint or the new one, never half of one; a crash between the two
renames is repaired on resume. Saving reads states and consumes no randomness, so a run with
checkpoints gives the same numbers as one without, and a resumed run the same as an uninterrupted
one (bitwise on CPU, where the kernels are deterministic).

Adopting it in a trainer takes four lines around the loop::

    ckpt = Checkpointer(run, every=cfg.checkpoint_every, total_steps=steps, resume=resume, accelerator=acc)
    ckpt.track(model=model, optimizer=opt, scheduler=sched, data=batch_order)   # after acc.prepare
    start = ckpt.restore()                     # 0, or the step of the checkpoint it loaded
    for step in range(start + 1, steps + 1):
        ...                                    # train, log, evaluate
        ckpt.end_step(step, tokens=tokens)     # saves when due; extras come back as ckpt.extra

``restore`` must be called where the loop would otherwise start (after every object that draws
random numbers at construction time was built), because it also resets the global RNGs. With
several processes (DDP) every process calls the same methods; the main process writes, the
others wait. Sharded optimizers (FSDP, DeepSpeed ZeRO) are not supported here.

For tests, ``REWARDLAB_TEST_SIGKILL_AFTER=N`` makes the process SIGKILL itself right after its
N-th training step (counted over every checkpointer of the process).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from rewardlab.runs import Run
from rewardlab.utils import RewardlabError, atomic_dir, restore_replaced_dir

KILL_ENV = "REWARDLAB_TEST_SIGKILL_AFTER"
FORMAT = 1
_steps_done = 0  # training steps finished by this process (for the test kill switch)


def state_of(obj: Any) -> Any:
    """The resumable state of ``obj``: a ``state_dict`` (optimizers, schedulers, data orders), an RNG's state,
    or a dict of those."""
    if isinstance(obj, torch.Generator):
        return obj.get_state()
    if isinstance(obj, random.Random):
        return obj.getstate()
    if isinstance(obj, np.random.Generator):
        return obj.bit_generator.state
    if hasattr(obj, "state_dict"):
        return obj.state_dict()
    if isinstance(obj, dict):
        return {k: state_of(v) for k, v in obj.items()}
    raise TypeError(f"cannot checkpoint a {type(obj).__name__}: give it state_dict()/load_state_dict()")


def load_state(obj: Any, state: Any) -> None:
    """Put ``state`` (from :func:`state_of`) back into ``obj`` in place."""
    if isinstance(obj, torch.Generator):
        obj.set_state(state)
    elif isinstance(obj, random.Random):
        obj.setstate(_as_tuple(state))
    elif isinstance(obj, np.random.Generator):
        obj.bit_generator.state = state
    elif hasattr(obj, "load_state_dict"):
        obj.load_state_dict(state)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            load_state(v, state[k])
    else:
        raise TypeError(f"cannot restore a {type(obj).__name__}")


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, list | tuple) else x


def global_rng_state() -> dict[str, Any]:
    """This process's global Python, numpy and torch (and CUDA) RNG states."""
    name, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    out: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
    }  # fmt: skip
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_global_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _unwrap(module: nn.Module, acc: Accelerator | None) -> nn.Module:
    return acc.unwrap_model(module) if acc is not None else getattr(module, "module", module)


#: The key marking a LoRA tensor in a peft-injected model's state dict.
LORA_KEY = "lora_"


def is_lora(module: nn.Module) -> bool:
    """Whether ``module`` (or a DDP wrapper of it) holds peft LoRA layers (peft is imported by the LoRA path only,
    so a process that never imported it has none)."""
    if "peft" not in sys.modules:
        return False
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) for m in module.modules())


def adapter_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's tensors of a peft-injected model (keys as in its ``state_dict``), detached."""
    return {k: v.detach() for k, v in module.state_dict().items() if LORA_KEY in k}


def load_adapter_state(module: nn.Module, state: dict[str, torch.Tensor], where: str = "checkpoint") -> None:
    """Put :func:`adapter_state_dict`'s tensors back; an error names any key missing, unexpected or reshaped."""
    expected = {k: v.shape for k, v in adapter_state_dict(module).items()}
    missing, extra = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    shapes = sorted(k for k in expected.keys() & state.keys() if state[k].shape != expected[k])
    if missing or extra or shapes:
        raise RewardlabError(f"{where}: the LoRA adapter does not match the model (missing {missing[:3]}, "
                             f"unexpected {extra[:3]}, other shapes {shapes[:3]}); resume with the same lora "
                             "settings")  # fmt: skip
    module.load_state_dict(state, strict=False)


def save_weights(module: nn.Module, path: Path) -> None:
    """``module``'s weights into a safetensors file: with LoRA layers only the adapter's tensors."""
    if is_lora(module):
        save_file({k: v.contiguous() for k, v in adapter_state_dict(module).items()}, str(path))
    else:
        save_model(module, str(path))


def load_weights(module: nn.Module, path: Path) -> None:
    """Load :func:`save_weights`' file into ``module`` (strict: every tensor must match)."""
    if is_lora(module):
        load_adapter_state(module, load_file(str(path)), where=str(path))
    else:
        load_model(module, str(path), strict=True)


class Checkpointer:
    """Periodic, atomic training-state checkpoints of one trainer, and resuming from them.

    Args:
        run: the stage's run (its folder holds the checkpoint and the logs copied into it).
        every: save every ``every`` steps and at ``total_steps``; 0 disables saving.
        total_steps: the trainer's last step (a trainer that works it out itself may set the attribute).
        resume: whether :meth:`restore` loads an existing checkpoint (otherwise it starts fresh).
        accelerator: the trainer's accelerator (process rank, barriers, unwrapping DDP).
        path: the checkpoint folder; default ``<run.dir>/checkpoint``.
        files: append-only files of ``run.dir`` to snapshot and put back on resume.
    """

    def __init__(self, run: Run, *, every: int, total_steps: int | None = None, resume: bool = False,
                 accelerator: Accelerator | None = None, path: Path | str | None = None,
                 files: Sequence[str] = ("metrics.jsonl",)) -> None:  # fmt: skip
        if every < 0:
            raise RewardlabError(f"{run.stage}: checkpoint_every must be >= 0, got {every}")
        self.run, self.every, self.total_steps, self.resume = run, every, total_steps, resume
        self.acc = accelerator
        self.path = Path(path) if path is not None else run.dir / "checkpoint"
        self.files = tuple(files)
        self.shared: dict[str, Any] = {}
        self.local: dict[str, Any] = {}
        self.extra: dict[str, Any] = {}
        if accelerator is not None and accelerator.distributed_type in (
            DistributedType.FSDP,
            DistributedType.DEEPSPEED,
        ):
            if resume:
                raise RewardlabError(f"{run.stage}: --resume works on one process or DDP, not with sharded states "
                                     f"({accelerator.distributed_type.value}); see docs/scaling.md")  # fmt: skip
            run.info(
                f"{accelerator.distributed_type.value}: sharded training state, no training-state checkpoints"
            )
            self.every = 0

    # -- what is saved ------------------------------------------------------------------------
    def track(self, **objects: Any) -> None:
        """Track state that is the same on every process: modules (weights), optimizers, schedulers,
        data orders, RNGs. ``None`` values are ignored."""
        self.shared.update({k: v for k, v in objects.items() if v is not None})

    def track_local(self, **objects: Any) -> None:
        """Track per-process state under names unique across processes (e.g. ``rollout_generator_3``)."""
        self.local.update({k: v for k, v in objects.items() if v is not None})

    @property
    def _world(self) -> int:
        return self.acc.num_processes if self.acc is not None else 1

    @property
    def _rank(self) -> int:
        return self.acc.process_index if self.acc is not None else 0

    def _barrier(self) -> None:
        if self._world > 1:
            self.acc.wait_for_everyone()  # type: ignore[union-attr]

    # -- saving -------------------------------------------------------------------------------
    def end_step(self, step: int, **extra: Any) -> None:
        """Call at the end of every training step: saves when ``step`` is due (``extra`` goes into the
        checkpoint and comes back as :attr:`extra`), then honours the test kill switch."""
        global _steps_done
        if self.every and (step % self.every == 0 or step == self.total_steps):
            self.save(step, **extra)
        _steps_done += 1
        kill_after = os.environ.get(KILL_ENV)
        if kill_after and _steps_done == int(kill_after):
            os.kill(os.getpid(), signal.SIGKILL)

    def save(self, step: int, **extra: Any) -> None:
        """Write the checkpoint for ``step`` now (every process must call this; the main one writes)."""
        local = {"rng": global_rng_state(), "objects": {k: state_of(v) for k, v in self.local.items()}}
        if self._world > 1:
            from accelerate.utils import gather_object

            locals_ = gather_object([local])
        else:
            locals_ = [local]
        if self._rank == 0:
            modules = {k: v for k, v in self.shared.items() if isinstance(v, nn.Module)}
            state = {
                "shared": {k: state_of(v) for k, v in self.shared.items() if not isinstance(v, nn.Module)},
                "local": {k: v for loc in locals_ for k, v in loc["objects"].items()},
                "rng": [loc["rng"] for loc in locals_],
            }
            meta = {"format": FORMAT, "step": step, "elapsed": self.run.elapsed, "num_processes": self._world,
                    "extra": extra}  # fmt: skip

            def write(tmp: Path) -> None:
                tmp.mkdir(parents=True)
                for name, module in modules.items():
                    save_weights(_unwrap(module, self.acc), tmp / f"{name}.safetensors")
                torch.save(state, tmp / "state.pt")
                for name in self.files:
                    src = self.run.dir / name
                    if src.is_file():
                        (tmp / "files").mkdir(exist_ok=True)
                        shutil.copyfile(src, tmp / "files" / name)
                (tmp / "trainer_state.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")

            atomic_dir(self.path, write)
        self._barrier()

    # -- resuming -----------------------------------------------------------------------------
    def restore(self) -> int:
        """With ``resume``, load the checkpoint into the tracked objects, the global RNGs and the logs, and
        return its step; return 0 (and change nothing) when not resuming or when there is none yet."""
        if not self.resume:
            return 0
        if self._rank == 0:
            _repair(self.path)
        self._barrier()
        meta_path = self.path / "trainer_state.json"
        if not meta_path.is_file():
            self.run.info(f"--resume: no checkpoint in {self.path}; starting from step 0")
            return 0
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT:
            raise RewardlabError(f"{meta_path}: unknown checkpoint format {meta.get('format')!r}")
        state = torch.load(self.path / "state.pt", weights_only=True)
        for name, obj in self.shared.items():
            if isinstance(obj, nn.Module):
                f = self.path / f"{name}.safetensors"
                if not f.is_file():
                    raise RewardlabError(f"{self.path}: no weights for '{name}' ({f.name} missing)")
                load_weights(_unwrap(obj, self.acc), f)
            elif name in state["shared"]:
                load_state(obj, state["shared"][name])
            else:
                raise RewardlabError(f"{self.path}: checkpoint has no state for '{name}'")
        for name, obj in self.local.items():
            if name not in state["local"]:
                raise RewardlabError(
                    f"{self.path}: no state for '{name}' (written by {meta['num_processes']} process(es); "
                    f"this run has {self._world}); resume with the same settings"
                )
            load_state(obj, state["local"][name])
        rngs = state["rng"]
        set_global_rng_state(rngs[self._rank] if len(rngs) == self._world else rngs[0])
        if self._rank == 0:
            for name in self.files:
                src = self.path / "files" / name
                if src.is_file():
                    shutil.copyfile(src, self.run.dir / name)
        self.run.t0 = time.perf_counter() - float(meta["elapsed"])
        self.extra = meta["extra"]
        self.run.info(f"resumed from {self.path} at step {meta['step']}")
        self._barrier()
        return int(meta["step"])


def _repair(path: Path) -> None:
    """Undo what a kill inside :func:`atomic_dir` can leave: a moved-away old checkpoint, temp folders."""
    restore_replaced_dir(path)
    for p in path.parent.glob(f".{path.name}.tmp-*"):
        shutil.rmtree(p, ignore_errors=True)
