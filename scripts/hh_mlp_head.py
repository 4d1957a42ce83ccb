#!/usr/bin/env python
"""Cheap wins on the frozen MiniLM features? A small MLP Bradley-Terry head vs the linear one, on cached features.

Reads the pooled features ``scripts/hh_features.py`` cached (train, validation, test; ``mean`` and ``cls``, 128
tokens) and fits ``r(f) = v · gelu(W f + b)`` (hidden width ``h``, dropout on ``f``) by the Bradley-Terry loss,
``-log sigmoid(r(f_chosen) - r(f_rejected))`` (Bradley and Terry 1952; Ouyang et al. 2022), with AdamW over a small
grid; every setting is selected on validation, the selected one is reported on test. Features: ``mean``, ``cls``
or both concatenated. The linear head (``scripts/hh_rm.py``) is the baseline. A few minutes on one core.

    python scripts/hh_mlp_head.py --features /work/artifacts/hh-features --json /work/artifacts/hh-mlp-head.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rewardlab.losses import bradley_terry_loss
from rewardlab.rewards.report import metrics_by_group
from rewardlab.training import shuffled_batches

GRID = {"hidden": (128,), "lr": (1e-3,), "epochs": (5, 15), "weight_decay": (0.0, 0.1), "dropout": (0.0, 0.2)}


def load(folder: Path, split: str, features: str) -> dict[str, object]:
    """Both sides' features [N, H] of one split (``mean``, ``cls`` or ``both`` concatenated), and the subsets."""
    parts = [np.load(f) for f in sorted(folder.glob(f"{split}-[0-9][0-9][0-9].npz"))]
    names = ("mean", "cls") if features == "both" else (features,)

    def side(s: str) -> torch.Tensor:
        return torch.from_numpy(
            np.concatenate([np.concatenate([p[f"{n}_{s}"] for n in names], 1) for p in parts])
        )

    return {
        "f_c": side("chosen"),
        "f_r": side("rejected"),
        "subset": [str(s) for p in parts for s in p["subset"]],
    }


def fit_mlp(d: dict, hp: dict, seed: int) -> nn.Module:
    """The MLP head fitted by the BT loss on the train pairs (seeded init and minibatches)."""
    torch.manual_seed(seed)
    dim = d["f_c"].shape[1]
    net = nn.Sequential(
        nn.Dropout(hp["dropout"]), nn.Linear(dim, hp["hidden"]), nn.GELU(), nn.Linear(hp["hidden"], 1)
    )
    opt = torch.optim.AdamW(net.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
    rng = random.Random(seed)
    net.train()
    for _ in range(hp["epochs"]):
        for idx in shuffled_batches(len(d["f_c"]), 64, rng):
            loss = bradley_terry_loss(net(d["f_c"][idx])[:, 0], net(d["f_r"][idx])[:, 0])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


@torch.no_grad()
def scores(net: nn.Module, d: dict) -> tuple[torch.Tensor, torch.Tensor]:
    return net(d["f_c"])[:, 0], net(d["f_r"])[:, 0]


def accuracy(net: nn.Module, d: dict) -> float:
    s_c, s_r = scores(net, d)
    return float((s_c > s_r).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--features", type=Path, required=True)
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    rows, best, best_net = [], None, None
    for features in ("cls", "mean", "both"):
        data = {s: load(a.features, s, features) for s in ("train", "validation", "test")}
        for values in itertools.product(*GRID.values()):
            hp = dict(zip(GRID, values, strict=True))
            net = fit_mlp(data["train"], hp, a.seed)
            rows.append({"features": features, **hp, "train_acc": accuracy(net, data["train"]),
                         "val_acc": accuracy(net, data["validation"])})  # fmt: skip
            if best is None or rows[-1]["val_acc"] > best["val_acc"]:
                best, best_net, best_data = rows[-1], net, data
        print(
            json.dumps(max((r for r in rows if r["features"] == features), key=lambda r: r["val_acc"])),
            flush=True,
        )
    out = {"grid": rows, "selected": best, "train_pairs": len(best_data["train"]["f_c"])}
    for split in ("validation", "test"):
        s_c, s_r = scores(best_net, best_data[split])
        out[split] = metrics_by_group(s_c, s_r, best_data[split]["subset"])
    out["seconds"] = time.time() - t0
    a.json.write_text(json.dumps(out, indent=1))
    print(
        "selected",
        json.dumps(best),
        "test",
        json.dumps(out["test"]["all"]),
        f"{out['seconds']:.0f}s",
        flush=True,
    )


if __name__ == "__main__":
    main()
