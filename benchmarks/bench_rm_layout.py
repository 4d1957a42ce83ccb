"""Reward-model training: one row per comparison (``reward.shared_prompt: true``) against two rows, side by side.

Trains the same freshly initialised reward model on the same pairs (``bench_assets``' synthetic preference pairs,
batch 8, length-bucketed, the benchmark's ~1M or ~11M Llama) once per layout, alternating A B A B in one process,
and prints pairs/s per layout (measured after a warm-up of 10 steps) and the ratio shared / two rows as
min / median / max over the repeats. It also reports the share of tokens the shared prefix removes.

    python benchmarks/bench_rm_layout.py --sizes 1m,11m --steps 60 --repeats 3 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
BATCH = 8


def train_once(assets: Path, size: str, steps: int, shared: bool, out: Path) -> float:
    """Pairs/s of ``steps`` reward-model steps (from the end of step ``WARMUP`` to the last logged step)."""
    from bench_assets import read_pairs
    from bench_trl import WARMUP, StepClock, _timed_run

    from rewardlab.config import RewardConfig
    from rewardlab.feedback.records import Comparison
    from rewardlab.policies.models import load_tokenizer
    from rewardlab.rewards.model import init_reward_backbone
    from rewardlab.rewards.train import RewardData, train_reward_member

    tok = load_tokenizer(assets / "tokenizer")
    model = init_reward_backbone(assets / "models" / size, tok, seed=0)
    comps = [Comparison(prompt=r["prompt"], chosen=r["chosen"], rejected=r["rejected"])
             for r in read_pairs(str(assets))[: steps * BATCH]]  # fmt: skip
    cfg = RewardConfig(batch_size=BATCH, epochs=1, verifier=False, shared_prompt=shared,
                       optim={"lr": 1e-4, "warmup_steps": 0})  # fmt: skip
    clock = StepClock(WARMUP)
    train_reward_member(model, RewardData(tok, pairs=comps), cfg, _timed_run(str(out), clock), seed=0)
    measured, seconds = clock.measured()
    return measured * BATCH / seconds


def token_share(assets: Path, n: int = 800) -> float:
    """Tokens in shared rows / tokens in two rows, on the first ``n`` pairs."""
    from bench_assets import read_pairs

    from rewardlab.policies.models import load_tokenizer
    from rewardlab.policies.packing import split_common_prefix
    from rewardlab.rewards.model import encode_for_reward

    tok = load_tokenizer(assets / "tokenizer")
    rows = read_pairs(str(assets))[:n]
    prompts = [r["prompt"] for r in rows]
    ch = encode_for_reward(tok, prompts, [r["chosen"] for r in rows], "causal", None)
    rj = encode_for_reward(tok, prompts, [r["rejected"] for r in rows], "causal", None)
    two = sum(len(p + c) for p, c in ch) + sum(len(p + c) for p, c in rj)
    one = sum(
        sum(map(len, split_common_prefix(p1 + c1, p2 + c2)))
        for (p1, c1), (p2, c2) in zip(ch, rj, strict=True)
    )
    return one / two


def main(argv: list[str] | None = None) -> int:
    from bench_assets import build_assets

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1m,11m")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--assets", default=None, help="reuse an assets folder (default: build a fresh temp one)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    assets = Path(args.assets) if args.assets else Path(tempfile.mkdtemp(prefix="bench_assets_"))
    if not args.assets:
        build_assets(assets)
    print(
        f"tokens, one row per pair / two rows: {token_share(assets):.3f}; threads {args.threads}", flush=True
    )
    print("| size | two rows pairs/s | shared prompt pairs/s | ratio min / median / max |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            rates: dict[bool, list[float]] = {False: [], True: []}
            for rep in range(args.repeats):
                for shared in (False, True) if rep % 2 == 0 else (True, False):
                    rates[shared].append(
                        train_once(assets, size, args.steps, shared, Path(tmp) / f"{size}{rep}{shared}")
                    )
            ratios = [s / t for s, t in zip(rates[True], rates[False], strict=True)]
            print(f"| {size} | {statistics.median(rates[False]):.1f} | {statistics.median(rates[True]):.1f} | "
                  f"{min(ratios):.2f} / **{statistics.median(ratios):.2f}** / {max(ratios):.2f} |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
